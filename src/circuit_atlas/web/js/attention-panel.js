// The attention panel: which heads carry an edge between two positions, and why a head attends
// there (its strongest query-side x key-side term pairs, docs/attention.md). The node panel's edge
// rows get a "heads" button (`rowButton`); the answers come from explanations stored beside the
// graph or, when the server holds the graph's model, are computed on demand (server/attention.py).
// Clicking an edge on the graph canvas opens it too (`edgeAction` / `openEdge`), and the shown
// edge and head live in the URL (`urlState`; `setGraph`'s `restore` reopens them).

import { api } from "./api.js";
import { clear, edgeColor, el, fmt, nodeKind, showToken } from "./util.js";

const SOURCE_KINDS = new Set(["feature", "error", "embedding"]);
const TARGET_KINDS = new Set(["feature", "logit"]);

export class AttentionPanel {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.status = null; // GET /attention for the open graph
    this.stored = new Set(); // "source→target" of the stored edges
    this.edge = null; // the edge shown: {source, target, data}
    this.head = null; // the chosen head, "layer.head"
    this.pending = null; // an edge and head from the URL, opened once the graph is ready
    this.ticket = 0;
    this._close();
  }

  /**
   * A new graph: forget the shown edge and ask what the server can explain for it. `restore`
   * ({source, target, head}, from the URL) is opened once both that answer and the graph's
   * view (`viewLoaded`) are in; ids that name no explainable edge are dropped quietly.
   */
  async setGraph(graphId, restore = null) {
    this.graphId = graphId;
    this.status = null;
    this.statusKnown = false;
    this.viewGraphId = null;
    this.stored = new Set();
    this.pending = restore && restore.source && restore.target ? { ...restore, graphId } : null;
    this._close();
    try {
      const status = await api.attention(graphId);
      if (graphId !== this.graphId) return;
      this.status = status;
      this.stored = new Set(status.edges.map((e) => `${e.source}→${e.target}`));
    } catch {
      if (graphId !== this.graphId) return;
      this.status = null; // the panel stays hidden; the graph itself reports its own errors
    }
    this.statusKnown = true;
    if (this.available) this.app.canvas.prepareEdgeIndex(); // its edges become clickable
    const help = document.getElementById("edge-click-help");
    if (help) help.hidden = !this.available; // the status bar says so only where it works
    if (this.app.state.clickedId) this.app.nodePanel.show(this.app.state.clickedId);
    this._restore();
  }

  /** The graph's view (its nodes) is on the canvas: a pending URL edge can be checked now. */
  viewLoaded(graphId) {
    this.viewGraphId = graphId;
    this._restore();
  }

  _restore() {
    const want = this.pending;
    if (!want || want.graphId !== this.graphId || !this.statusKnown || this.viewGraphId !== this.graphId) return;
    this.pending = null;
    if (!this.openEdge(want.source, want.target, want.head)) this.app.writeUrl();
  }

  get available() {
    return Boolean(this.status && (this.status.stored || this.status.computable));
  }

  /**
   * Whether the server can answer for the edge source → target (node objects with node_id,
   * feature_type, ctx_idx): null if not, else {samePosition, stored}. Sources are features,
   * errors and embeddings, targets features and logits; edges between positions need a stored
   * explanation or a server that holds the model.
   */
  explainable(source, target) {
    if (!this.available || !source || !target) return null;
    if (!SOURCE_KINDS.has(nodeKind(source)) || !TARGET_KINDS.has(nodeKind(target))) return null;
    const samePosition = source.ctx_idx === target.ctx_idx;
    const stored = this.stored.has(`${source.node_id}→${target.node_id}`);
    if (!samePosition && !this.status.computable && !stored) return null;
    return { samePosition, stored };
  }

  /** The graph canvas's `edgeAction`: what clicking the drawn edge `link` does, or null. */
  edgeAction(link) {
    const byId = this.app.canvas.byId;
    const answer = byId && this.explainable(byId.get(link.source), byId.get(link.target));
    if (!answer) return null;
    return answer.samePosition ? "why no head carries it" : "its attention heads";
  }

  /**
   * Show the edge between two node ids (the canvas's edges, the URL), choosing `head`
   * ("layer.head") when it is one of the edge's explained heads. Returns false, doing nothing,
   * when the edge cannot be explained: unknown ids, wrong kinds, nothing stored or computable.
   * Ends outside the current view are accepted only for stored edges (those are known to exist).
   */
  openEdge(sourceId, targetId, head = null) {
    if (typeof sourceId !== "string" || typeof targetId !== "string") return false;
    const byId = this.app.canvas.byId;
    const source = byId && byId.get(sourceId);
    const target = byId && byId.get(targetId);
    let answer = this.explainable(source, target);
    if (!answer && (!source || !target) && this.available && this.stored.has(`${sourceId}→${targetId}`)) {
      answer = { samePosition: false, stored: true };
    }
    if (!answer) return false;
    this.showEdge(sourceId, targetId, answer.samePosition ? source.ctx_idx : null, head);
    return true;
  }

  /** The panel's part of the URL: the shown (or still pending) edge and head, or null. */
  urlState() {
    if (this.edge) return { source: this.edge.source, target: this.edge.target, head: this.head };
    if (this.pending) return { source: this.pending.source, target: this.pending.target, head: this.pending.head };
    return null;
  }

  /** The "heads" button of a node-panel edge row, or null when the server cannot explain it.
   * `node` is the panel's node; `direction` "incoming" (row → node) or "outgoing". */
  rowButton(row, node, direction) {
    const [source, target] = direction === "incoming" ? [row, node] : [node, row];
    const answer = this.explainable(source, target);
    if (!answer) return null;
    return el(
      "button",
      {
        class: `small heads-button${answer.stored ? " stored" : ""}`,
        "data-testid": "edge-heads",
        title: answer.samePosition
          ? "Both ends at one position: why no head carries this edge"
          : "Which attention heads carry this edge, and why they attend there",
        onclick: (e) => {
          e.stopPropagation();
          this.showEdge(source.node_id, target.node_id, answer.samePosition ? source.ctx_idx : null);
        },
      },
      "heads",
    );
  }

  /** Close the panel (its Close button); the URL forgets the edge. */
  hide() {
    this._close();
    this.app.writeUrl();
  }

  _close() {
    this.ticket += 1; // answers still on their way are dropped
    if (this.edge) this.mark(null);
    this.edge = null;
    this.head = null;
    delete this.root.dataset.ready;
    clear(this.root).hidden = true;
  }

  /** Mark the shown edge on the graph (null: unmark), so the heads are seen to belong to a line. */
  mark(edge) {
    if (this.app.canvas) this.app.canvas.setDecorations({ shownEdge: edge });
  }

  frame(...children) {
    clear(this.root).hidden = false;
    const edge = this.edge;
    this.root.append(
      el(
        "div",
        { class: "panel-head" },
        el("span", { class: "badge badge-attention" }, "Attention"),
        el("span", { class: "attn-edge", "data-testid": "attention-edge" },
          `${this.name(edge.source)} → ${this.name(edge.target)}`),
        el("button", { class: "small", "data-testid": "attention-close", onclick: () => this.hide() }, "Close"),
      ),
      ...children,
    );
  }

  name(nodeId, label = "") {
    const node = this.app.canvas.byId && this.app.canvas.byId.get(nodeId);
    if (node) return this.app.displayName(node);
    return label || nodeId;
  }

  // -- the edge's heads -------------------------------------------------------------------------
  async showEdge(source, target, samePosition = null, wantedHead = null) {
    const ticket = ++this.ticket;
    this.edge = { source, target, data: null };
    this.mark({ source, target });
    this.head = null;
    delete this.root.dataset.ready;
    this.app.writeUrl();
    if (samePosition !== null) {
      this.frame(
        el(
          "div",
          { class: "empty small", "data-testid": "attention-note" },
          `Both ends sit at position ${samePosition}, so no attention head moves this edge between ` +
            "positions: it runs on the residual stream (plus any attention of a position to itself). " +
            "Heads are listed for edges between positions.",
        ),
      );
      return;
    }
    this.frame(el("div", { class: "empty small" }, "Splitting the edge over heads…"));
    let data;
    try {
      data = await api.edgeHeads(this.graphId, source, target);
    } catch (error) {
      if (ticket === this.ticket) this.frame(el("div", { class: "error", "data-testid": "attention-error" }, error.message));
      return;
    }
    if (ticket !== this.ticket) return;
    this.edge.data = data;
    this.renderEdge(data, null);
    const explained = data.heads.filter((h) => h.explained);
    const first = explained.find((h) => `${h.layer}.${h.head}` === wantedHead) || explained[0];
    if (first) this.showHead(first);
    this.root.scrollIntoView({ block: "nearest" });
  }

  renderEdge(data, explanation) {
    const maxAbs = Math.max(1e-12, ...data.heads.map((h) => Math.abs(h.weight)));
    const chosen = explanation ? `${explanation.layer}.${explanation.head}` : null;
    const list = el("ol", { class: "edge-list attn-heads", "data-testid": "attention-heads" });
    for (const head of data.heads) {
      const id = `${head.layer}.${head.head}`;
      list.append(
        el(
          "li",
          {
            class: `edge-row attn-head${id === chosen ? " chosen" : ""}${head.explained ? "" : " unexplained"}`,
            "data-head": id,
            title: `layer ${head.layer} head ${head.head}: query @${head.query_position} attends to key @${head.key_position}\nweight ${head.weight}`,
            onclick: () => this.showHead(head),
          },
          el("span", { class: "edge-bar" }, el("span", { style: { width: bar(head.weight, maxAbs), background: edgeColor(head.weight) } })),
          el("span", { class: "edge-weight" }, fmt(head.weight, 3)),
          el("span", { class: "edge-label" }, `L${head.layer}.H${head.head}`, el("span", { class: "muted" }, `  @${head.query_position} ← @${head.key_position}`)),
          el("span", { class: "edge-tag" }, head.share === null ? "" : `${(100 * head.share).toFixed(1)}%`),
        ),
      );
    }
    const summary =
      `edge ${fmt(data.edge, 3)} · ${data.heads.length} head${data.heads.length === 1 ? "" : "s"}` +
      (data.origin === "stored" ? " · stored" : " · computed");
    this.frame(
      el("div", { class: "meta" }, summary),
      data.heads.length ? list : el("div", { class: "empty small" }, "No head carries this edge."),
      el("div", { class: "attn-explanation", "data-testid": "attention-explanation" }),
    );
  }

  // -- one head's QK explanation ----------------------------------------------------------------
  async showHead(head) {
    const data = this.edge && this.edge.data;
    if (!data) return;
    const ticket = ++this.ticket;
    this.head = `${head.layer}.${head.head}`;
    this.app.writeUrl();
    this.renderEdge(data, head);
    const box = this.root.querySelector(".attn-explanation");
    box.append(el("div", { class: "empty small" }, `Explaining L${head.layer}.H${head.head}…`));
    let qk;
    try {
      qk = await api.headExplanation(this.graphId, data.source, data.target, head.layer, head.head, 10);
    } catch (error) {
      if (ticket === this.ticket) clear(box).append(el("div", { class: "error", "data-testid": "attention-error" }, error.message));
      return;
    }
    if (ticket !== this.ticket) return;
    clear(box).append(...this.explanation(qk));
    this.root.dataset.ready = `${qk.layer}.${qk.head}`;
  }

  explanation(qk) {
    const maxAbs = Math.max(1e-12, ...qk.pairs.map((p) => Math.abs(p.value)));
    const rows = qk.pairs.map((pair) =>
      el(
        "li",
        {
          class: "attn-pair",
          title: `${pair.query.id} × ${pair.key.id}\nvalue ${pair.value} (share of the score)\n` +
            `attention weight without it: ${fmt(qk.attention_weight - pair.weight_effect, 3)}`,
        },
        el("span", { class: "edge-bar" }, el("span", { style: { width: bar(pair.value, maxAbs), background: edgeColor(pair.value) } })),
        el("span", { class: "edge-weight" }, fmt(pair.value, 3)),
        el(
          "span",
          { class: "attn-terms" },
          el("span", { class: "attn-side" }, el("span", { class: "muted" }, "q "), this.term(pair.query)),
          el("span", { class: "attn-side" }, el("span", { class: "muted" }, "k "), this.term(pair.key)),
        ),
        el("span", { class: "edge-tag", title: "how much the key's attention weight drops without this pair" }, `Δw ${fmt(pair.weight_effect, 2)}`),
      ),
    );
    const pinnable = [...new Set(qk.pairs.flatMap((p) => [p.query, p.key]).filter((t) => t.in_graph).map((t) => t.id))];
    const fresh = pinnable.filter((id) => !this.app.isPinned(id));
    const token = (text) => `“${showToken(text)}”`;
    return [
      el("div", { class: "attn-title" }, `L${qk.layer}.H${qk.head}: why query ${token(qk.query_token)} @${qk.query_position} attends to key ${token(qk.key_token)} @${qk.key_position}`),
      el(
        "div",
        { class: "meta" },
        `score ${fmt(qk.score, 3)}${qk.softcap ? ` (capped ${fmt(qk.logit, 3)})` : ""} · attention weight ${fmt(qk.attention_weight, 3)} · ` +
          `${qk.n_query_terms} × ${qk.n_key_terms} term pairs · ${qk.origin}`,
      ),
      el("div", { class: "attn-columns muted" }, `Top pairs: q query-side term @${qk.query_position} × k key-side term @${qk.key_position}; value: share of the score; Δw: attention weight lost without the pair`),
      qk.pairs.length
        ? el("ol", { class: "edge-list attn-pairs", "data-testid": "attention-pairs" }, ...rows)
        : el("div", { class: "empty small" }, "No pair moves this score."),
      el(
        "button",
        {
          class: "small",
          "data-testid": "attention-pin",
          disabled: fresh.length === 0,
          title: "Pin the graph nodes among these terms to the subgraph",
          onclick: (e) => {
            this.app.setPinned([...this.app.state.pinned, ...pinnable]);
            e.currentTarget.disabled = true;
            e.currentTarget.textContent = "Terms pinned";
          },
        },
        fresh.length ? `Pin ${fresh.length} term node${fresh.length === 1 ? "" : "s"}` : "Terms pinned",
      ),
    ];
  }

  term(term) {
    const text = this.name(term.id, term.label);
    return el(
      "span",
      {
        class: `edge-label attn-term${term.in_graph ? " in-graph" : ""}`,
        title: `${text}\n${term.id} (${term.kind}${term.position !== null ? ` @${term.position}` : ""})` +
          (term.in_graph ? "\nclick: select · ctrl/⌘-click: pin" : ""),
        onclick: term.in_graph
          ? (e) => {
              e.stopPropagation();
              if (e.ctrlKey || e.metaKey) this.app.togglePin(term.id);
              else this.app.selectNode(term.id);
            }
          : null,
      },
      text,
    );
  }
}

function bar(value, maxAbs) {
  return `${Math.max(2, (100 * Math.abs(value)) / maxAbs)}%`;
}
