// The link graph, drawn on two stacked canvases. The base layer holds every edge and node and is
// redrawn only when the data or the canvas size change (≈200 ms for 12k edges in software
// rendering). The overlay holds everything that reacts to the user (rings for pinned, grouped,
// clicked and matching nodes, the hovered / clicked node's neighbourhood) and costs a few ms, so
// hovering, clicking and pinning never repaint the base. Edges are batched into a few paths by
// sign and strength, so thousands of edges cost a handful of stroke calls.

import { computeLayout } from "./layout.js";
import { NEGATIVE, POSITIVE, el, fmt, nodeKind, showToken } from "./util.js";

const STRENGTH_BUCKETS = 5;
const HIT_RADIUS = 9;
const GRID = 24;

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

export class GraphCanvas {
  constructor(container, { onHover, onClick, labelOf }) {
    this.container = container;
    this.onHover = onHover;
    this.onClick = onClick;
    this.labelOf = labelOf;
    this.scroller = el("div", { class: "graph-scroll" });
    this.stack = el("div", { class: "graph-stack" });
    this.base = el("canvas", { class: "graph-base", "data-testid": "graph-canvas" });
    this.overlay = el("canvas", { class: "graph-overlay" });
    this.tooltip = el("div", { class: "graph-tooltip", hidden: true });
    this.stack.append(this.base, this.overlay);
    this.scroller.append(this.stack);
    container.append(this.scroller, this.tooltip);
    this.nodes = [];
    this.links = [];
    this.layout = null;
    this.hovered = null;
    this.decor = { pinned: new Set(), clicked: null, matches: new Set(), grouped: new Set() };
    this._frame = null;
    this.overlay.addEventListener("mousemove", (e) => this._onMove(e));
    this.overlay.addEventListener("mouseleave", () => this._setHover(null, null));
    this.overlay.addEventListener("click", (e) => this._onClick(e));
    // Wide graphs scroll sideways; let a plain mouse wheel do that.
    this.scroller.addEventListener(
      "wheel",
      (e) => {
        const s = this.scroller;
        if (e.deltaX === 0 && s.scrollWidth > s.clientWidth) {
          s.scrollLeft += e.deltaY;
          e.preventDefault();
        }
      },
      { passive: false },
    );
    new ResizeObserver(() => this._relayout()).observe(container);
  }

  /** Replace the graph: {nodes, links, metadata}. */
  setGraph(doc) {
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
    this.hovered = null;
    this._relayout();
  }

  /** Pins, clicked node, search matches and supernode members, drawn as rings. */
  setDecorations(decor) {
    this.decor = { ...this.decor, ...decor };
    this._drawOverlay();
  }

  /** Client (viewport) coordinates of a node's centre, or null when it is not drawn. */
  screenPosition(id) {
    const pos = this.layout && this.layout.positions.get(id);
    if (!pos) return null;
    const rect = this.base.getBoundingClientRect();
    return { x: rect.left + pos.x, y: rect.top + pos.y };
  }

  /** Scroll horizontally so a node is visible. */
  reveal(id) {
    const pos = this.layout && this.layout.positions.get(id);
    if (!pos) return;
    const view = this.scroller;
    if (pos.x < view.scrollLeft + 40 || pos.x > view.scrollLeft + view.clientWidth - 40) {
      view.scrollLeft = Math.max(0, pos.x - view.clientWidth / 2);
    }
  }

  _relayout() {
    if (!this.doc) return;
    const width = this.container.clientWidth;
    const height = Math.max(this.container.clientHeight - 4, 240);
    const tokens = (this.doc.metadata && this.doc.metadata.prompt_tokens) || [];
    this.layout = computeLayout(this.nodes, tokens, width, height);
    this._buildGrid();
    for (const canvas of [this.base, this.overlay]) {
      const ratio = window.devicePixelRatio || 1;
      canvas.width = Math.round(this.layout.width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${this.layout.width}px`;
      canvas.style.height = `${height}px`;
      canvas.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
    }
    this.stack.style.width = `${this.layout.width}px`;
    this.stack.style.height = `${height}px`;
    this._drawBase();
    this._drawOverlay();
  }

  _buildGrid() {
    this.grid = new Map();
    for (const [id, { x, y }] of this.layout.positions) {
      const key = `${Math.floor(x / GRID)}:${Math.floor(y / GRID)}`;
      if (!this.grid.has(key)) this.grid.set(key, []);
      this.grid.get(key).push(id);
    }
  }

  _hit(x, y) {
    let best = null;
    let bestDist = HIT_RADIUS * HIT_RADIUS;
    const gx = Math.floor(x / GRID);
    const gy = Math.floor(y / GRID);
    for (let dx = -1; dx <= 1; dx += 1) {
      for (let dy = -1; dy <= 1; dy += 1) {
        for (const id of this.grid.get(`${gx + dx}:${gy + dy}`) || []) {
          const p = this.layout.positions.get(id);
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

  _local(event) {
    const rect = this.overlay.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  _onMove(event) {
    const { x, y } = this._local(event);
    const id = this.layout ? this._hit(x, y) : null;
    this._setHover(id, event);
  }

  _setHover(id, event) {
    this.overlay.style.cursor = id ? "pointer" : "default";
    if (id !== this.hovered) {
      this.hovered = id;
      this.onHover && this.onHover(id);
      if (this._frame === null) {
        this._frame = requestAnimationFrame(() => {
          this._frame = null;
          this._drawOverlay();
        });
      }
    }
    this._showTooltip(id, event);
  }

  _showTooltip(id, event) {
    if (!id || !event) {
      this.tooltip.hidden = true;
      return;
    }
    const node = this.byId.get(id);
    const label = this.labelOf(node);
    const kind = nodeKind(node);
    const detail = [];
    if (kind === "feature") detail.push(`L${node.layer} · act ${fmt(node.activation, 2)}`);
    if (kind === "error") detail.push(`error L${node.layer}`);
    if (node.influence !== null && node.influence !== undefined) detail.push(`infl ${fmt(node.influence, 3)}`);
    this.tooltip.replaceChildren(
      el("div", { class: "tt-label" }, label || kind),
      el("div", { class: "tt-meta" }, `${id}${detail.length ? " · " + detail.join(" · ") : ""}`),
    );
    this.tooltip.hidden = false;
    const box = this.container.getBoundingClientRect();
    const left = Math.min(event.clientX - box.left + 14, box.width - 260);
    this.tooltip.style.left = `${Math.max(4, left)}px`;
    this.tooltip.style.top = `${event.clientY - box.top + 14}px`;
  }

  _onClick(event) {
    const { x, y } = this._local(event);
    const id = this.layout ? this._hit(x, y) : null;
    this.onClick &&
      this.onClick(id, { pin: event.ctrlKey || event.metaKey, shift: event.shiftKey });
  }

  // -- drawing ---------------------------------------------------------------------------------
  _strength(weight) {
    return Math.min(1, Math.abs(weight) / this.refWeight);
  }

  _drawAxes(ctx) {
    const { rows, columns, width, height } = this.layout;
    ctx.save();
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#eef0f3";
    ctx.fillStyle = "#8a919c";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const step = Math.max(1, Math.ceil(rows.length / 40));
    rows.forEach((row, i) => {
      ctx.beginPath();
      ctx.moveTo(44, row.y);
      ctx.lineTo(width - 8, row.y);
      ctx.stroke();
      if (i % step === 0 || i === rows.length - 1) ctx.fillText(row.label, 40, row.y);
    });
    ctx.strokeStyle = "#f3f4f6";
    for (const col of columns.slice(1)) {
      ctx.beginPath();
      ctx.moveTo(col.x0, 12);
      ctx.lineTo(col.x0, height - 40);
      ctx.stroke();
    }
    ctx.fillStyle = "#3b4250";
    ctx.font = "12px ui-monospace, SFMono-Regular, Menlo, monospace";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const col of columns) {
      const room = col.x1 - col.x0 - 4;
      let text = showToken(col.token);
      while (text.length > 1 && ctx.measureText(text).width > room) text = text.slice(0, -1);
      if (text !== showToken(col.token)) text = `${text.slice(0, -1)}…`;
      ctx.fillText(text, (col.x0 + col.x1) / 2, height - 34);
    }
    ctx.restore();
  }

  _strokeBuckets(ctx, links, veil = false) {
    const buckets = [];
    for (let i = 0; i < STRENGTH_BUCKETS * 2; i += 1) buckets.push([]);
    for (const link of links) {
      const bucket = Math.min(
        STRENGTH_BUCKETS - 1,
        Math.floor(this._strength(link.weight) * STRENGTH_BUCKETS),
      );
      buckets[bucket * 2 + (link.weight >= 0 ? 0 : 1)].push(link);
    }
    const pos = this.layout.positions;
    buckets.forEach((members, i) => {
      if (!members.length) return;
      const level = (Math.floor(i / 2) + 0.5) / STRENGTH_BUCKETS;
      ctx.strokeStyle = i % 2 === 0 ? POSITIVE : NEGATIVE;
      ctx.globalAlpha = veil ? 0.25 + 0.7 * level : 0.1 + 0.45 * level;
      ctx.lineWidth = veil ? 0.8 + 3.6 * level : 0.4 + 2.6 * level;
      ctx.beginPath();
      for (const link of members) {
        const a = pos.get(link.source);
        const b = pos.get(link.target);
        if (!a || !b) continue;
        ctx.moveTo(a.x, a.y);
        ctx.lineTo(b.x, b.y);
      }
      ctx.stroke();
    });
    ctx.globalAlpha = 1;
  }

  _drawNode(ctx, node, { ring = null, ringWidth = 2 } = {}) {
    const p = this.layout.positions.get(node.node_id);
    if (!p) return;
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

  _drawLogitLabels(ctx) {
    ctx.save();
    ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
    ctx.fillStyle = "#5d4670";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (const node of this.nodes) {
      if (nodeKind(node) !== "logit") continue;
      const p = this.layout.positions.get(node.node_id);
      if (p) ctx.fillText(showToken(logitToken(node)).slice(0, 8), p.x, p.y - 8);
    }
    ctx.restore();
  }

  _drawBase() {
    if (!this.layout) return;
    const ctx = this.base.getContext("2d");
    ctx.clearRect(0, 0, this.layout.width, this.layout.height);
    this._drawAxes(ctx);
    this._strokeBuckets(ctx, this.links);
    for (const node of this.nodes) this._drawNode(ctx, node);
    this._drawLogitLabels(ctx);
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

  _drawOverlay() {
    if (!this.layout) return;
    const ctx = this.overlay.getContext("2d");
    ctx.clearRect(0, 0, this.layout.width, this.layout.height);
    const focus = this.hovered || this.decor.clicked;
    if (!focus || !this.byId.has(focus)) {
      this._drawRings(ctx, new Set());
      return;
    }
    ctx.fillStyle = "rgba(255, 255, 255, 0.72)";
    ctx.fillRect(0, 0, this.layout.width, this.layout.height);
    const links = [...(this.incoming.get(focus) || []), ...(this.outgoing.get(focus) || [])];
    this._strokeBuckets(ctx, links, true);
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
}
