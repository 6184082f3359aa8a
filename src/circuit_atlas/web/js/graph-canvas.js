// The link graph, drawn on two stacked canvases the size of the pane. The base layer holds
// every edge and node and is repainted only when the data, the pane size or the zoom/pan change
// (≈100–250 ms for 12k edges in software rendering); while the user is still wheeling or
// dragging it is only moved by a CSS transform, and repainted once the view settles. The overlay
// holds everything that reacts to the user (rings for pinned, grouped, clicked and matching
// nodes, the hovered / clicked node's neighbourhood) and the axis labels, and costs a few ms,
// so hovering, clicking and pinning never repaint the base. Edges are batched into a few paths
// by sign and strength, so thousands of edges cost a handful of stroke calls.
//
// Coordinates: the layout's positions are "world" coordinates, which equal screen coordinates
// in the fitted view; `this.view` maps them to the screen, and hit-testing uses the mapped
// positions, so hover and clicks work at any zoom.

import { canvasMeasurer, fitText, placeLabels } from "./labels.js";
import { computeLayout } from "./layout.js";
import { NEGATIVE, POSITIVE, el, fmt, nodeKind, showToken } from "./util.js";
import { ViewTransform, wheelPixels } from "./view.js";

const STRENGTH_BUCKETS = 5;
const HIT_RADIUS = 9;
const GRID = 24;
const GUTTER = 44; // strip on the left for the row labels
const TOKEN_BAND = 40; // strip at the bottom for the token labels
const SETTLE_MS = 140; // repaint the base this long after the last wheel / drag event
const DRAG_START = 4; // pixels the pointer must move before a press becomes a pan
const ZOOM_PER_PIXEL = 0.0015; // wheel sensitivity: factor = exp(-deltaY · this)
const LOGIT_LABEL_MAX = 110; // px; longer logit tokens are cut (full text on hover)
const TOKEN_FONT = "12px ui-monospace, SFMono-Regular, Menlo, monospace";
const LOGIT_FONT = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
const ROW_FONT = "11px system-ui, sans-serif";

const NODE_STYLE = {
  feature: { fill: "#f6f1e7", stroke: "#7d715f", r: 4.2 },
  error: { fill: "#d6d6d6", stroke: "#8d8d8d", r: 3.4 },
  embedding: { fill: "#e6edf8", stroke: "#5b6f8f", r: 5 },
  logit: { fill: "#efe5f6", stroke: "#7a5a8c", r: 5 },
};

function logitToken(node) {
  const match = /"(.*)"/.exec(node.clerp || "");
  return match ? match[1] : String(node.feature);
}

/** The part of segment (ax, ay)–(bx, by) inside a rectangle, or null (Liang–Barsky). */
export function clipSegment(ax, ay, bx, by, x0, y0, x1, y1) {
  const dx = bx - ax;
  const dy = by - ay;
  let t0 = 0;
  let t1 = 1;
  const edges = [
    [-dx, ax - x0],
    [dx, x1 - ax],
    [-dy, ay - y0],
    [dy, y1 - ay],
  ];
  for (const [p, q] of edges) {
    if (p === 0) {
      if (q < 0) return null; // parallel to this edge and outside it
      continue;
    }
    const r = q / p;
    if (p < 0) {
      if (r > t1) return null;
      if (r > t0) t0 = r;
    } else {
      if (r < t0) return null;
      if (r < t1) t1 = r;
    }
  }
  return [ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy];
}

export class GraphCanvas {
  constructor(container, { onHover, onClick, labelOf }) {
    this.container = container;
    this.onHover = onHover;
    this.onClick = onClick;
    this.labelOf = labelOf;
    this.stack = el("div", { class: "graph-stack" });
    this.base = el("canvas", { class: "graph-base", "data-testid": "graph-canvas" });
    this.overlay = el("canvas", { class: "graph-overlay", "data-testid": "graph-overlay" });
    this.tooltip = el("div", { class: "graph-tooltip", hidden: true, "data-testid": "graph-tooltip" });
    this.zoomLabel = el("span", { class: "zoom-level", "data-testid": "zoom-level" }, "fit");
    this.controls = this._buildControls();
    this.stack.append(this.base, this.overlay);
    container.append(this.stack, this.controls, this.tooltip);
    this.nodes = [];
    this.links = [];
    this.layout = null;
    this.view = new ViewTransform();
    this.edgeAlpha = 1;
    this.screen = new Map(); // node id -> {x, y} on screen (canvas pixels)
    this.hovered = null;
    this.decor = { pinned: new Set(), clicked: null, matches: new Set(), grouped: new Set() };
    this.measure = { token: canvasMeasurer(TOKEN_FONT), logit: canvasMeasurer(LOGIT_FONT) };
    this._frame = null;
    this._settle = null;
    this._drag = null;
    this._suppressClick = false;
    this._bindPointer();
    new ResizeObserver(() => this._relayout()).observe(container);
  }

  _buildControls() {
    const button = (text, title, testid, onclick) =>
      el("button", { class: "small", title, "data-testid": testid, onclick }, text);
    const centre = () => this._plotCentre();
    return el(
      "div",
      { class: "graph-controls" },
      button("−", "Zoom out", "zoom-out", () => this.zoomBy(1 / 1.6, centre())),
      button("+", "Zoom in (or mouse wheel; drag to pan)", "zoom-in", () => this.zoomBy(1.6, centre())),
      button("Fit", "Show the whole graph (or double-click the graph)", "graph-fit", () => this.fit()),
      this.zoomLabel,
    );
  }

  _bindPointer() {
    const o = this.overlay;
    o.addEventListener("pointerdown", (e) => this._onPointerDown(e));
    o.addEventListener("pointermove", (e) => this._onPointerMove(e));
    o.addEventListener("pointerup", (e) => this._onPointerUp(e));
    o.addEventListener("pointercancel", (e) => this._onPointerUp(e));
    o.addEventListener("mouseleave", () => this._setHover(null, null));
    o.addEventListener("click", (e) => this._onClick(e));
    o.addEventListener("dblclick", (e) => {
      e.preventDefault();
      this.fit();
    });
    o.addEventListener("wheel", (e) => this._onWheel(e), { passive: false });
  }

  /** Replace the graph: {nodes, links, metadata}. Keeps the zoom when it is the same graph. */
  setGraph(doc) {
    const sameGraph = this.doc && doc.metadata && this.doc.metadata?.slug === doc.metadata.slug;
    this.doc = doc;
    this.nodes = doc.nodes || [];
    this.links = doc.links || [];
    this.byId = new Map(this.nodes.map((n) => [n.node_id, n]));
    this.incoming = new Map();
    this.outgoing = new Map();
    for (const link of this.links) {
      if (!this.byId.has(link.source) || !this.byId.has(link.target)) continue;
      if (!this.incoming.has(link.target)) this.incoming.set(link.target, []);
      if (!this.outgoing.has(link.source)) this.outgoing.set(link.source, []);
      this.incoming.get(link.target).push(link);
      this.outgoing.get(link.source).push(link);
    }
    const weights = this.links.map((l) => Math.abs(l.weight)).sort((a, b) => a - b);
    // The 98th percentile sets full strength, so one huge edge does not fade all others.
    this.refWeight = weights.length ? weights[Math.floor(0.98 * (weights.length - 1))] || 1 : 1;
    this.baseBuckets = this._bucket(this.links);
    // Thousands of overlapping edges saturate to a solid mat: fade them with the edge count.
    this.edgeAlpha = Math.min(1, Math.max(0.35, Math.sqrt(1500 / Math.max(this.links.length, 1))));
    this.hovered = null;
    if (!sameGraph) this.view.reset();
    this._relayout();
  }

  /** Pins, clicked node, search matches and supernode members, drawn as rings. */
  setDecorations(decor) {
    this.decor = { ...this.decor, ...decor };
    this._drawOverlay();
  }

  // -- public view API (also used by tests through window.__atlas.canvas) ---------------------

  /**
   * Client (viewport) coordinates of a node's centre, or null when it is not in the graph.
   * `visible` says whether it is inside the plot at the current zoom (and so can be clicked).
   */
  screenPosition(id) {
    const p = this.screen.get(id);
    if (!p) return null;
    // The overlay, never CSS-moved, is what receives the clicks.
    const over = this.overlay.getBoundingClientRect();
    return { x: over.left + p.x, y: over.top + p.y, visible: this._inPlot(p.x, p.y) };
  }

  /** Every drawn node: [{id, x, y, visible}] in client coordinates. */
  screenPositions() {
    return [...this.screen.keys()].map((id) => ({ id, ...this.screenPosition(id) }));
  }

  /** Zoom factor and offset, the plot rectangle, and whether a base repaint is pending. */
  viewState() {
    const over = this.overlay.getBoundingClientRect();
    const plot = this._plot();
    return {
      ...this.view.copy(),
      fit: this.view.isFit,
      pending: this._settle !== null,
      plot: { left: over.left + plot.x0, top: over.top + plot.y0, right: over.left + plot.x1, bottom: over.top + plot.y1 },
      canvas: { left: over.left, top: over.top, right: over.right, bottom: over.bottom },
    };
  }

  /** The axis and logit labels as drawn: text, full text and extent, in client coordinates. */
  drawnLabels() {
    const over = this.overlay.getBoundingClientRect();
    const shift = (b) => ({ ...b, x0: b.x0 + over.left, x1: b.x1 + over.left, y0: b.y0 + over.top, y1: b.y1 + over.top });
    const labels = this.labels || { tokens: [], logits: [] };
    return { tokens: labels.tokens.map(shift), logits: labels.logits.map(shift) };
  }

  /** Back to the fitted view: the whole graph in the pane. */
  fit() {
    this.view.reset();
    this._viewChanged(true);
  }

  /** Zoom by `factor` around a point in canvas pixels. */
  zoomBy(factor, at) {
    this.view.zoomAt(at.x, at.y, factor);
    this._viewChanged();
  }

  /** Pan so a node is visible (when it is not already). */
  reveal(id) {
    const p = this.screen.get(id);
    const world = this.layout && this.layout.positions.get(id);
    if (!p || !world || this._inPlot(p.x, p.y, 20)) return;
    const c = this._plotCentre();
    this.view.centreOn(world.x, world.y, c.x, c.y);
    this._viewChanged(true);
  }

  // -- geometry --------------------------------------------------------------------------------

  /** The region where nodes and edges are drawn, in canvas pixels (also the pan limits). */
  _plot() {
    const { width, height } = this.layout || { width: 0, height: 0 };
    return { x0: GUTTER, y0: 0, x1: width, y1: height - TOKEN_BAND };
  }

  _plotCentre() {
    const p = this._plot();
    return { x: (p.x0 + p.x1) / 2, y: (p.y0 + p.y1) / 2 };
  }

  _inPlot(x, y, pad = 0) {
    const p = this._plot();
    return x >= p.x0 + pad && x <= p.x1 - pad && y >= p.y0 + pad && y <= p.y1 - pad;
  }

  _relayout() {
    if (!this.doc) return;
    const width = Math.max(this.container.clientWidth, 200);
    const height = Math.max(this.container.clientHeight, 240);
    const tokens = (this.doc.metadata && this.doc.metadata.prompt_tokens) || [];
    const resized = !this.layout || this.layout.width !== width || this.layout.height !== height;
    this.layout = computeLayout(this.nodes, tokens, width, height);
    this.layout.width = width; // columns span the pane minus margins; the canvas is the pane
    if (resized) this.view.reset(); // a kept zoom would point at different things after a resize
    this.view.setBounds(this._plot());
    const ratio = window.devicePixelRatio || 1;
    for (const canvas of [this.base, this.overlay]) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
      canvas.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
    }
    this.stack.style.width = `${width}px`;
    this.stack.style.height = `${height}px`;
    this._project();
    this._drawBase();
    this._drawOverlay();
  }

  /** Map the layout through the view: screen positions, the hit grid and the label placement. */
  _project() {
    this.screen = new Map();
    for (const [id, p] of this.layout.positions) this.screen.set(id, this.view.toScreen(p.x, p.y));
    this.grid = new Map();
    for (const [id, { x, y }] of this.screen) {
      if (!this._inPlot(x, y)) continue; // hidden under the axes or outside: not clickable
      const key = `${Math.floor(x / GRID)}:${Math.floor(y / GRID)}`;
      if (!this.grid.has(key)) this.grid.set(key, []);
      this.grid.get(key).push(id);
    }
    this.labels = { tokens: this._placeTokenLabels(), logits: this._placeLogitLabels() };
    this.zoomLabel.textContent = this.view.isFit ? "fit" : `×${this.view.k.toFixed(1)}`;
  }

  /** After a zoom or pan: cheap work now, the base repaint once the user pauses. */
  _viewChanged(now = false) {
    if (!this.layout) return;
    this._project();
    this._previewBase();
    this._requestOverlay();
    clearTimeout(this._settle);
    this._settle = null;
    if (now) this._drawBase();
    else {
      this._settle = setTimeout(() => {
        this._settle = null;
        this._drawBase();
      }, SETTLE_MS);
    }
  }

  /** Move the last painted base by CSS to where the current view puts it. */
  _previewBase() {
    const drawn = this._drawnView;
    if (!drawn) return;
    const sx = this.view.kx / drawn.kx;
    const sy = this.view.ky / drawn.ky;
    const ox = this.view.tx - drawn.tx * sx;
    const oy = this.view.ty - drawn.ty * sy;
    this.base.style.transform = `matrix(${sx}, 0, 0, ${sy}, ${ox}, ${oy})`;
  }

  _requestOverlay() {
    if (this._frame !== null) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = null;
      this._drawOverlay();
    });
  }

  // -- hit-testing and input -------------------------------------------------------------------

  _hit(x, y) {
    let best = null;
    let bestDist = HIT_RADIUS * HIT_RADIUS;
    const gx = Math.floor(x / GRID);
    const gy = Math.floor(y / GRID);
    for (let dx = -1; dx <= 1; dx += 1) {
      for (let dy = -1; dy <= 1; dy += 1) {
        for (const id of this.grid.get(`${gx + dx}:${gy + dy}`) || []) {
          const p = this.screen.get(id);
          const d = (p.x - x) ** 2 + (p.y - y) ** 2;
          if (d < bestDist) {
            bestDist = d;
            best = id;
          }
        }
      }
    }
    return best;
  }

  /** The token column under a point in the bottom strip, or -1. */
  _tokenAt(x, y) {
    if (!this.labels || y < this.layout.height - TOKEN_BAND) return -1;
    const hit = this.labels.tokens.find((t) => x >= t.cx0 && x <= t.cx1);
    return hit ? hit.pos : -1;
  }

  _local(event) {
    const rect = this.overlay.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  _onPointerDown(event) {
    if (event.button !== 0) return;
    this._drag = { x: event.clientX, y: event.clientY, view: this.view.copy(), moved: false };
    this._suppressClick = false;
  }

  _onPointerMove(event) {
    const drag = this._drag;
    if (drag && (event.buttons & 1) === 1) {
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (drag.moved || Math.hypot(dx, dy) >= DRAG_START) {
        if (!drag.moved) {
          drag.moved = true;
          this.overlay.setPointerCapture(event.pointerId);
          this._setHover(null, null);
        }
        this.overlay.style.cursor = "grabbing";
        this.view.tx = drag.view.tx + dx;
        this.view.ty = drag.view.ty + dy;
        this.view.clamp();
        this._viewChanged();
        return;
      }
    }
    if (!this.layout) return;
    const { x, y } = this._local(event);
    const id = this._inPlot(x, y) ? this._hit(x, y) : null;
    if (id) this._setHover(id, event);
    else this._setHover(null, event, this._tokenAt(x, y));
  }

  _onPointerUp(event) {
    const drag = this._drag;
    this._drag = null;
    if (!drag) return;
    if (drag.moved) {
      this._suppressClick = true; // the click that ends a drag is not a selection
      this.overlay.style.cursor = "default";
      if (this.overlay.hasPointerCapture(event.pointerId)) {
        this.overlay.releasePointerCapture(event.pointerId);
      }
    }
  }

  _onWheel(event) {
    if (!this.layout) return;
    event.preventDefault();
    const { x, y } = this._local(event);
    if (Math.abs(event.deltaX) > Math.abs(event.deltaY) && !event.ctrlKey) {
      this.view.panBy(-event.deltaX, 0); // sideways trackpad swipe pans
      this._viewChanged();
      return;
    }
    this.zoomBy(Math.exp(-wheelPixels(event) * ZOOM_PER_PIXEL), { x, y });
  }

  _setHover(id, event, tokenPos = -1) {
    this.overlay.style.cursor = id ? "pointer" : this.view.isFit ? "default" : "grab";
    if (id !== this.hovered) {
      this.hovered = id;
      this.onHover && this.onHover(id);
      this._requestOverlay();
    }
    this._showTooltip(id, event, tokenPos);
  }

  _showTooltip(id, event, tokenPos) {
    let parts = null;
    if (id && event) {
      const node = this.byId.get(id);
      const label = this.labelOf(node);
      const kind = nodeKind(node);
      const detail = [];
      if (kind === "feature") detail.push(`L${node.layer} · act ${fmt(node.activation, 2)}`);
      if (kind === "error") detail.push(`error L${node.layer}`);
      if (node.influence !== null && node.influence !== undefined) detail.push(`infl ${fmt(node.influence, 3)}`);
      parts = [label || kind, `${id}${detail.length ? " · " + detail.join(" · ") : ""}`];
    } else if (tokenPos >= 0 && event) {
      const token = this.layout.columns[tokenPos].token;
      parts = [`“${showToken(token)}”`, `position ${tokenPos}`];
    }
    if (!parts) {
      this.tooltip.hidden = true;
      return;
    }
    this.tooltip.replaceChildren(
      el("div", { class: "tt-label" }, parts[0]),
      el("div", { class: "tt-meta" }, parts[1]),
    );
    this.tooltip.hidden = false;
    const box = this.container.getBoundingClientRect();
    const left = Math.min(event.clientX - box.left + 14, box.width - 260);
    const top = event.clientY - box.top + 14;
    this.tooltip.style.left = `${Math.max(4, left)}px`;
    // Near the bottom (the token strip) the tooltip goes above the pointer.
    this.tooltip.style.top = `${top + 50 > box.height ? Math.max(4, top - 70) : top}px`;
  }

  _onClick(event) {
    if (this._suppressClick) {
      this._suppressClick = false;
      return;
    }
    const { x, y } = this._local(event);
    const id = this.layout && this._inPlot(x, y) ? this._hit(x, y) : null;
    this.onClick &&
      this.onClick(id, { pin: event.ctrlKey || event.metaKey, shift: event.shiftKey });
  }

  // -- label placement -------------------------------------------------------------------------

  /** One label per token column, cut to the visible width of the column. */
  _placeTokenLabels() {
    const { columns, width, height } = this.layout;
    const y0 = height - TOKEN_BAND + 6;
    const out = [];
    columns.forEach((col, pos) => {
      const a = this.view.toScreen(col.x0, 0).x;
      const b = this.view.toScreen(col.x1, 0).x;
      const cx0 = Math.max(a, GUTTER);
      const cx1 = Math.min(b, width);
      if (cx1 - cx0 < 1) return;
      const full = showToken(col.token);
      const text = fitText(full, cx1 - cx0 - 4, this.measure.token);
      const w = this.measure.token(text);
      const mid = (cx0 + cx1) / 2;
      out.push({ pos, text, full, cx0, cx1, x0: mid - w / 2, x1: mid + w / 2, y0, y1: y0 + 14 });
    });
    return out;
  }

  /** Logit labels above their nodes, on two lines, never overlapping. */
  _placeLogitLabels() {
    const plot = this._plot();
    const items = [];
    for (const node of this.nodes) {
      if (nodeKind(node) !== "logit") continue;
      const p = this.screen.get(node.node_id);
      if (!p || p.x < plot.x0 || p.x > plot.x1 || p.y < plot.y0 + 8 || p.y > plot.y1) continue;
      const full = showToken(logitToken(node));
      const text = fitText(full, LOGIT_LABEL_MAX, this.measure.logit);
      items.push({ id: node.node_id, x: p.x, y: p.y, full, text });
    }
    const placed = placeLabels(items, {
      measure: this.measure.logit,
      lines: 2,
      gap: 5,
      left: plot.x0 + 2,
      right: plot.x1 - 2,
    });
    const out = [];
    items.forEach((item, i) => {
      const { text, line, x0, x1 } = placed[i];
      if (!text) return;
      const bottom = item.y - 8 - line * 13;
      out.push({ id: item.id, text, full: item.full, line, x0, x1, y0: bottom - 12, y1: bottom });
    });
    return out;
  }

  // -- drawing ---------------------------------------------------------------------------------
  _strength(weight) {
    return Math.min(1, Math.abs(weight) / this.refWeight);
  }

  /** Links grouped by sign and strength: each group is one path. */
  _bucket(links) {
    const buckets = [];
    for (let i = 0; i < STRENGTH_BUCKETS * 2; i += 1) buckets.push([]);
    for (const link of links) {
      const bucket = Math.min(
        STRENGTH_BUCKETS - 1,
        Math.floor(this._strength(link.weight) * STRENGTH_BUCKETS),
      );
      buckets[bucket * 2 + (link.weight >= 0 ? 0 : 1)].push(link);
    }
    return buckets;
  }

  _clipToPlot(ctx) {
    const p = this._plot();
    ctx.beginPath();
    ctx.rect(p.x0, p.y0, p.x1 - p.x0, p.y1 - p.y0);
    ctx.clip();
  }

  _drawGridLines(ctx) {
    const { rows, columns } = this.layout;
    const plot = this._plot();
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#eef0f3";
    ctx.beginPath();
    for (const row of rows) {
      const y = this.view.toScreen(0, row.y).y;
      ctx.moveTo(plot.x0, y);
      ctx.lineTo(plot.x1 - 8, y);
    }
    ctx.stroke();
    ctx.strokeStyle = "#f3f4f6";
    ctx.beginPath();
    for (const col of columns.slice(1)) {
      const x = this.view.toScreen(col.x0, 0).x;
      ctx.moveTo(x, plot.y0 + 12);
      ctx.lineTo(x, plot.y1);
    }
    ctx.stroke();
  }

  _strokeBuckets(ctx, buckets, veil = false) {
    const pos = this.screen;
    const { x0, y0, x1, y1 } = this._plot();
    const cull = !this.view.isFit;
    buckets.forEach((members, i) => {
      if (!members.length) return;
      const level = (Math.floor(i / 2) + 0.5) / STRENGTH_BUCKETS;
      ctx.strokeStyle = i % 2 === 0 ? POSITIVE : NEGATIVE;
      ctx.globalAlpha = veil ? 0.25 + 0.7 * level : (0.1 + 0.45 * level) * this.edgeAlpha;
      ctx.lineWidth = veil ? 0.8 + 3.6 * level : 0.4 + 2.6 * level;
      ctx.beginPath();
      for (const link of members) {
        const a = pos.get(link.source);
        const b = pos.get(link.target);
        if (!a || !b) continue;
        if (!cull) {
          ctx.moveTo(a.x, a.y);
          ctx.lineTo(b.x, b.y);
          continue;
        }
        // Zoomed in, edges run far outside the plot: draw only their visible part (and skip
        // those with none), which keeps the rasterised length that of the fitted view.
        const seg = clipSegment(a.x, a.y, b.x, b.y, x0, y0, x1, y1);
        if (!seg) continue;
        ctx.moveTo(seg[0], seg[1]);
        ctx.lineTo(seg[2], seg[3]);
      }
      ctx.stroke();
    });
    ctx.globalAlpha = 1;
  }

  _drawNode(ctx, node, { ring = null, ringWidth = 2 } = {}) {
    const p = this.screen.get(node.node_id);
    if (!p || !this._inPlot(p.x, p.y, -8)) return;
    const kind = nodeKind(node);
    const style = NODE_STYLE[kind];
    ctx.fillStyle = style.fill;
    ctx.strokeStyle = style.stroke;
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    if (kind === "feature") {
      ctx.arc(p.x, p.y, style.r, 0, Math.PI * 2);
    } else if (kind === "error") {
      ctx.rect(p.x - style.r, p.y - style.r, style.r * 2, style.r * 2);
    } else {
      ctx.roundRect(p.x - style.r - 2, p.y - style.r, style.r * 2 + 4, style.r * 2, 2.5);
    }
    ctx.fill();
    ctx.stroke();
    if (ring) {
      ctx.strokeStyle = ring;
      ctx.lineWidth = ringWidth;
      ctx.beginPath();
      ctx.arc(p.x, p.y, style.r + 3, 0, Math.PI * 2);
      ctx.stroke();
    }
  }

  _ringFor(id) {
    const { pinned, clicked, matches, grouped } = this.decor;
    if (id === clicked) return "#d62839";
    if (matches.has(id)) return "#f0b400";
    if (grouped.has(id)) return "#2a9d8f";
    if (pinned.has(id)) return "#1f2933";
    return null;
  }

  /** Edges and nodes, clipped to the plot. Records the view it was painted for. */
  _drawBase() {
    if (!this.layout) return;
    const ctx = this.base.getContext("2d");
    ctx.clearRect(0, 0, this.layout.width, this.layout.height);
    ctx.save();
    this._clipToPlot(ctx);
    this._drawGridLines(ctx);
    this._strokeBuckets(ctx, this.baseBuckets);
    for (const node of this.nodes) this._drawNode(ctx, node);
    ctx.restore();
    this._drawnView = { kx: this.view.kx, ky: this.view.ky, tx: this.view.tx, ty: this.view.ty };
    this.base.style.transform = "";
  }

  _drawRings(ctx, skip) {
    const { pinned, clicked, matches, grouped } = this.decor;
    const ids = new Set([...pinned, ...matches, ...grouped]);
    if (clicked) ids.add(clicked);
    for (const id of ids) {
      if (skip.has(id) || !this.byId.has(id)) continue;
      this._drawNode(ctx, this.byId.get(id), { ring: this._ringFor(id) });
    }
  }

  /** The strips around the plot, opaque so a CSS-moved base never shows under them. */
  _drawAxes(ctx) {
    const { rows, width, height } = this.layout;
    const plot = this._plot();
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, GUTTER, height);
    ctx.fillRect(0, plot.y1, width, height - plot.y1);
    ctx.fillStyle = "#8a919c";
    ctx.font = ROW_FONT;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const gap = rows.length > 1 ? Math.abs(rows[0].y - rows[1].y) * this.view.ky : 20;
    const step = Math.max(1, Math.ceil(14 / gap));
    rows.forEach((row, i) => {
      const y = this.view.toScreen(0, row.y).y;
      if (y < plot.y0 + 6 || y > plot.y1 - 4) return;
      if (i % step === 0 || i === rows.length - 1) ctx.fillText(row.label, GUTTER - 4, y);
    });
    ctx.fillStyle = "#3b4250";
    ctx.font = TOKEN_FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    for (const label of this.labels.tokens) ctx.fillText(label.text, label.x0, label.y0);
  }

  _drawLogitLabels(ctx) {
    ctx.font = LOGIT_FONT;
    ctx.fillStyle = "#5d4670";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    for (const label of this.labels.logits) ctx.fillText(label.text, label.x0, label.y1);
  }

  _drawOverlay() {
    if (!this.layout) return;
    const ctx = this.overlay.getContext("2d");
    ctx.clearRect(0, 0, this.layout.width, this.layout.height);
    const focus = this.hovered || this.decor.clicked;
    ctx.save();
    this._clipToPlot(ctx);
    if (!focus || !this.byId.has(focus)) {
      this._drawRings(ctx, new Set());
    } else {
      const plot = this._plot();
      ctx.fillStyle = "rgba(255, 255, 255, 0.72)";
      ctx.fillRect(plot.x0, plot.y0, plot.x1 - plot.x0, plot.y1 - plot.y0);
      const links = [...(this.incoming.get(focus) || []), ...(this.outgoing.get(focus) || [])];
      this._strokeBuckets(ctx, this._bucket(links), true);
      const shown = new Set([focus]);
      for (const link of links) {
        shown.add(link.source);
        shown.add(link.target);
      }
      for (const id of shown) {
        const ring = id === focus ? "#d62839" : this._ringFor(id);
        this._drawNode(ctx, this.byId.get(id), { ring, ringWidth: id === focus ? 2.5 : 2 });
      }
      this._drawRings(ctx, shown);
    }
    this._drawLogitLabels(ctx);
    ctx.restore();
    this._drawAxes(ctx);
  }
}
