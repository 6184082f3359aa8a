// The selected node: its editable label and its strongest inputs and outputs. Long edge lists
// show their first rows with a button for the rest, so the feature panel below stays in reach
// (the header also links to it).

import { api } from "./api.js";
import { clear, edgeColor, el, fmt, nodeKind, showToken } from "./util.js";

export const COLLAPSED_ROWS = 10;

const KIND_NAMES = {
  feature: "Feature",
  error: "Error",
  embedding: "Token",
  logit: "Logit",
};

export class NodePanel {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.scope = "view";
    this.request = 0;
    this.expanded = { incoming: false, outgoing: false };
    this.shownId = null;
    this.showEmpty();
  }

  showEmpty() {
    clear(this.root).append(
      el(
        "div",
        { class: "empty" },
        "Click a node to see its connections. Ctrl/⌘-click pins it to the subgraph.",
      ),
    );
  }

  async show(nodeId) {
    if (!nodeId) {
      this.showEmpty();
      return;
    }
    const ticket = ++this.request;
    const { graphId, nodeThreshold, edgeThreshold } = this.app.state;
    const inView = this.app.canvas.byId && this.app.canvas.byId.has(nodeId);
    // Pinned or URL-restored nodes can be pruned out of the view: show their unpruned edges.
    if (!inView) this.scope = "full";
    let data;
    try {
      data = await api.node(graphId, nodeId, nodeThreshold, edgeThreshold, this.scope, 100);
    } catch (error) {
      if (ticket !== this.request) return;
      clear(this.root).append(el("div", { class: "error" }, error.message));
      return;
    }
    if (ticket !== this.request) return;
    if (this.shownId !== nodeId) this.expanded = { incoming: false, outgoing: false };
    this.shownId = nodeId;
    this.data = data;
    this.render(data);
  }

  render(data) {
    const node = data.node;
    const kind = nodeKind(node);
    const tokens = this.app.tokens();
    const token = tokens[node.ctx_idx] !== undefined ? showToken(tokens[node.ctx_idx]) : "";
    const meta = [];
    if (kind === "feature" || kind === "error") meta.push(`layer ${node.layer}`);
    meta.push(`pos ${node.ctx_idx}${token ? ` “${token}”` : ""}`);
    if (node.activation !== null && node.activation !== undefined) meta.push(`act ${fmt(node.activation, 3)}`);
    if (node.influence !== null && node.influence !== undefined) meta.push(`infl ${fmt(node.influence, 3)}`);
    if (node.token_prob) meta.push(`p ${fmt(node.token_prob, 3)}`);

    const pinned = this.app.isPinned(node.node_id);
    clear(this.root).append(
      el(
        "div",
        { class: "panel-head" },
        el("span", { class: `badge badge-${kind}` }, KIND_NAMES[kind]),
        el("code", { class: "node-id", "data-testid": "node-id" }, node.node_id),
        kind === "feature" && this.app.state.featuresAvailable
          ? el(
              "a",
              {
                href: "#feature-panel",
                class: "jump",
                title: "Jump to the feature's examples and output tokens",
                "data-testid": "jump-feature",
                onclick: (e) => {
                  e.preventDefault();
                  document.getElementById("feature-panel").scrollIntoView({ block: "start", behavior: "instant" });
                },
              },
              "examples ↓",
            )
          : null,
        el(
          "button",
          {
            class: "small",
            "data-testid": "pin-toggle",
            title: "Pin to the subgraph (or ctrl/⌘-click the node)",
            onclick: () => this.app.togglePin(node.node_id),
          },
          pinned ? "Unpin" : "Pin",
        ),
      ),
      this.labelEditor(node, kind),
      el("div", { class: "meta" }, meta.join(" · ")),
      this.scopeToggle(data),
      this.edgeList("Inputs", data.incoming, data.n_incoming, "incoming"),
      this.edgeList("Outputs", data.outgoing, data.n_outgoing, "outgoing"),
    );
  }

  labelEditor(node, kind) {
    const input = el("input", {
      type: "text",
      class: "label-input",
      "data-testid": "label-input",
      placeholder: kind === "feature" ? "Describe this feature…" : "Label…",
      value: this.app.labelOf(node),
    });
    const shared = el("input", { type: "checkbox", "data-testid": "label-shared" });
    const save = () =>
      this.app.saveLabel(node, input.value.trim(), shared.checked ? "feature" : "node");
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") save();
    });
    return el(
      "div",
      { class: "label-row" },
      input,
      el("button", { class: "small", "data-testid": "label-save", onclick: save }, "Save"),
      kind === "feature"
        ? el("label", { class: "shared", title: "Label every position of this feature" }, shared, "all positions")
        : null,
    );
  }

  scopeToggle(data) {
    const make = (scope, text) =>
      el(
        "button",
        {
          class: `seg${this.scope === scope ? " active" : ""}`,
          disabled: scope === "view" && !(this.app.canvas.byId && this.app.canvas.byId.has(data.node.node_id)),
          onclick: () => {
            this.scope = scope;
            this.show(data.node.node_id);
          },
        },
        text,
      );
    return el(
      "div",
      { class: "segmented" },
      make("view", "Edges in view"),
      make("full", "All edges"),
    );
  }

  /** Where a row's node sits, when its name does not say already: "L3 @12", "@12". */
  rowTag(row, name) {
    const kind = nodeKind(row);
    if (kind === "logit" || row.ctx_idx === undefined || row.ctx_idx === null) return "";
    const at = `@${row.ctx_idx}`;
    if (name.includes(at)) return ""; // the description names it already
    return kind === "feature" || kind === "error" ? `L${row.layer} ${at}` : at;
  }

  edgeList(title, rows, total, direction) {
    const maxAbs = Math.max(1e-12, ...rows.map((r) => Math.abs(r.weight)));
    const list = el("ol", { class: "edge-list", "data-testid": `edges-${direction}` });
    const open = this.expanded[direction];
    const shown = open ? rows : rows.slice(0, COLLAPSED_ROWS);
    for (const row of shown) {
      const width = `${Math.max(2, (100 * Math.abs(row.weight)) / maxAbs)}%`;
      const name = this.app.labelForRow(row);
      const tag = this.rowTag(row, name);
      const heads = this.app.attention ? this.app.attention.rowButton(row, this.data.node, direction) : null;
      list.append(
        el(
          "li",
          {
            class: `edge-row${heads ? " has-heads" : ""}`,
            "data-node-id": row.node_id,
            title: `${name}${tag ? ` (${tag})` : ""}\n${row.node_id}  weight ${row.weight}`,
            onclick: (e) => {
              if (e.ctrlKey || e.metaKey) this.app.togglePin(row.node_id);
              else this.app.selectNode(row.node_id);
            },
          },
          el(
            "span",
            { class: "edge-bar" },
            el("span", { style: { width, background: edgeColor(row.weight) } }),
          ),
          el("span", { class: "edge-weight" }, fmt(row.weight, 3)),
          el("span", { class: "edge-label" }, name),
          el("span", { class: "edge-tag" }, tag),
          heads,
        ),
      );
    }
    const more = total > rows.length ? ` (top ${rows.length} of ${total})` : ` (${total})`;
    const toggle =
      rows.length > COLLAPSED_ROWS
        ? el(
            "button",
            {
              class: "small more",
              "data-testid": `more-${direction}`,
              onclick: () => {
                this.expanded[direction] = !open;
                this.render(this.data);
              },
            },
            open ? "Show fewer" : `Show all ${rows.length}`,
          )
        : null;
    return el(
      "section",
      { class: "edges" },
      el("h3", {}, title, el("span", { class: "count" }, more)),
      rows.length ? list : el("div", { class: "empty small" }, "none"),
      toggle,
    );
  }
}
