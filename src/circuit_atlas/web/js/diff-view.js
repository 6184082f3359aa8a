// The diff view: two graphs over one layout, as the server's comparison aligns them
// (GET api/compare/A/B, docs/graph-comparison.md). Columns are the aligned positions (same
// token, substituted, only in A / B, last), rows the layers (tokens at the bottom, the targets
// at the top); each node is coloured as kept in both graphs, only in A or only in B (or, by a
// toggle, by its change in influence), sized by its larger influence. Beside it: the effect on
// the target, and tables of the features that disappear, appear or change most, and of the
// edges that change most. The view lives in the URL (?diff=A,B&pruningThreshold=…&diffNode=…),
// so a link reopens it. `ComparePicker` adds the "choose two graphs" column to the browser.

import { api } from "./api.js";
import { clear, debounce, el, fmt, formatProbability, showToken, svg, withoutPaths } from "./util.js";

export const STATUS_COLOURS = { both: "#7b8494", "only a": "#d1495b", "only b": "#1f9e89" };
const STATUS_TEXT = { both: "in both", "only a": "only in A", "only b": "only in B" };
const MAX_EDGES = 400;
const NODE_STEP = 18; // px between the centres of nodes sharing a cell
const MIN_LABEL_GAP = 44; // px between the centres of two token labels
const LOGIT_STEP = 150; // px between targets (labels "austin → sacramento" cut to fit)
const TABLE_ROWS = 12;
const MARGIN = { left: 64, right: 20, top: 28, bottom: 58 };

// ------------------------------------------------------------------------------ URL state
/** The diff view's state from the URL, or null when the URL does not ask for one. */
export function readDiffState(search = window.location.search) {
  const params = new URLSearchParams(search);
  const ids = (params.get("diff") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (ids.length !== 2) return null;
  const threshold = Number(params.get("pruningThreshold"));
  return {
    a: ids[0],
    b: ids[1],
    nodeThreshold: params.has("pruningThreshold") && threshold >= 0 && threshold <= 1 ? threshold : null,
    selected: params.get("diffNode") || null,
    colour: params.get("colour") === "change" ? "change" : "status",
  };
}

export function writeDiffState(state) {
  const params = new URLSearchParams();
  params.set("diff", `${state.a},${state.b}`);
  if (state.nodeThreshold !== null && state.nodeThreshold !== undefined) {
    params.set("pruningThreshold", String(state.nodeThreshold));
  }
  if (state.selected) params.set("diffNode", state.selected);
  if (state.colour === "change") params.set("colour", "change");
  const url = `${window.location.pathname}?${params}`;
  window.history.replaceState(null, "", url);
  return url;
}

// ------------------------------------------------------------------------------ helpers
/** Where a node sits, in words: the token(s) of its aligned position. */
export function positionText(position) {
  if (!position) return "";
  const a = position.token_a === null ? null : showToken(position.token_a);
  const b = position.token_b === null ? null : showToken(position.token_b);
  if (a !== null && b !== null) return a === b ? `“${a}”` : `“${a}”→“${b}”`;
  return a !== null ? `“${a}” (A)` : `“${b}” (B)`;
}

function nodeTitle(node, positions) {
  if (node.kind === "feature") return `L${node.layer} #${node.feature}`;
  if (node.kind === "error") return `error L${node.layer}`;
  if (node.kind === "token") return `token ${positionText(positions.get(node.position))}`;
  return `target ${node.key.replace(/^logit /, "")}`;
}

/** Nodes placed on one grid: x by aligned position (logits spread over the top row), y by layer. */
export function diffLayout(comparison, width, height) {
  const columns = new Map(comparison.positions.map((p, i) => [p.key, i]));
  const layers = Math.max(1, ...comparison.nodes.filter((n) => n.layer !== null).map((n) => n.layer + 1));
  const rows = layers + 2; // tokens, layers 0..L-1, targets
  const rowH = (height - MARGIN.top - MARGIN.bottom) / (rows - 1);
  const rowOf = (n) => (n.kind === "token" ? 0 : n.kind === "logit" ? rows - 1 : n.layer + 1);
  const cells = new Map();
  for (const node of comparison.nodes) {
    const column = node.kind === "logit" ? "logits" : columns.get(node.position) ?? 0;
    const key = `${column}|${rowOf(node)}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(node);
  }
  // Columns as wide as their most crowded cell needs (at least a token's width), scaled to fit.
  const need = new Array(columns.size).fill(NODE_STEP * 4);
  for (const [key, members] of cells) {
    const column = key.split("|")[0];
    if (column !== "logits") need[column] = Math.max(need[column], NODE_STEP * (members.length + 1));
  }
  const scale = (width - MARGIN.left - MARGIN.right) / Math.max(1, need.reduce((a, b) => a + b, 0));
  const left = [];
  need.reduce((x, w, i) => ((left[i] = x), x + w * scale), MARGIN.left);
  const colW = need.map((w) => w * scale);
  const placed = new Map();
  let logitStep = LOGIT_STEP;
  for (const [key, members] of cells) {
    const [column, row] = key.split("|");
    members.sort((p, q) => (p.kind === q.kind ? (p.feature ?? 0) - (q.feature ?? 0) : p.kind === "error" ? 1 : -1));
    const y = height - MARGIN.bottom - Number(row) * rowH;
    if (column === "logits") {
      const span = Math.min(width - MARGIN.left - MARGIN.right, members.length * LOGIT_STEP);
      const start = width - MARGIN.right - span;
      logitStep = span / members.length;
      members.forEach((n, i) => placed.set(n.key, { x: start + (i + 0.5) * logitStep, y }));
      continue;
    }
    const centre = left[column] + colW[column] / 2;
    const step = Math.min(NODE_STEP, (colW[column] * 0.9) / members.length);
    members.forEach((n, i) => placed.set(n.key, { x: centre + (i - (members.length - 1) / 2) * step, y }));
  }
  return { placed, columns, left, colW, rowH, rows, layers, logitStep };
}

/** A node's fill: by status, or by its change in influence (red: weaker in B, teal: stronger). */
export function nodeColour(node, colour, maxDelta) {
  if (colour !== "change") return STATUS_COLOURS[node.status];
  const t = maxDelta > 0 ? Math.min(1, Math.abs(node.delta) / maxDelta) : 0;
  const base = node.delta < 0 ? [209, 73, 91] : [31, 158, 137];
  const mix = (c) => Math.round(235 + (c - 235) * (0.15 + 0.85 * t));
  return `rgb(${base.map(mix).join(",")})`;
}

// ------------------------------------------------------------------------------ the picker
/** The graph browser's "compare" column: tick two graphs, then compare them. */
export class ComparePicker {
  constructor(onCompare) {
    this.onCompare = onCompare;
    this.chosen = [];
    this.button = null;
  }

  header() {
    return el("th", { class: "compare-col", title: "Tick two graphs to compare them" }, "A/B");
  }

  cell(graph) {
    const box = el("input", {
      type: "checkbox",
      "data-testid": "compare-pick",
      "aria-label": `Compare ${graph.id}`,
      checked: this.chosen.includes(graph.id),
      disabled: !graph.has_native,
      title: graph.has_native ? "Choose for comparison" : "JSON-only graph: comparison needs the native graph",
    });
    box.addEventListener("change", () => this.toggle(graph.id, box.checked));
    const role = this.chosen.indexOf(graph.id);
    return el("td", { class: "compare-col" }, box, role >= 0 ? el("span", { class: "pick-role" }, role ? "B" : "A") : null);
  }

  toggle(id, on) {
    this.chosen = this.chosen.filter((c) => c !== id);
    if (on) this.chosen = [...this.chosen, id].slice(-2);
    this.refresh?.();
  }

  bar(refresh) {
    this.refresh = refresh;
    const ready = this.chosen.length === 2;
    return el(
      "button",
      {
        class: "compare-button",
        "data-testid": "compare-selected",
        disabled: !ready,
        title: ready ? `Compare ${this.chosen[0]} (A) with ${this.chosen[1]} (B)` : "Tick two graphs (with native graphs) to compare",
        onclick: () => ready && this.onCompare(this.chosen[0], this.chosen[1]),
      },
      ready ? `Compare ${this.chosen[0]} ⇄ ${this.chosen[1]}` : `Compare (${this.chosen.length}/2)`,
    );
  }
}

// ------------------------------------------------------------------------------ the view
export class DiffView {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.state = { a: null, b: null, nodeThreshold: null, selected: null, colour: "status" };
    this.comparison = null;
    this.ticket = 0;
    // Redraw to the pane's new size (window resized); the tables keep their state.
    new ResizeObserver(debounce(() => {
      if (this.comparison && document.body.dataset.mode === "diff") this.drawGraph();
    }, 120)).observe(root);
    // Escape clears the selection here; the graph view's own handler must not see it (it would
    // rewrite the URL for a graph).
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape" || document.body.dataset.mode !== "diff") return;
      e.stopPropagation();
      if (this.state.selected && this.comparison) this.select(null);
    }, true);
  }

  /** Compare graphs `a` and `b` (ids of the graph list). */
  async open(a, b, options = {}) {
    const s = this.state;
    Object.assign(s, { a, b, nodeThreshold: options.nodeThreshold ?? null, selected: options.selected ?? null });
    if (options.colour) s.colour = options.colour;
    document.body.dataset.mode = "diff";
    document.title = `${a} ⇄ ${b} · circuit-atlas`;
    await this.load();
  }

  /** From a graph's view: compare it (A) with another native graph (B), chosen in the bar. */
  async openFrom(graphId) {
    const others = this.app.state.graphs.filter((g) => g.has_native && g.id !== graphId);
    const same = others.find((g) => g.n_tokens === this.app.state.graphs.find((h) => h.id === graphId)?.n_tokens);
    await this.open(graphId, (same || others[0] || { id: graphId }).id);
  }

  async load() {
    const s = this.state;
    const ticket = ++this.ticket;
    this.renderFrame();
    this.message("Comparing…");
    let comparison;
    try {
      comparison = await api.compare(s.a, s.b, s.nodeThreshold, null);
    } catch (error) {
      if (ticket !== this.ticket) return;
      this.comparison = null;
      this.message(error.message, true);
      this.app.setStatus(`Cannot compare: ${error.message}`, true);
      writeDiffState(s);
      document.body.dataset.ready = "1";
      return;
    }
    if (ticket !== this.ticket) return;
    this.comparison = comparison;
    if (s.nodeThreshold === null) s.nodeThreshold = comparison.settings.node_threshold;
    this.positions = new Map(comparison.positions.map((p) => [p.key, p]));
    this.byKey = new Map(comparison.nodes.map((n) => [n.key, n]));
    if (s.selected && !this.byKey.has(s.selected)) s.selected = null;
    this.render();
    const sum = comparison.summary;
    this.app.setStatus(
      `${sum["features both"]} shared · ${sum["features only a"]} only in A · ${sum["features only b"]} only in B features · ${comparison.edges.length} edges`,
    );
    document.body.dataset.ready = "1";
  }

  message(text, isError = false) {
    clear(this.canvasBox).append(el("div", { class: isError ? "empty error" : "empty", "data-testid": "diff-message" }, withoutPaths(text)));
  }

  // -- frame: graph choice and settings ---------------------------------------------------
  renderFrame() {
    const s = this.state;
    const graphs = this.app.state.graphs.filter((g) => g.has_native);
    const choose = (which) => {
      const select = el(
        "select",
        { "data-testid": `diff-${which}`, "aria-label": `Graph ${which.toUpperCase()}` },
        ...graphs.map((g) => el("option", { value: g.id, selected: g.id === s[which] }, `${g.id} — ${showToken(g.prompt).slice(0, 50)}`)),
      );
      select.addEventListener("change", () => {
        s[which] = select.value;
        s.selected = null;
        this.load();
      });
      return select;
    };
    const threshold = el("input", {
      type: "range", min: "0.05", max: "1", step: "0.01", value: s.nodeThreshold ?? 0.8,
      "data-testid": "diff-threshold", "aria-label": "Node threshold",
    });
    const shown = el("span", { class: "value" }, fmt(Number(threshold.value), 2));
    threshold.addEventListener("input", () => (shown.textContent = fmt(Number(threshold.value), 2)));
    threshold.addEventListener("change", () => {
      s.nodeThreshold = Number(threshold.value);
      this.load();
    });
    const colour = el(
      "select",
      { "data-testid": "diff-colour", "aria-label": "Colour nodes by" },
      el("option", { value: "status", selected: s.colour === "status" }, "colour: in A / B / both"),
      el("option", { value: "change", selected: s.colour === "change" }, "colour: change in influence"),
    );
    colour.addEventListener("change", () => {
      s.colour = colour.value;
      this.render();
    });
    const swap = el("button", { "data-testid": "diff-swap", title: "Swap A and B", onclick: () => {
      [s.a, s.b] = [s.b, s.a];
      s.selected = null;
      this.load();
    } }, "⇄");
    this.canvasBox = el("div", { class: "diff-canvas", "data-testid": "diff-graph" });
    this.side = el("div", { class: "diff-side", "data-testid": "diff-side" });
    this.head = el("div", { class: "diff-summary", "data-testid": "diff-summary" });
    clear(this.root).append(
      el(
        "div",
        { class: "diff-bar" },
        el("span", { class: "pick-role a" }, "A"), choose("a"), swap, el("span", { class: "pick-role b" }, "B"), choose("b"),
        el("label", { class: "slider", title: "Nodes kept in either graph at this share of the influence" }, "Nodes", threshold, shown),
        colour,
        el("span", { class: "diff-legend" },
          ...Object.entries(STATUS_TEXT).map(([status, text]) =>
            el("span", { class: "legend-item" }, el("span", { class: "dot", style: { background: STATUS_COLOURS[status] } }), text))),
      ),
      this.head,
      el("div", { class: "diff-body" }, this.canvasBox, this.side),
    );
    writeDiffState(s);
  }

  // -- drawing ----------------------------------------------------------------------------
  render() {
    writeDiffState(this.state);
    this.renderSummary();
    this.drawGraph();
    this.renderSide();
  }

  renderSummary() {
    const c = this.comparison;
    const sum = c.summary;
    const pct = (v) => `${Math.round(100 * v)}%`;
    const t = c.target;
    const answer = (token, p) => (token === null ? "–" : `“${showToken(token)}” ${formatProbability(p)}`);
    clear(this.head).append(
      el("div", { class: "diff-prompts" },
        el("div", {}, el("span", { class: "pick-role a" }, "A"), " ", showToken(c.a.prompt)),
        el("div", {}, el("span", { class: "pick-role b" }, "B"), " ", showToken(c.b.prompt))),
      el("div", { class: "diff-target", "data-testid": "diff-target" },
        el("span", { class: "muted" }, "Target "),
        answer(t.token_a, t.probability_a), " → ", answer(t.token_b, t.probability_b),
        t.same_token ? "" : el("span", { class: "muted" }, " (each graph's answer)")),
      el("div", { class: "muted" },
        `shared features carry ${pct(sum["shared influence share a"])} of A's and ${pct(sum["shared influence share b"])} of B's feature influence · ` +
        `replacement A ${fmt(c.a.replacement, 2)}, B ${fmt(c.b.replacement, 2)}`),
    );
  }

  drawGraph() {
    const c = this.comparison;
    const width = Math.max(480, this.canvasBox.clientWidth || 800);
    const height = Math.max(360, this.canvasBox.clientHeight || 520);
    const layout = diffLayout(c, width, height);
    this.layout = layout;
    const maxInfluence = Math.max(1e-9, ...c.nodes.map((n) => Math.max(n.influence_a, n.influence_b)));
    const maxDelta = Math.max(0, ...c.nodes.map((n) => Math.abs(n.delta)));
    const radius = (n) => 3 + 8 * Math.sqrt(Math.max(n.influence_a, n.influence_b) / maxInfluence);
    const root = svg("svg", { width, height, class: "diff-svg", role: "img", "aria-label": "Graph comparison" });
    // grid: layer labels and position columns with their tokens
    for (let row = 0; row < layout.rows; row++) {
      const y = height - MARGIN.bottom - row * layout.rowH;
      const text = row === 0 ? "tokens" : row === layout.rows - 1 ? "targets" : `L${row - 1}`;
      root.append(svg("text", { x: 8, y: y + 4, class: "diff-axis" }, text));
      root.append(svg("line", { x1: MARGIN.left - 6, x2: width - MARGIN.right, y1: y, y2: y, class: "diff-grid" }));
    }
    let lastLabel = -Infinity; // token labels at least MIN_LABEL_GAP apart; the rest on hover
    c.positions.forEach((p, i) => {
      const x = layout.left[i] + layout.colW[i] / 2;
      const shown = x - lastLabel >= MIN_LABEL_GAP || p.role === "last";
      if (shown) lastLabel = x;
      const base = height - MARGIN.bottom + 18;
      const same = p.token_a !== null && p.token_a === p.token_b;
      const column = svg("g", { class: "diff-column", "data-role": p.role }, svg("title", {}, `${p.role}: ${positionText(p)}`));
      if (!shown) {
        column.append(svg("line", { x1: x, x2: x, y1: base - 12, y2: base - 8, class: "diff-tick" }));
        root.append(column);
        return;
      }
      const chars = Math.min(12, Math.max(3, Math.floor(Math.max(layout.colW[i], MIN_LABEL_GAP) / 7)));
      column.append(svg("text", { x, y: base, class: `diff-token ${same ? "" : "a"}`, "text-anchor": "middle" },
        p.token_a === null ? "·" : showToken(p.token_a).slice(0, chars)));
      if (!same) {
        column.append(svg("text", { x, y: base + 14, class: "diff-token b", "text-anchor": "middle" },
          p.token_b === null ? "·" : showToken(p.token_b).slice(0, chars)));
      }
      root.append(column);
    });
    // edges, strongest first (drawn under the nodes)
    const edges = [...c.edges]
      .sort((p, q) => Math.max(q.influence_a, q.influence_b) - Math.max(p.influence_a, p.influence_b))
      .slice(0, MAX_EDGES);
    const maxEdge = Math.max(1e-9, ...edges.map((e) => Math.max(e.influence_a, e.influence_b)));
    const edgeLayer = svg("g", { class: "diff-edges" });
    for (const edge of edges) {
      const from = layout.placed.get(edge.source);
      const to = layout.placed.get(edge.target);
      if (!from || !to) continue;
      const strength = Math.max(edge.influence_a, edge.influence_b) / maxEdge;
      const touches = this.state.selected && (edge.source === this.state.selected || edge.target === this.state.selected);
      edgeLayer.append(svg("line", {
        x1: from.x, y1: from.y, x2: to.x, y2: to.y,
        stroke: STATUS_COLOURS[edge.status],
        "stroke-width": 0.5 + 2.5 * strength,
        "stroke-opacity": touches ? 0.9 : this.state.selected ? 0.08 : 0.15 + 0.5 * strength,
        "data-status": edge.status,
      }));
    }
    root.append(edgeLayer);
    const nodeLayer = svg("g", { class: "diff-nodes" });
    for (const node of c.nodes) {
      const at = layout.placed.get(node.key);
      if (!at) continue;
      const r = radius(node);
      const fill = nodeColour(node, this.state.colour, maxDelta);
      const selected = node.key === this.state.selected;
      const changed = this.state.colour === "status" && node.status === "both" && maxDelta > 0 && Math.abs(node.delta) >= 0.25 * maxDelta;
      const shape = node.kind === "feature"
        ? svg("circle", { cx: at.x, cy: at.y, r })
        : svg("rect", { x: at.x - r, y: at.y - r, width: 2 * r, height: 2 * r, rx: node.kind === "logit" ? 2 : 0 });
      shape.setAttribute("fill", fill);
      shape.setAttribute("stroke", selected ? "#111" : changed ? (node.delta < 0 ? STATUS_COLOURS["only a"] : STATUS_COLOURS["only b"]) : "#fff");
      shape.setAttribute("stroke-width", selected ? 2.5 : changed ? 2.2 : 1);
      const group = svg("g", {
        class: `diff-node${selected ? " selected" : ""}`,
        "data-testid": "diff-node",
        "data-key": node.key,
        "data-status": node.status,
        onclick: () => this.select(node.key === this.state.selected ? null : node.key),
      }, shape, svg("title", {}, `${nodeTitle(node, this.positions)} ${node.label ? `— ${node.label}` : ""}\n${STATUS_TEXT[node.status]} · influence A ${fmt(node.influence_a)} → B ${fmt(node.influence_b)} (Δ ${fmt(node.delta)})`));
      if (node.kind === "logit") {
        group.append(svg("text", { x: at.x, y: at.y - r - 4, class: "diff-logit", "text-anchor": "middle" },
          this.logitText(node.key).slice(0, Math.max(4, Math.floor(layout.logitStep / 6.5)))));
      }
      nodeLayer.append(group);
    }
    root.append(nodeLayer);
    clear(this.canvasBox).append(root);
  }

  /** A target by its tokens in A and B: "austin → sacramento", or the one token. */
  logitText(key) {
    const logit = this.comparison.logits.find((l) => l.key === key);
    if (!logit) return key.replace(/^logit /, "");
    const a = logit.token_a === null ? "·" : showToken(logit.token_a);
    const b = logit.token_b === null ? "·" : showToken(logit.token_b);
    return a === b ? a : `${a} → ${b}`;
  }

  select(key) {
    this.state.selected = key;
    this.render();
  }

  // -- side: selected node, target, tables ------------------------------------------------
  renderSide() {
    const c = this.comparison;
    const features = c.nodes.filter((n) => n.kind === "feature");
    const disappear = features.filter((n) => n.status === "only a").sort((p, q) => q.influence_a - p.influence_a);
    const appear = features.filter((n) => n.status === "only b").sort((p, q) => q.influence_b - p.influence_b);
    const change = features.filter((n) => n.status === "both").sort((p, q) => Math.abs(q.delta) - Math.abs(p.delta));
    clear(this.side).append(
      this.selectedBox(),
      this.effectOnTarget(),
      this.table("Disappear — only in A", "disappear", disappear),
      this.table("Appear — only in B", "appear", appear),
      this.table("Change most — in both", "change", change),
      this.edgeTable(),
    );
  }

  nodeName(key) {
    const node = this.byKey.get(key);
    if (!node) return key;
    if (node.kind === "logit") return `target ${this.logitText(key)}`;
    const at = positionText(this.positions.get(node.position));
    return `${nodeTitle(node, this.positions)}${node.kind === "feature" && at ? ` @${at}` : ""}`;
  }

  graphLink(which, nodeId) {
    const id = this.state[which];
    const params = new URLSearchParams({ graph: id });
    if (nodeId) params.set("clickedId", nodeId);
    return el("a", { href: `?${params}`, "data-testid": `diff-open-${which}`, class: "jump" }, `open in ${which.toUpperCase()} (${id})`);
  }

  selectedBox() {
    const node = this.state.selected ? this.byKey.get(this.state.selected) : null;
    if (!node) {
      return el("div", { class: "diff-selected muted small" }, "Click a node or a row to see it in both graphs. ",
        this.graphLink("a"), " · ", this.graphLink("b"));
    }
    return el(
      "div",
      { class: "diff-selected", "data-testid": "diff-selected" },
      el("div", { class: "diff-selected-title" }, el("span", { class: "dot", style: { background: STATUS_COLOURS[node.status] } }), " ",
        this.nodeName(node.key), node.label ? el("span", { class: "muted" }, ` — ${node.label}`) : null),
      el("table", { class: "diff-values" },
        el("tr", {}, el("th", {}, ""), el("th", {}, "A"), el("th", {}, "B")),
        el("tr", {}, el("td", {}, "influence"), el("td", {}, fmt(node.influence_a)), el("td", {}, fmt(node.influence_b))),
        node.kind === "feature"
          ? el("tr", {}, el("td", {}, "activation"), el("td", {}, fmt(node.activation_a)), el("td", {}, fmt(node.activation_b)))
          : null,
        el("tr", {}, el("td", {}, "kept"), el("td", {}, node.status !== "only b" ? "yes" : node.node_id_a ? "below threshold" : "absent"),
          el("td", {}, node.status !== "only a" ? "yes" : node.node_id_b ? "below threshold" : "absent"))),
      el("div", { class: "small" },
        node.node_id_a ? this.graphLink("a", node.node_id_a) : null,
        node.node_id_a && node.node_id_b ? " · " : null,
        node.node_id_b ? this.graphLink("b", node.node_id_b) : null),
    );
  }

  effectOnTarget() {
    const t = this.comparison.target;
    const chips = (keys) => keys.slice(0, 6).map((key) =>
      el("button", { class: "chip", onclick: () => this.select(key), title: this.byKey.get(key)?.label || key }, this.nodeName(key)));
    return el(
      "div",
      { class: "diff-effect" },
      el("h3", {}, "Effect on the target"),
      el("div", { class: "small" },
        `p(“${showToken(t.token_a ?? "–")}”) in A ${formatProbability(t.probability_a) || "–"}; ` +
        `p(“${showToken(t.token_b ?? "–")}”) in B ${formatProbability(t.probability_b) || "–"}`),
      t.strengthened.length ? el("div", { class: "small" }, el("span", { class: "muted" }, "stronger in B: "), ...chips(t.strengthened)) : null,
      t.weakened.length ? el("div", { class: "small" }, el("span", { class: "muted" }, "weaker in B: "), ...chips(t.weakened)) : null,
    );
  }

  table(title, name, rows) {
    const body = rows.slice(0, TABLE_ROWS).map((n) =>
      el(
        "tr",
        {
          class: n.key === this.state.selected ? "selected" : "",
          "data-testid": `diff-row-${name}`,
          "data-key": n.key,
          onclick: () => this.select(n.key),
        },
        el("td", { class: "feat" }, this.nodeName(n.key), n.label ? el("div", { class: "muted small" }, n.label) : null),
        el("td", { class: "num" }, fmt(n.influence_a)),
        el("td", { class: "num" }, fmt(n.influence_b)),
        el("td", { class: `num ${n.delta < 0 ? "down" : "up"}` }, `${n.delta > 0 ? "+" : ""}${fmt(n.delta)}`),
      ),
    );
    return el(
      "div",
      { class: "diff-table-box" },
      el("h3", {}, `${title} (${rows.length})`),
      rows.length
        ? el("table", { class: "diff-table", "data-testid": `diff-table-${name}` },
            el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B"), el("th", { class: "num" }, "Δ"))),
            el("tbody", {}, ...body))
        : el("div", { class: "muted small" }, "none"),
    );
  }

  edgeTable() {
    const edges = [...this.comparison.edges].sort((p, q) => Math.abs(q.delta) - Math.abs(p.delta)).slice(0, TABLE_ROWS);
    return el(
      "div",
      { class: "diff-table-box" },
      el("h3", {}, `Edges that change most (${this.comparison.edges.length})`),
      el("table", { class: "diff-table", "data-testid": "diff-table-edges" },
        el("thead", {}, el("tr", {}, el("th", {}, "edge"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B"), el("th", { class: "num" }, "Δ"))),
        el("tbody", {}, ...edges.map((e) =>
          el("tr", { onclick: () => this.select(e.target), title: STATUS_TEXT[e.status] },
            el("td", { class: "feat" }, el("span", { class: "dot", style: { background: STATUS_COLOURS[e.status] } }), " ",
              `${this.nodeName(e.source)} → ${this.nodeName(e.target)}`),
            el("td", { class: "num" }, fmt(e.influence_a)),
            el("td", { class: "num" }, fmt(e.influence_b)),
            el("td", { class: `num ${e.delta < 0 ? "down" : "up"}` }, `${e.delta > 0 ? "+" : ""}${fmt(e.delta)}`))))),
    );
  }
}
