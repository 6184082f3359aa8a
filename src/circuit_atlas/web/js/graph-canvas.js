// The link graph, drawn on two stacked canvases the size of the pane.
//
// The base layer holds every edge and node. It is repainted only when the data, the pane size or
// the zoom / pan change, and then in slices of about ten milliseconds, one per animation frame,
// so that even 50 000 edges never block the page: grid, edges weakest first, nodes on top. The
// first paint of a graph goes straight to the screen (its nodes appear at once, the edges fill in
// over the next frames); later ones are painted off screen while the previous picture, moved by a
// CSS transform, stands in. Edges are hairlines except in small groups of strong ones (wide
// translucent lines cost several times more to rasterise in software).
// The overlay holds everything that reacts to the user (rings for pinned, grouped, clicked and
// matching nodes, the hovered / clicked node's neighbourhood), the axes and the labels, and costs
// a few ms, so hovering, clicking and pinning never repaint the base.
//
// Coordinates: the layout's positions are "world" coordinates; `this.view` maps them to the
// screen (view.js), and hit-testing uses the mapped positions, so hover and clicks work at any
// zoom. Edges are hit-tested too (edge-hits.js), only on pointer events and only where the
// `edgeAction` callback says a click would do something with them; nodes keep priority. Long
// prompts make the world wider than the pane: the view then scrolls along it, and an
// overview strip under the token labels shows where the nodes are and which part is in view.

import { insideCorners, placeLogitLabels, placeTokenLabels } from "./axis.js";
import { EdgeIndex, segmentDistance2 } from "./edge-hits.js";
import { edgeStyle, packEdges, traceEdges } from "./edges.js";
import { glyphSprite } from "./glyphs.js";
import { canvasMeasurer } from "./labels.js";
import { GUTTER, NODE_BOX, SCROLL_STRIP, computeLayout } from "./layout.js";
import { edgeColor, el, fmt, nodeKind, showToken } from "./util.js";
import { ViewTransform, wheelPixels } from "./view.js";

const HIT_RADIUS = 9;
const EDGE_HIT = 4; // pixels from an edge's line that still count as on it
const GRID = 24;
const SETTLE_MS = 140; // repaint the base this long after the last wheel / drag event
const DRAG_START = 4; // pixels the pointer must move before a press becomes a pan
const ZOOM_PER_PIXEL = 0.0015; // wheel sensitivity: factor = exp(-deltaY · this)
const SLICE_MS = 10; // longest base-painting slice per animation frame
const FOCUS_WIDE_EDGES = 300; // a hovered node's strongest edges drawn wide, the rest as hairlines
const TOKEN_FONT = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
const NUMBER_FONT = "10px system-ui, sans-serif";
const LOGIT_FONT = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
const ROW_FONT = "11px system-ui, sans-serif";

export class GraphCanvas {
  /**
   * `edgeAction(link)`: a short text saying what clicking the edge does ("its attention heads"),
   * or null when nothing would (the edge is then not hit); `onEdgeClick(link)` does it;
   * `edgeActions()`: false when no edge of the graph has an action (no hit-testing at all).
   */
  constructor(container, { onHover, onClick, labelOf, edgeAction, onEdgeClick, edgeActions }) {
    this.container = container;
    this.onHover = onHover;
    this.onClick = onClick;
    this.labelOf = labelOf;
    this.edgeAction = edgeAction;
    this.onEdgeClick = onEdgeClick;
    this.edgeActions = edgeActions;
    this.stack = el("div", { class: "graph-stack" });
    this.base = el("canvas", { class: "graph-base", "data-testid": "graph-canvas" });
    this.overlay = el("canvas", { class: "graph-overlay", "data-testid": "graph-overlay" });
    this.scratch = document.createElement("canvas"); // off-screen base repaints
    this.tooltip = el("div", { class: "graph-tooltip", hidden: true, "data-testid": "graph-tooltip" });
    this.zoomLabel = el("span", { class: "zoom-level", "data-testid": "zoom-level" }, "fit");
    this.controls = this._buildControls();
    this.stack.append(this.base, this.overlay);
    container.append(this.stack, this.controls, this.tooltip);
    this.nodes = [];
    this.links = [];
    this.layout = null;
    this.view = new ViewTransform();
    this.expanded = new Set(); // first positions of collapsed runs the user opened
    this.edgeAlpha = 1;
    this.sx = new Float64Array(0); // screen position of node i (canvas pixels); NaN: not drawn
    this.sy = new Float64Array(0);
    this.hovered = null;
    this.hoveredEdge = null; // the link under the pointer, drawn highlighted on the overlay
    this._edgeIndex = null; // EdgeIndex of the current layout, built on first use
    // `shownEdge`: {source, target} of the edge the attention panel shows, marked while it is open
    this.decor = { pinned: new Set(), clicked: null, matches: new Set(), grouped: new Set(), shownEdge: null };
    this.measure = {
      token: canvasMeasurer(TOKEN_FONT),
      number: canvasMeasurer(NUMBER_FONT),
      logit: canvasMeasurer(LOGIT_FONT),
    };
    this.stats = { firstDrawMs: null, drawnMs: null, lastPaintMs: null, maxSliceMs: 0, slices: 0, edgeIndexMs: null, maxIndexSliceMs: 0 };
    this._job = null; // the base repaint in progress
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
      button("+", "Zoom in (or mouse wheel; drag or shift-wheel to pan)", "zoom-in", () => this.zoomBy(1.6, centre())),
      button("Fit", "Show the whole graph (or double-click the graph)", "graph-fit", () => this.fit()),
      button("1:1", "Nothing overlaps at this zoom; long prompts scroll (back to the last positions)", "graph-home", () => this.home()),
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
    if (!sameGraph) this._loadStart = performance.now();
    this.doc = doc;
    this.nodes = doc.nodes || [];
    this.byId = new Map();
    this.index = new Map();
    this.kinds = new Array(this.nodes.length);
    this.nodes.forEach((n, i) => {
      this.byId.set(n.node_id, n);
      this.index.set(n.node_id, i);
      this.kinds[i] = nodeKind(n);
    });
    // Links between known nodes, as typed arrays (one pass; 50 000 links in a few ms).
    const raw = doc.links || [];
    const source = new Int32Array(raw.length);
    const target = new Int32Array(raw.length);
    const weight = new Float64Array(raw.length);
    const kept = [];
    for (const link of raw) {
      const a = this.index.get(link.source);
      const b = this.index.get(link.target);
      if (a === undefined || b === undefined || a === b) continue;
      source[kept.length] = a;
      target[kept.length] = b;
      weight[kept.length] = link.weight;
      kept.push(link);
    }
    this.links = kept;
    this.edges = { source: source.subarray(0, kept.length), target: target.subarray(0, kept.length), weight: weight.subarray(0, kept.length) };
    const magnitudes = this.edges.weight.map(Math.abs).sort();
    // The 98th percentile sets full strength, so one huge edge does not fade all others.
    this.refWeight = magnitudes.length ? magnitudes[Math.floor(0.98 * (magnitudes.length - 1))] || 1 : 1;
    this.baseBuckets = packEdges(this.edges, this.refWeight);
    // Thousands of overlapping edges saturate to a solid mat: fade them with the edge count.
    this.edgeAlpha = Math.min(1, Math.max(0.35, Math.sqrt(1500 / Math.max(kept.length, 1))));
    this._adjacency = null; // incoming / outgoing links per node, built when first needed
    this.hovered = null;
    this.hoveredEdge = null;
    this._focusCache = new Map();
    if (!sameGraph) {
      this.expanded = new Set();
      this.layout = null; // a new graph starts at home
      this.stats.firstDrawMs = null;
      this.stats.drawnMs = null;
    }
    this._relayout();
  }

  /** {incoming, outgoing}: node id -> its links (built on first use: hovering, selecting). */
  get adjacency() {
    if (!this._adjacency) {
      const incoming = new Map();
      const outgoing = new Map();
      for (const link of this.links) {
        if (!incoming.has(link.target)) incoming.set(link.target, []);
        if (!outgoing.has(link.source)) outgoing.set(link.source, []);
        incoming.get(link.target).push(link);
        outgoing.get(link.source).push(link);
      }
      this._adjacency = { incoming, outgoing };
    }
    return this._adjacency;
  }

  /** Pins, clicked node, search matches and supernode members, drawn as rings. */
  setDecorations(decor) {
    this.decor = { ...this.decor, ...decor };
    this._drawOverlay();
  }

  // -- public view API (also used by tests and benchmarks through window.__atlas.canvas) --------

  /**
   * Client (viewport) coordinates of a node's centre, or null when it is not in the graph.
   * `visible`: inside the plot at the current zoom (and so clickable).
   */
  screenPosition(id) {
    const p = this._at(id);
    if (!p) return null;
    // The overlay, never CSS-moved, is what receives the clicks.
    const over = this.overlay.getBoundingClientRect();
    return { x: over.left + p.x, y: over.top + p.y, visible: this._inPlot(p.x, p.y) };
  }

  /** Every drawn node: [{id, x, y, visible}] in client coordinates. */
  screenPositions() {
    const over = this.overlay.getBoundingClientRect();
    return [...this.screen].map(([id, p]) => ({ id, x: over.left + p.x, y: over.top + p.y, visible: this._inPlot(p.x, p.y) }));
  }

  /** Every drawn node's glyph as a box in client coordinates: [{id, kind, x0, y0, x1, y1}]. */
  nodeBoxes() {
    const over = this.overlay.getBoundingClientRect();
    return [...this.screen].map(([id, p]) => {
      const kind = this.layout.compact.has(id) ? "tick" : this.kinds[this.index.get(id)];
      const [hw, hh] = NODE_BOX[kind];
      const x = over.left + p.x;
      const y = over.top + p.y;
      return { id, kind, x0: x - hw, x1: x + hw, y0: y - hh, y1: y + hh };
    });
  }

  /** Zoom factor and offset, the plot rectangle, and whether a base repaint is pending. */
  viewState() {
    const over = this.overlay.getBoundingClientRect();
    const plot = this._plot();
    return {
      ...this.view.copy(),
      kMin: this.view.kMin,
      fit: this.view.isFit,
      home: this.view.isHome,
      pending: this._settle !== null || this._job !== null,
      labelMode: this.layout?.labelMode,
      collapsed: this.layout ? this.layout.columns.filter((c) => c.gap).length : 0,
      compact: this.layout ? this.layout.compact.size : 0,
      plot: { left: over.left + plot.x0, top: over.top + plot.y0, right: over.left + plot.x1, bottom: over.top + plot.y1 },
      canvas: { left: over.left, top: over.top, right: over.right, bottom: over.bottom },
    };
  }

  /** The axis and logit labels as drawn, in client coordinates: tokens (with their rotated
   * corners), position numbers and logits. */
  drawnLabels() {
    const over = this.overlay.getBoundingClientRect();
    const dx = over.left;
    const dy = over.top;
    const shift = (b) => ({ ...b, x0: b.x0 + dx, x1: b.x1 + dx, y0: b.y0 + dy, y1: b.y1 + dy });
    const labels = this.labels || { tokens: [], logits: [] };
    return {
      tokens: labels.tokens.map((t) => ({
        ...shift(t),
        corners: t.corners.map(([x, y]) => [x + dx, y + dy]),
        numberBox: t.numberBox ? shift(t.numberBox) : null,
      })),
      logits: labels.logits.map(shift),
    };
  }

  /** The whole graph in the pane (an overview when the prompt is long). */
  fit() {
    this.view.fit();
    this._viewChanged(true);
  }

  /** Zoom 1 (nothing overlaps), at the last positions. */
  home() {
    this.view.home();
    this._viewChanged(true);
  }

  /** Zoom by `factor` around a point in canvas pixels. */
  zoomBy(factor, at) {
    this.view.zoomAt(at.x, at.y, factor);
    this._viewChanged();
  }

  /** Pan so a node is visible (when it is not already). */
  reveal(id) {
    const p = this._at(id);
    const world = this.layout && this.layout.positions.get(id);
    if (!p || !world || this._inPlot(p.x, p.y, 20)) return;
    const c = this._plotCentre();
    this.view.centreOn(world.x, world.y, c.x, c.y);
    this._viewChanged(true);
  }

  /** Show the positions of a collapsed run (first position `pos`) as columns of their own. */
  expandGap(pos) {
    const col = this.layout && this.layout.columns[this.layout.posColumn[pos]];
    if (!col || !col.gap) return;
    const before = this.view.toScreen((col.x0 + col.x1) / 2, 0).x;
    this.expanded.add(col.first);
    this._relayout();
    const after = this.layout.columns[this.layout.posColumn[pos]];
    this.view.tx += before - this.view.toScreen(after.x0, 0).x;
    this.view.clamp();
    this._viewChanged(true);
  }

  // -- geometry --------------------------------------------------------------------------------

  /** The region where nodes and edges are drawn, in canvas pixels (also the pan limits). */
  _plot() {
    const { paneWidth, height, band } = this.layout || { paneWidth: 0, height: 0, band: 0 };
    return { x0: GUTTER, y0: 0, x1: paneWidth, y1: height - band };
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
    const previous = this.layout;
    const resized = !previous || previous.paneWidth !== width || previous.height !== height;
    this.layout = computeLayout(this.nodes, this.links, tokens, width, height, this.measure, this.expanded);
    const plot = this._plot();
    this.view.setFrame({ ...this.layout.plot }, plot);
    if (resized) this.view.home(); // a kept zoom would point at different things after a resize
    const ratio = window.devicePixelRatio || 1;
    if (resized) {
      for (const canvas of [this.base, this.overlay, this.scratch]) {
        canvas.width = Math.round(width * ratio);
        canvas.height = Math.round(height * ratio);
        canvas.style.width = `${width}px`;
        canvas.style.height = `${height}px`;
        canvas.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
      }
      this.stack.style.width = `${width}px`;
      this.stack.style.height = `${height}px`;
    }
    this._project();
    this._drawBase(!previous || resized);
    this._drawOverlay();
  }

  /** A node's screen position (canvas pixels), or undefined when it is not drawn. */
  _at(id) {
    const i = this.index ? this.index.get(id) : undefined;
    if (i === undefined || this.sx[i] !== this.sx[i]) return undefined;
    return { x: this.sx[i], y: this.sy[i] };
  }

  /** Every node id with its screen position (for the public view API). */
  get screen() {
    const out = new Map();
    this.nodes.forEach((node, i) => {
      if (this.sx[i] === this.sx[i]) out.set(node.node_id, { x: this.sx[i], y: this.sy[i] });
    });
    return out;
  }

  /** Map the layout through the view: screen positions, the hit grid and the label placement.
   * Runs on every pan / zoom frame, so it fills typed arrays and a numeric grid, no objects. */
  _project() {
    const { positions } = this.layout;
    const n = this.nodes.length;
    if (this.sx.length !== n) {
      this.sx = new Float64Array(n);
      this.sy = new Float64Array(n);
      this._world = null;
    }
    if (!this._world || this._worldLayout !== this.layout) {
      // World positions as arrays, once per layout.
      this._world = { x: new Float64Array(n).fill(NaN), y: new Float64Array(n).fill(NaN) };
      this.nodes.forEach((node, i) => {
        const p = positions.get(node.node_id);
        if (p) {
          this._world.x[i] = p.x;
          this._world.y[i] = p.y;
        }
      });
      this._worldLayout = this.layout;
    }
    const { kx, ky, tx, ty } = this.view;
    const wx = this._world.x;
    const wy = this._world.y;
    const plot = this._plot();
    this.grid = new Map();
    for (let i = 0; i < n; i += 1) {
      const x = wx[i] * kx + tx;
      const y = wy[i] * ky + ty;
      this.sx[i] = x;
      this.sy[i] = y;
      // Only what is inside the plot is clickable (not what hides under the axes).
      if (!(x >= plot.x0 && x <= plot.x1 && y >= plot.y0 && y <= plot.y1)) continue;
      const key = Math.floor(x / GRID) * 4096 + Math.floor(y / GRID);
      const cell = this.grid.get(key);
      if (cell) cell.push(i);
      else this.grid.set(key, [i]);
    }
    this.labels = {
      tokens: placeTokenLabels(this.layout, this.view, plot, this.measure.token, this.measure.number),
      logits: placeLogitLabels(this.layout, this.view, plot, this.measure.logit),
    };
    const { view } = this;
    this.zoomLabel.textContent = view.isFit ? "fit" : `×${view.k < 1 ? view.k.toFixed(2) : view.k.toFixed(1)}`;
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
      this._cancelJob();
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
    let best = -1;
    let bestDist = HIT_RADIUS * HIT_RADIUS;
    const gx = Math.floor(x / GRID);
    const gy = Math.floor(y / GRID);
    for (let dx = -1; dx <= 1; dx += 1) {
      for (let dy = -1; dy <= 1; dy += 1) {
        for (const i of this.grid.get((gx + dx) * 4096 + gy + dy) || []) {
          const d = (this.sx[i] - x) ** 2 + (this.sy[i] - y) ** 2;
          if (d < bestDist) {
            bestDist = d;
            best = i;
          }
        }
      }
    }
    return best >= 0 ? this.nodes[best].node_id : null;
  }

  /**
   * The link whose drawn line passes within EDGE_HIT pixels of canvas point (x, y) and that
   * `edgeAction` accepts: the nearest (the stronger on a tie), or null. While a node is selected
   * its edges are drawn over a veil and are the only candidates; otherwise every drawn edge is,
   * found through the layout's EdgeIndex (built on the first call after a new layout).
   */
  _edgeAt(x, y) {
    if (!this.edgeAction || !this.layout || !this.links.length || !this._inPlot(x, y)) return null;
    if (this.edgeActions && !this.edgeActions()) return null;
    let best = null;
    let bestDist = EDGE_HIT * EDGE_HIT;
    const consider = (link, a, b) => {
      const ax = this.sx[a];
      const bx = this.sx[b];
      if (a === undefined || b === undefined || ax !== ax || bx !== bx) return; // not drawn
      const d = segmentDistance2(x, y, ax, this.sy[a], bx, this.sy[b]);
      if (d > bestDist || (d === bestDist && best && Math.abs(link.weight) <= Math.abs(best.weight))) return;
      if (!this.edgeAction(link)) return;
      best = link;
      bestDist = d;
    };
    const focus = this.decor.clicked;
    if (focus && this._at(focus)) {
      for (const link of this._focusLinks(focus).links) {
        consider(link, this.index.get(link.source), this.index.get(link.target));
      }
      return best;
    }
    const { kx, ky, tx, ty } = this.view;
    const { source, target } = this.edges;
    const index = this._edgeIndexNow();
    index.near(
      (x - EDGE_HIT - tx) / kx,
      (y - EDGE_HIT - ty) / ky,
      (x + EDGE_HIT - tx) / kx,
      (y + EDGE_HIT - ty) / ky,
      (j) => consider(this.links[j], source[j], target[j]),
    );
    this.stats.edgeIndexMs = index.buildMs; // a query finishes a build still under way
    return best;
  }

  /** The current layout's EdgeIndex, perhaps not built yet (world coordinates: zoom and pan
   * keep it valid). */
  _edgeIndexNow() {
    if (!this._edgeIndex || this._edgeIndexLayout !== this.layout) {
      this._edgeIndex = new EdgeIndex(this._world.x, this._world.y, this.edges.source, this.edges.target);
      this._edgeIndexLayout = this.layout;
    }
    return this._edgeIndex;
  }

  /**
   * Build the layout's EdgeIndex a slice per animation frame while nothing else is painted (the
   * end of each base repaint calls this), so the first hover finds it ready. Only when some
   * edge can be clicked (`edgeActions`).
   */
  prepareEdgeIndex() {
    if (this._indexFrame || !this.layout || !this.links.length || !this.edgeAction) return;
    if (this.edgeActions && !this.edgeActions()) return;
    if (this._edgeIndex && this._edgeIndexLayout === this.layout && this._edgeIndex.ready) return;
    this._indexFrame = requestAnimationFrame(() => {
      this._indexFrame = null;
      if (this._job || !this.layout) return; // a base repaint first: its end calls this again
      const start = performance.now();
      const index = this._edgeIndexNow();
      index.build(SLICE_MS / 2);
      this.stats.edgeIndexMs = index.buildMs;
      this.stats.maxIndexSliceMs = Math.max(this.stats.maxIndexSliceMs, performance.now() - start);
      this.prepareEdgeIndex();
    });
  }

  /** The token label under a point in the bottom strip (its text, or its column), or null. */
  _tokenAt(x, y) {
    if (!this.labels || y < this.layout.height - this.layout.band || this._inStrip(y)) return null;
    const tokens = this.labels.tokens;
    return tokens.find((t) => insideCorners(t.corners, x, y)) || tokens.find((t) => x >= t.cx0 && x <= t.cx1) || null;
  }

  _inStrip(y) {
    return Boolean(this.layout && this.layout.scrolls && y >= this.layout.height - SCROLL_STRIP);
  }

  _local(event) {
    const rect = this.overlay.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  _onPointerDown(event) {
    if (event.button !== 0) return;
    const { x, y } = this._local(event);
    const strip = this._inStrip(y);
    this._drag = { x: event.clientX, y: event.clientY, view: this.view.copy(), moved: false, strip };
    this._suppressClick = false;
    if (strip) {
      this._stripTo(x);
      this._suppressClick = true;
    }
  }

  /** Centre the view on the part of the world under overview-strip position `x`. */
  _stripTo(x) {
    const plot = this._plot();
    const W = this.layout.plot;
    const share = Math.min(1, Math.max(0, (x - plot.x0) / (plot.x1 - plot.x0)));
    const worldX = W.x0 + share * (W.x1 - W.x0);
    this.view.centreOn(worldX, 0, (plot.x0 + plot.x1) / 2, this.view.ty);
    this._viewChanged();
  }

  _onPointerMove(event) {
    const drag = this._drag;
    if (drag && (event.buttons & 1) === 1) {
      if (drag.strip) {
        this._stripTo(this._local(event).x);
        return;
      }
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
    const id = this._inPlot(x, y) ? this._hit(x, y) || this._logitLabelAt(x, y) : null;
    if (id) {
      this._setHover(id, event);
      return;
    }
    const edge = this._edgeAt(x, y);
    if (edge) this._setHover(null, event, null, edge);
    else this._setHover(null, event, this._tokenAt(x, y));
  }

  /** The logit whose label is under a point (hovering or clicking a label means its node). */
  _logitLabelAt(x, y) {
    const hit = (this.labels?.logits || []).find((l) => x >= l.x0 - 2 && x <= l.x1 + 2 && y >= l.y0 - 2 && y <= l.y1 + 2);
    return hit ? hit.id : null;
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
    const sideways = Math.abs(event.deltaX) > Math.abs(event.deltaY);
    if ((sideways || event.shiftKey) && !event.ctrlKey) {
      // A sideways trackpad swipe, or shift + wheel, pans along the prompt.
      this.view.panBy(-(sideways ? event.deltaX : wheelPixels(event)), 0);
      this._viewChanged();
      return;
    }
    this.zoomBy(Math.exp(-wheelPixels(event) * ZOOM_PER_PIXEL), { x, y });
  }

  _setHover(id, event, token = null, edge = null) {
    this.overlay.style.cursor =
      id || edge || token?.gap ? "pointer" : this.view.isFit && this.view.isHome ? "default" : "grab";
    if (id !== this.hovered) {
      this.hovered = id;
      this.onHover && this.onHover(id);
      this._requestOverlay();
    }
    if (edge !== this.hoveredEdge) {
      this.hoveredEdge = edge;
      this._requestOverlay();
    }
    this._showTooltip(id, event, token, edge);
  }

  _tokenTooltip(token) {
    const tokens = this.layout.columns[this.layout.posColumn[token.pos]];
    if (token.gap) {
      const words = ((this.doc.metadata && this.doc.metadata.prompt_tokens) || [])
        .slice(token.pos, token.last + 1)
        .join("");
      const text = showToken(words);
      const n = token.last - token.pos + 1;
      return [
        `positions ${token.pos}–${token.last}: ${n} tokens with no node but their embedding`,
        `${text.length > 90 ? `${text.slice(0, 90)}…` : text} · click to show them`,
      ];
    }
    const count = tokens ? tokens.count : 0;
    return [`“${token.full}”`, `position ${token.pos} · ${count} node${count === 1 ? "" : "s"}`];
  }

  _edgeTooltip(edge) {
    const name = (nodeId) => this.labelOf(this.byId.get(nodeId)) || nodeId;
    return [
      `${name(edge.source)} → ${name(edge.target)}`,
      `${edge.source} → ${edge.target} · weight ${fmt(edge.weight, 3)} · click: ${this.edgeAction(edge)}`,
    ];
  }

  _showTooltip(id, event, token, edge = null) {
    let parts = null;
    if (id && event) {
      const node = this.byId.get(id);
      const label = this.labelOf(node);
      const kind = nodeKind(node);
      const detail = [];
      if (kind === "feature") detail.push(`L${node.layer} · act ${fmt(node.activation, 2)}`);
      if (kind === "error") detail.push(`error L${node.layer}`);
      if (kind !== "logit") detail.push(`pos ${node.ctx_idx}`);
      if (node.influence !== null && node.influence !== undefined) detail.push(`infl ${fmt(node.influence, 3)}`);
      parts = [label || kind, `${id}${detail.length ? " · " + detail.join(" · ") : ""}`];
    } else if (edge && event) {
      parts = this._edgeTooltip(edge);
    } else if (token && event) {
      parts = this._tokenTooltip(token);
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
    const left = Math.min(event.clientX - box.left + 14, box.width - 290);
    const top = event.clientY - box.top + 14;
    this.tooltip.style.left = `${Math.max(4, left)}px`;
    // Near the bottom (the token strip) the tooltip goes above the pointer.
    this.tooltip.style.top = `${top + 60 > box.height ? Math.max(4, top - 80) : top}px`;
  }

  _onClick(event) {
    if (this._suppressClick) {
      this._suppressClick = false;
      return;
    }
    const { x, y } = this._local(event);
    const id = this.layout && this._inPlot(x, y) ? this._hit(x, y) || this._logitLabelAt(x, y) : null;
    if (!id && this.layout) {
      const edge = this._edgeAt(x, y);
      if (edge) {
        this.onEdgeClick && this.onEdgeClick(edge);
        return;
      }
      const token = this._tokenAt(x, y);
      if (token && token.gap) {
        this.expandGap(token.pos);
        return;
      }
    }
    this.onClick &&
      this.onClick(id, { pin: event.ctrlKey || event.metaKey, shift: event.shiftKey });
  }

  // -- edges -----------------------------------------------------------------------------------
  /** `packEdges` for a list of link objects. */
  _packLinks(links) {
    const source = new Int32Array(links.length);
    const target = new Int32Array(links.length);
    const weight = new Float64Array(links.length);
    links.forEach((link, j) => {
      source[j] = this.index.get(link.source);
      target[j] = this.index.get(link.target);
      weight[j] = link.weight;
    });
    return packEdges({ source, target, weight }, this.refWeight);
  }

  _edgeStyle(ctx, bucket, veil) {
    edgeStyle(ctx, bucket, veil, this.edgeAlpha);
  }

  _traceEdges(ctx, bucket, from, to) {
    return traceEdges(ctx, bucket, from, to, this.sx, this.sy, this._plot());
  }

  // -- the base layer --------------------------------------------------------------------------

  _cancelJob() {
    if (this._job) cancelAnimationFrame(this._job.frame);
    this._job = null;
  }

  /**
   * Repaint the base for the current view, in slices (see the top of this file). `direct`:
   * paint on the visible canvas (the first paint of a graph, when there is no picture to keep).
   */
  _drawBase(direct = false) {
    if (!this.layout) return;
    this._cancelJob();
    const target = direct ? this.base : this.scratch;
    const ctx = target.getContext("2d");
    const start = performance.now();
    ctx.save();
    ctx.clearRect(0, 0, this.layout.paneWidth, this.layout.height);
    this._clipToPlot(ctx);
    this._drawGridLines(ctx);
    if (direct) {
      this.base.style.transform = "";
      this._drawNodes(ctx); // at once; painted again over the edges when they are done
    }
    const job = { target, ctx, direct, bucket: 0, next: 0, chunk: 400, start, frame: null, nodes: false };
    this._job = job;
    this._paintSlice(job, start);
  }

  /** Paint edges until the slice's time is up; then, in a slice of their own when the edges
   * used most of this one, the nodes on top; then publish. */
  _paintSlice(job, sliceStart) {
    if (this._job !== job) return;
    const { ctx } = job;
    const buckets = this.baseBuckets;
    while (job.bucket < buckets.length) {
      const bucket = buckets[job.bucket];
      const end = Math.min(bucket.count, job.next + job.chunk);
      const t0 = performance.now();
      this._edgeStyle(ctx, bucket, false);
      ctx.beginPath();
      this._traceEdges(ctx, bucket, job.next, end);
      ctx.stroke();
      // Canvas drawing is recorded and rasterised later, at the frame's end; reading a pixel
      // rasterises now, so the slice's clock sees the real cost and frames stay short.
      ctx.getImageData(0, 0, 1, 1);
      const perEdge = (performance.now() - t0) / Math.max(end - job.next, 1);
      job.chunk = Math.max(50, Math.min(20000, Math.floor(SLICE_MS / 2 / Math.max(perEdge, 1e-4))));
      job.next = end;
      if (job.next >= bucket.count) {
        job.bucket += 1;
        job.next = 0;
      }
      if (performance.now() - sliceStart > SLICE_MS && job.bucket < buckets.length) break;
    }
    if (job.bucket >= buckets.length && !job.nodes && performance.now() - sliceStart < SLICE_MS / 2) {
      ctx.globalAlpha = 1;
      this._drawNodes(ctx);
      ctx.getImageData(0, 0, 1, 1);
      job.nodes = true;
    }
    this._recordSlice(job, sliceStart);
    if (!job.nodes) {
      job.frame = requestAnimationFrame(() => this._paintSlice(job, performance.now()));
      return;
    }
    ctx.restore();
    if (!job.direct) {
      const bctx = this.base.getContext("2d");
      bctx.save();
      bctx.setTransform(1, 0, 0, 1, 0, 0);
      bctx.clearRect(0, 0, this.base.width, this.base.height);
      bctx.drawImage(job.target, 0, 0);
      bctx.restore();
    }
    this._drawnView = { kx: this.view.kx, ky: this.view.ky, tx: this.view.tx, ty: this.view.ty };
    this.base.style.transform = "";
    this._job = null;
    this.stats.lastPaintMs = performance.now() - job.start;
    this.prepareEdgeIndex();
    if (this.stats.drawnMs === null && this._loadStart !== undefined) {
      this.stats.drawnMs = performance.now() - this._loadStart;
      performance.mark("atlas-drawn");
    }
  }

  _recordSlice(job, sliceStart) {
    this.stats.maxSliceMs = Math.max(this.stats.maxSliceMs, performance.now() - sliceStart);
    this.stats.slices += 1;
    if (this.stats.firstDrawMs === null && job.direct && this._loadStart !== undefined) {
      this.stats.firstDrawMs = performance.now() - this._loadStart;
      performance.mark("atlas-first-draw");
    }
  }

  _clipToPlot(ctx) {
    const p = this._plot();
    ctx.beginPath();
    ctx.rect(p.x0, p.y0, p.x1 - p.x0, p.y1 - p.y0);
    ctx.clip();
  }

  /** Row lines, column separators and collapsed runs (drawn behind everything else). */
  _drawGridLines(ctx) {
    const { rows, columns } = this.layout;
    const plot = this._plot();
    const x = (wx) => this.view.toScreen(wx, 0).x;
    ctx.fillStyle = "#f4f5f8";
    for (const col of columns) {
      if (!col.gap) continue;
      const a = Math.max(x(col.x0) + 2, plot.x0);
      const b = Math.min(x(col.x1) - 2, plot.x1);
      if (b > a) ctx.fillRect(a, plot.y0 + 12, b - a, plot.y1 - plot.y0 - 12); // a collapsed run
    }
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
    const step = Math.max(1, Math.ceil(6 / Math.max(this.view.kx * 20, 1e-9))); // keep separators ≥ 6 px apart
    columns.forEach((col, i) => {
      if (i === 0 || i % step) return;
      const sx = x(col.x0);
      if (sx < plot.x0 || sx > plot.x1) return;
      ctx.moveTo(sx, plot.y0 + 12);
      ctx.lineTo(sx, plot.y1);
    });
    ctx.stroke();
  }

  /** Every drawn node (or those of `ids`) inside the plot, stamped at whole pixels. */
  _drawNodes(ctx, ids = null) {
    const plot = this._plot();
    const { compact } = this.layout;
    const sprites = {};
    for (const kind of Object.keys(NODE_BOX)) sprites[kind] = glyphSprite(kind);
    const stamp = (i) => {
      const x = this.sx[i];
      const y = this.sy[i];
      if (i === undefined || x !== x) return;
      if (x < plot.x0 - 8 || x > plot.x1 + 8 || y < plot.y0 - 8 || y > plot.y1 + 8) return;
      const sprite = sprites[compact.has(this.nodes[i].node_id) ? "tick" : this.kinds[i]];
      ctx.drawImage(sprite.canvas, Math.round(x - sprite.w / 2), Math.round(y - sprite.h / 2), sprite.w, sprite.h);
    };
    ctx.globalAlpha = 1;
    // Embeddings and errors first: features and logits stay on top where they meet.
    const order = ["embedding", "error", "feature", "logit"];
    if (ids) {
      const list = [...ids].map((id) => this.index.get(id)).filter((i) => i !== undefined);
      for (const kind of order) for (const i of list) if (this.kinds[i] === kind) stamp(i);
      return;
    }
    for (const kind of order) for (let i = 0; i < this.nodes.length; i += 1) if (this.kinds[i] === kind) stamp(i);
  }

  _ringFor(id) {
    const { pinned, clicked, matches, grouped } = this.decor;
    if (id === clicked) return "#d62839";
    if (matches.has(id)) return "#f0b400";
    if (grouped.has(id)) return "#2a9d8f";
    if (pinned.has(id)) return "#1f2933";
    return null;
  }

  /** Rings around decorated nodes, one path per colour. */
  _drawRings(ctx, ids, width = 2) {
    const byColour = new Map();
    for (const id of ids) {
      const ring = this._ringFor(id);
      const p = this._at(id);
      if (!ring || !p || !this._inPlot(p.x, p.y, -8)) continue;
      if (!byColour.has(ring)) byColour.set(ring, []);
      byColour.get(ring).push(p);
    }
    for (const [colour, points] of byColour) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (const p of points) {
        ctx.moveTo(p.x + 8, p.y);
        ctx.arc(p.x, p.y, 8, 0, Math.PI * 2);
      }
      ctx.stroke();
    }
  }

  // -- the overlay -----------------------------------------------------------------------------

  /** The focused node's edges, strongest first, packed for painting: the strongest
   * FOCUS_WIDE_EDGES drawn wide, the rest as hairlines (cached per node). */
  _focusLinks(id) {
    let focus = this._focusCache.get(id);
    if (!focus) {
      const { incoming, outgoing } = this.adjacency;
      const links = [...(incoming.get(id) || []), ...(outgoing.get(id) || [])];
      links.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
      focus = {
        links,
        wide: this._packLinks(links.slice(0, FOCUS_WIDE_EDGES)),
        thin: this._packLinks(links.slice(FOCUS_WIDE_EDGES)),
      };
      if (this._focusCache.size > 200) this._focusCache.clear();
      this._focusCache.set(id, focus);
    }
    return focus;
  }

  _drawFocus(ctx, focus) {
    const plot = this._plot();
    ctx.fillStyle = "rgba(255, 255, 255, 0.72)";
    ctx.fillRect(plot.x0, plot.y0, plot.x1 - plot.x0, plot.y1 - plot.y0);
    const { links, wide, thin } = this._focusLinks(focus);
    for (const bucket of thin) {
      this._edgeStyle(ctx, bucket, true);
      ctx.lineWidth = Math.min(ctx.lineWidth, 1);
      ctx.beginPath();
      this._traceEdges(ctx, bucket, 0, bucket.count);
      ctx.stroke();
    }
    for (const bucket of wide) {
      this._edgeStyle(ctx, bucket, true);
      ctx.beginPath();
      this._traceEdges(ctx, bucket, 0, bucket.count);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    const shown = new Set([focus]);
    for (const link of links) {
      shown.add(link.source);
      shown.add(link.target);
    }
    this._drawNodes(ctx, shown);
    this._drawRings(ctx, [...shown].filter((id) => id !== focus));
    ctx.strokeStyle = "#d62839";
    ctx.lineWidth = 2.5;
    const p = this._at(focus);
    if (p) {
      ctx.beginPath();
      ctx.arc(p.x, p.y, 8, 0, Math.PI * 2);
      ctx.stroke();
    }
    return shown;
  }

  /** The strips around the plot, opaque so a CSS-moved base never shows under them. */
  _drawAxes(ctx) {
    const { rows, paneWidth: width, height } = this.layout;
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
    this._drawTokenLabels(ctx);
    if (this.layout.scrolls) this._drawStrip(ctx);
  }

  _drawTokenLabels(ctx) {
    ctx.font = TOKEN_FONT;
    ctx.textBaseline = "middle";
    for (const label of this.labels.tokens) {
      ctx.fillStyle = label.gap ? "#9aa1ab" : "#3b4250";
      ctx.save();
      if (label.angle) {
        ctx.translate(label.ax, label.ay);
        ctx.rotate(-label.angle);
        ctx.textAlign = "right";
        ctx.fillText(label.text, 0, 0);
      } else {
        ctx.textAlign = "center";
        ctx.fillText(label.text, label.ax, label.ay + label.height / 2);
      }
      ctx.restore();
    }
    ctx.font = NUMBER_FONT;
    ctx.fillStyle = "#9aa1ab";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const label of this.labels.tokens) {
      const box = label.numberBox;
      if (box) ctx.fillText(label.number, (box.x0 + box.x1) / 2, box.y0);
    }
  }

  /** The overview strip: where the nodes are along the prompt, and the part in view. */
  _drawStrip(ctx) {
    const plot = this._plot();
    const W = this.layout.plot;
    const y = this.layout.height - SCROLL_STRIP + 3;
    const h = SCROLL_STRIP - 5;
    const scale = (plot.x1 - plot.x0) / (W.x1 - W.x0);
    ctx.fillStyle = "#eef0f3";
    ctx.fillRect(plot.x0, y, plot.x1 - plot.x0, h);
    ctx.fillStyle = "#a9b2c0";
    const busiest = Math.max(1, ...this.layout.columns.map((c) => c.count));
    for (const col of this.layout.columns) {
      if (!col.count) continue;
      ctx.globalAlpha = 0.25 + 0.75 * Math.sqrt(col.count / busiest);
      const a = plot.x0 + (col.x0 - W.x0) * scale;
      ctx.fillRect(a, y + 1, Math.max(1, (col.x1 - col.x0) * scale), h - 2);
    }
    ctx.globalAlpha = 1;
    const [f0, f1] = this.view.visibleFraction();
    ctx.strokeStyle = "#2a9d8f";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(plot.x0 + f0 * (plot.x1 - plot.x0), y - 1, Math.max(4, (f1 - f0) * (plot.x1 - plot.x0)), h + 2);
  }

  _drawLogitLabels(ctx) {
    ctx.font = LOGIT_FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    for (const label of this.labels.logits) {
      ctx.fillStyle = label.top ? "#3d2450" : "#6d5a7e";
      ctx.fillText(label.text, label.x0, label.y1);
    }
  }

  /** The drawn link the attention panel shows (looked up once per edge and graph), or null. */
  _shownLink() {
    const shown = this.decor.shownEdge;
    if (!shown) return null;
    const cached = this._shownCache;
    if (cached && cached.edge === shown && cached.links === this.links) return cached.link;
    const link = this.links.find((l) => l.source === shown.source && l.target === shown.target) || null;
    this._shownCache = { edge: shown, links: this.links, link };
    return link;
  }

  /** The edge under the pointer: its line, wide, over a white halo, and its ends' rings. */
  _drawEdgeHighlight(ctx, link) {
    const a = this._at(link.source);
    const b = this._at(link.target);
    if (!a || !b) return;
    ctx.globalAlpha = 1;
    ctx.lineCap = "round";
    for (const [colour, width] of [["rgba(255, 255, 255, 0.9)", 6], [edgeColor(link.weight), 3]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
    }
    ctx.lineCap = "butt";
    ctx.strokeStyle = "#1f2933";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    for (const p of [a, b]) {
      ctx.moveTo(p.x + 6, p.y);
      ctx.arc(p.x, p.y, 6, 0, Math.PI * 2);
    }
    ctx.stroke();
  }

  _drawOverlay() {
    if (!this.layout) return;
    const ctx = this.overlay.getContext("2d");
    ctx.clearRect(0, 0, this.layout.paneWidth, this.layout.height);
    const focus = this.hovered || this.decor.clicked;
    const { pinned, clicked, matches, grouped } = this.decor;
    const decorated = new Set([...pinned, ...matches, ...grouped]);
    if (clicked) decorated.add(clicked);
    ctx.save();
    this._clipToPlot(ctx);
    if (!focus || !this._at(focus)) {
      this._drawRings(ctx, decorated);
    } else {
      const shown = this._drawFocus(ctx, focus);
      this._drawRings(ctx, [...decorated].filter((id) => !shown.has(id)));
    }
    const shown = this._shownLink();
    if (shown && shown !== this.hoveredEdge) this._drawEdgeHighlight(ctx, shown);
    if (this.hoveredEdge) this._drawEdgeHighlight(ctx, this.hoveredEdge);
    this._drawLogitLabels(ctx);
    ctx.restore();
    this._drawAxes(ctx);
  }
}
