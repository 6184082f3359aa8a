// The Steer panel: ablate, scale or set the pinned feature nodes and supernodes on the model the
// server holds, and compare the next-token distribution and the generated text before / after.
// It is a drawer over the right of the window, opened from the subgraph toolbar. When the server
// holds no model (or one the graph was not traced with) it says why and how to fix it.

import { api } from "./api.js";
import { clear, el, fmt, nodeKind, showToken } from "./util.js";

const OPS = [
  ["ablate", "ablate", "Set the activation to 0"],
  ["scale", "scale ×", "Multiply the activation by a factor"],
  ["set", "set to", "Set the activation to a value"],
];
const POSITIONS = [
  ["node", "its position", "Only at the node's own token position"],
  ["from_node", "from it on", "From the node's position to the end, generated tokens included"],
  ["all", "all positions", "At every position, generated tokens included"],
];
const DEFAULT_VALUES = { scale: -2, set: 10 };

export class SteerPanel {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.status = null; // the server's answer to "can this graph be steered?"
    this.rows = new Map(); // item id -> {enabled, op, value: {scale, set}, positions}
    this.options = { mode: "free", max_new_tokens: 12, temperature: 0, top_p: 1, seed: 0 };
    this.result = null;
    this.error = "";
    this.running = false;
    this.itemsKey = "";
    this.root.hidden = true;
  }

  get isOpen() {
    return !this.root.hidden;
  }

  async setGraph(graphId) {
    this.status = null;
    this.result = null;
    this.error = "";
    try {
      this.status = await api.steerStatus(graphId);
    } catch (error) {
      this.status = { available: false, reason: error.message };
    }
    if (this.app.state.graphId === graphId && this.isOpen) this.render();
  }

  open() {
    this.root.hidden = false;
    this.render();
    this.app.subgraph.drawToolbar();
  }

  close() {
    this.root.hidden = true;
    this.app.subgraph.drawToolbar();
  }

  toggle() {
    if (this.isOpen) this.close();
    else this.open();
  }

  /** Called whenever pins or supernodes may have changed: re-render if the row set differs. */
  update() {
    if (!this.isOpen) return;
    const key = this.steerableItems().map((i) => `${i.id}:${i.featureIds.join(",")}:${i.name}`).join("|");
    if (key !== this.itemsKey) this.render();
  }

  // -- rows ----------------------------------------------------------------------------------
  /** Pinned nodes and supernodes, each with its feature members (only features can be steered). */
  steerableItems() {
    const items = this.app.subgraph.items();
    return items.map((item) => {
      const features = item.members.filter((n) => nodeKind(n) === "feature");
      const name = item.supernode
        ? item.name || "(unnamed group)"
        : item.node
          ? this.app.displayName(item.node)
          : item.id;
      return { ...item, name, featureIds: features.map((n) => n.node_id), features };
    });
  }

  rowState(id) {
    if (!this.rows.has(id)) {
      this.rows.set(id, { enabled: true, op: "ablate", value: { ...DEFAULT_VALUES }, positions: "node" });
    }
    return this.rows.get(id);
  }

  where(item) {
    const tokens = this.app.tokens();
    if (!item.supernode && item.features.length === 1) {
      const node = item.features[0];
      const token = tokens[node.ctx_idx];
      return `L${node.layer} · pos ${node.ctx_idx}${token !== undefined ? ` “${showToken(token)}”` : ""}`;
    }
    const n = item.features.length;
    return `${n} feature${n === 1 ? "" : "s"}`;
  }

  rowView(item) {
    const state = this.rowState(item.id);
    const disabled = !this.steerable();
    const value = el("input", {
      type: "number",
      step: "any",
      class: "steer-value",
      "data-testid": "steer-value",
      "aria-label": "value",
      value: state.op === "ablate" ? "" : String(state.value[state.op]),
      placeholder: state.op === "ablate" ? "0" : "",
      disabled: disabled || state.op === "ablate",
      oninput: (e) => {
        if (state.op !== "ablate") state.value[state.op] = e.target.value;
      },
    });
    const op = el(
      "select",
      {
        "data-testid": "steer-op",
        "aria-label": "operation",
        disabled,
        onchange: (e) => {
          state.op = e.target.value;
          value.disabled = state.op === "ablate";
          value.value = state.op === "ablate" ? "" : String(state.value[state.op]);
          value.placeholder = state.op === "ablate" ? "0" : "";
        },
      },
      ...OPS.map(([v, text, title]) => el("option", { value: v, title, selected: v === state.op }, text)),
    );
    const positions = el(
      "select",
      {
        "data-testid": "steer-positions",
        "aria-label": "positions",
        disabled,
        onchange: (e) => {
          state.positions = e.target.value;
        },
      },
      ...POSITIONS.map(([v, text, title]) =>
        el("option", { value: v, title, selected: v === state.positions }, text),
      ),
    );
    const check = el("input", {
      type: "checkbox",
      checked: state.enabled,
      disabled,
      "data-testid": "steer-enabled",
      onchange: (e) => {
        state.enabled = e.target.checked;
      },
    });
    const skipped = item.memberIds.length - item.featureIds.length;
    return el(
      "div",
      { class: `steer-row${item.supernode ? " supernode" : ""}`, "data-item-id": item.id, "data-testid": "steer-row" },
      el(
        "label",
        { class: "steer-name", title: item.featureIds.join(", ") },
        check,
        el("span", { class: "steer-title" }, item.name),
        el("span", { class: "steer-where" }, this.where(item)),
      ),
      el("div", { class: "steer-controls" }, op, value, positions),
      skipped
        ? el("div", { class: "steer-note" }, `${skipped} non-feature member${skipped === 1 ? "" : "s"} ignored`)
        : null,
    );
  }

  steerable() {
    return Boolean(this.status && this.status.available);
  }

  // -- rendering -----------------------------------------------------------------------------
  render() {
    const items = this.steerableItems();
    this.itemsKey = items.map((i) => `${i.id}:${i.featureIds.join(",")}:${i.name}`).join("|");
    const usable = items.filter((i) => i.featureIds.length);
    const others = items.length - usable.length;
    const model = this.status && this.status.model;
    const parts = [
      el(
        "header",
        { class: "steer-head" },
        el("h2", {}, "Steer"),
        model ? el("span", { class: "steer-model", title: `transcoders: ${model.transcoders}` }, model.name) : null,
        el("button", { class: "small close", title: "Close", "data-testid": "steer-close", onclick: () => this.close() }, "×"),
      ),
      this.status === null ? el("div", { class: "empty small" }, "Checking the server…") : null,
      this.status && !this.status.available ? this.unavailableView(this.status.reason || "") : null,
      this.warningView(),
      el(
        "section",
        { class: "steer-rows", "data-testid": "steer-rows" },
        usable.length
          ? usable.map((item) => this.rowView(item))
          : el("div", { class: "empty small" }, "Pin feature nodes (ctrl/⌘-click) or group them into supernodes to steer them."),
        others
          ? el("div", { class: "steer-note" }, `${others} pinned node${others === 1 ? " is" : "s are"} not a feature (error, token or logit) and cannot be steered.`)
          : null,
      ),
      this.optionsView(),
      this.actionsView(usable.length > 0),
      this.resultView(),
    ];
    clear(this.root).append(...parts.filter(Boolean)); // DOM append would print null as "null"
  }

  /** The server's reason, capitalised, with the command to run set as code. */
  unavailableView(reason) {
    const text = reason.charAt(0).toUpperCase() + reason.slice(1);
    const at = text.indexOf("circuit-atlas serve");
    return el(
      "div",
      { class: "steer-unavailable", "data-testid": "steer-unavailable" },
      at < 0 ? text : [text.slice(0, at), el("code", {}, text.slice(at))],
    );
  }

  /** The server's caution for a steerable graph it cannot tie to its model (a loose JSON file
   *  that does not name the loaded transcoders); the latest result's warning wins. */
  warningView() {
    const warning = (this.result && this.result.warning) || (this.status && this.status.available && this.status.warning);
    if (!warning) return null;
    const text = warning.charAt(0).toUpperCase() + warning.slice(1);
    return el("div", { class: "steer-unavailable steer-warning", "data-testid": "steer-warning", role: "note" }, `Warning: ${text}.`);
  }

  optionsView() {
    const o = this.options;
    const disabled = !this.steerable();
    const modeButton = (mode, text, title) =>
      el(
        "button",
        {
          class: `seg${o.mode === mode ? " active" : ""}`,
          "data-testid": `steer-mode-${mode}`,
          title,
          disabled,
          onclick: () => {
            o.mode = mode;
            this.render();
          },
        },
        text,
      );
    const number = (key, label, attrs, title) =>
      el(
        "label",
        { class: "steer-option", title },
        label,
        el("input", {
          type: "number",
          value: String(o[key]),
          "data-testid": `steer-${key.replace(/_/g, "-")}`,
          disabled,
          oninput: (e) => {
            o[key] = e.target.value;
          },
          ...attrs,
        }),
      );
    const maxTokens = (this.status && this.status.max_new_tokens) || 64;
    return el(
      "section",
      { class: "steer-options" },
      el(
        "div",
        { class: "steer-option-row" },
        el("span", { class: "muted" }, "Mode"),
        el(
          "span",
          { class: "segmented" },
          modeButton("free", "free", "The real model with the features clamped; everything downstream is recomputed"),
          modeButton("constrained", "constrained", "Attention, norms and MLP outputs frozen: effects travel only along the graph's direct paths"),
        ),
      ),
      el(
        "div",
        { class: "steer-option-row" },
        number("max_new_tokens", "Tokens", { min: 0, max: maxTokens, step: 1 }, `Tokens to generate (0–${maxTokens}); generation always runs the free model`),
        number("temperature", "Temp", { min: 0, step: 0.1 }, "Sampling temperature (0: greedy)"),
        number("top_p", "Top-p", { min: 0.01, max: 1, step: 0.05 }, "Nucleus sampling mass"),
        number("seed", "Seed", { min: 0, step: 1 }, "Same seed, same samples"),
      ),
    );
  }

  actionsView(hasRows) {
    const run = el(
      "button",
      {
        class: "primary",
        "data-testid": "steer-run",
        disabled: !this.steerable() || !hasRows || this.running,
        onclick: () => this.run(),
      },
      this.running ? "Running…" : "Run",
    );
    return el(
      "div",
      { class: "steer-actions" },
      run,
      el("span", { class: `steer-status${this.error ? " error" : ""}`, "data-testid": "steer-status" }, this.error),
    );
  }

  // -- running -------------------------------------------------------------------------------
  buildRequest() {
    const rows = [];
    for (const item of this.steerableItems()) {
      const state = this.rows.get(item.id);
      if (!item.featureIds.length || !state || !state.enabled) continue;
      const row = { nodes: item.featureIds, op: state.op, positions: state.positions, name: item.name };
      if (state.op !== "ablate") {
        const value = Number(state.value[state.op]);
        if (state.value[state.op] === "" || !Number.isFinite(value)) {
          throw new Error(`${item.name}: enter a number to ${state.op === "set" ? "set the activation to" : "scale by"}`);
        }
        row.value = value;
      }
      rows.push(row);
    }
    if (!rows.length) throw new Error("Tick at least one row to steer.");
    const o = this.options;
    const body = { interventions: rows, mode: o.mode };
    for (const key of ["max_new_tokens", "temperature", "top_p", "seed"]) {
      const value = Number(o[key]);
      if (o[key] === "" || !Number.isFinite(value)) throw new Error(`${key.replace(/_/g, " ")} must be a number`);
      body[key] = value;
    }
    return body;
  }

  async run() {
    let body;
    try {
      body = this.buildRequest();
    } catch (error) {
      this.error = error.message;
      this.render();
      return;
    }
    const graphId = this.app.state.graphId;
    this.running = true;
    this.error = "";
    this.render();
    try {
      const result = await api.steer(graphId, body);
      if (graphId === this.app.state.graphId) this.result = result;
    } catch (error) {
      this.error = error.message;
    } finally {
      this.running = false;
      if (this.isOpen) this.render();
    }
  }

  // -- results -------------------------------------------------------------------------------
  resultView() {
    const r = this.result;
    if (!r) return null;
    const iv = r.intervention;
    const before = new Map(iv.top_before.map((t) => [t.token_id, t.prob]));
    const maxProb = Math.max(1e-9, ...iv.top_before.map((t) => t.prob || 0), ...iv.top_after.map((t) => t.prob || 0));
    const column = (title, tokens, compare) =>
      el(
        "div",
        { class: "steer-col", "data-testid": `steer-top-${title.toLowerCase()}` },
        el("h4", {}, title),
        ...tokens.map((t) => {
          const prob = t.prob ?? 0;
          let cls = "";
          if (compare) {
            const old = before.get(t.token_id);
            cls = old === undefined || prob > old + 1e-6 ? "up" : prob < old - 1e-6 ? "down" : "";
          }
          return el(
            "div",
            { class: `tok-row ${cls}`, title: `token ${t.token_id} · logit ${fmt(t.logit, 3)} · p ${prob}` },
            el("span", { class: "tok-text" }, showToken(t.token)),
            el("span", { class: "tok-bar" }, el("span", { style: { width: `${Math.max(1, (100 * prob) / maxProb)}%` } })),
            el("span", { class: "tok-prob" }, fmt(prob, 3)),
          );
        }),
      );
    const gen = r.generation;
    const genRow = (label, side, testid) =>
      el(
        "div",
        { class: "gen-row", "data-testid": testid },
        el("span", { class: "gen-label" }, label),
        el("span", { class: "gen-text" }, side.text ? showToken(side.text) : el("span", { class: "muted" }, "(nothing)")),
      );
    const timing = r.timing ? ` · ${fmt(r.timing.run_s, 2)} s` : "";
    return el(
      "section",
      { class: "steer-results", "data-testid": "steer-results" },
      el("h3", {}, "Next token", el("span", { class: "count" }, `${iv.mode} mode`)),
      el("div", { class: "steer-compare" }, column("Before", iv.top_before, false), column("After", iv.top_after, true)),
      gen
        ? el(
            "div",
            { class: "steer-gen" },
            el("h3", {}, "Generated", el("span", { class: "count" }, `${gen.default.token_ids.length} tokens · free model`)),
            el("div", { class: "gen-prompt" }, showToken(gen.prompt)),
            genRow("Before", gen.default, "steer-gen-before"),
            genRow("After", gen.steered, "steer-gen-after"),
          )
        : null,
      el(
        "div",
        { class: "steer-foot muted" },
        `${iv.n_changed_features} feature activation${iv.n_changed_features === 1 ? "" : "s"} changed${timing}`,
      ),
    );
  }
}
