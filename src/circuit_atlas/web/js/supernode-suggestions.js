// Supernode suggestions: the server groups the view's feature nodes that mean and do the same
// thing (GET api/graphs/ID/supernode-suggestions: decoder similarity, co-activation in the
// served feature store, shared inputs and outputs in the graph; docs/graph-comparison.md) and
// names each group from its labels. Each suggestion can be renamed and have members removed,
// then accepted (it becomes a supernode through the app's own mechanism, saved with the graph's
// annotations like any other) or rejected (restorable). This browser remembers, per graph, which
// suggestions were rejected and which supernode each accepted one became, so they stay handled
// when the graph is opened again; a suggestion whose members already form a supernode, or whose
// supernode still exists, shows as accepted.

import { api } from "./api.js";
import { clear, el, fmt, newId, positionTag, withoutPaths } from "./util.js";

const STORAGE_KEY = "circuit-atlas.supernode-suggestions";
const DEFAULT_MIN_SIMILARITY = 0.6;

/** The identity of a suggestion: its original members, order-free. */
export function suggestionKey(members) {
  return [...members].sort().join(",");
}

/** What this browser remembers of one graph's suggestions: {rejected: [key], accepted: {key: sid}}. */
function readHandled(graphId) {
  try {
    const mine = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "{}")[graphId] || {};
    return {
      rejected: new Set(Array.isArray(mine.rejected) ? mine.rejected : []),
      accepted: new Map(Object.entries(mine.accepted && typeof mine.accepted === "object" ? mine.accepted : {})),
    };
  } catch {
    return { rejected: new Set(), accepted: new Map() };
  }
}

function writeHandled(graphId, handled) {
  try {
    const all = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "{}");
    all[graphId] = { rejected: [...handled.rejected], accepted: Object.fromEntries(handled.accepted) };
    window.localStorage.setItem(STORAGE_KEY, JSON.stringify(all));
  } catch {
    // storage unavailable (private window): this lasts for the page only
  }
}

export class SuggestionPanel {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.graphId = null;
    this.items = null; // [{key, name, members, original, cohesion, evidence, influence}]
    this.showRejected = false;
    this.minSimilarity = DEFAULT_MIN_SIMILARITY;
    this.ticket = 0;
  }

  setGraph(graphId) {
    this.graphId = graphId;
    const summary = this.app.state.graphs.find((g) => g.id === graphId);
    this.available = !summary || summary.has_native; // grouping needs the native graph
    this.items = null;
    this.error = "";
    this.handled = readHandled(graphId);
    this.render();
  }

  async suggest() {
    const s = this.app.state;
    const ticket = ++this.ticket;
    this.loading = true;
    this.error = "";
    this.render();
    try {
      const data = await api.suggestions(this.graphId, s.nodeThreshold, s.edgeThreshold, this.minSimilarity);
      if (ticket !== this.ticket) return;
      this.evidence = data.evidence_used;
      this.items = data.groups.map((g) => ({
        key: suggestionKey(g.members),
        name: g.name || "group",
        members: [...g.members],
        original: g.members,
        cohesion: g.cohesion,
        evidence: g.evidence,
        influence: g.influence,
      }));
    } catch (error) {
      if (ticket !== this.ticket) return;
      this.error = error.message;
    }
    this.loading = false;
    this.render();
  }

  /** The supernode this suggestion became (still existing), or one with exactly its members. */
  acceptedAs(item) {
    const sid = this.handled.accepted.get(item.key);
    if (sid && this.app.state.supernodes.has(sid)) return sid;
    const key = suggestionKey(item.members);
    for (const [id, sn] of this.app.state.supernodes) if (suggestionKey(sn.members) === key) return id;
    return null;
  }

  async accept(item) {
    const members = [...item.members];
    const name = item.name.trim() || "group";
    const pins = new Set(this.app.state.pinned);
    members.forEach((m) => pins.add(m));
    this.app.state.pinned = [...pins];
    const sid = newId("sn");
    this.handled.accepted.set(item.key, sid);
    writeHandled(this.graphId, this.handled);
    await this.app.saveSupernode(sid, { name, members });
    this.render();
  }

  reject(item, rejected = true) {
    if (rejected) this.handled.rejected.add(item.key);
    else this.handled.rejected.delete(item.key);
    writeHandled(this.graphId, this.handled);
    this.render();
  }

  memberName(id) {
    const node = this.app.canvas.byId && this.app.canvas.byId.get(id);
    return node ? `${this.app.displayName(node)} ${positionTag(node)}`.trim() : id;
  }

  render() {
    const head = el(
      "div",
      { class: "panel-head" },
      el("h2", {}, "Supernode suggestions"),
      el("button", {
        "data-testid": "suggest-supernodes",
        disabled: !this.graphId || this.loading || !this.available,
        title: "Group the features of this view that mean and do the same thing",
        onclick: () => this.suggest(),
      }, this.items ? "Suggest again" : "Suggest"),
    );
    const similarity = el("input", {
      type: "number", min: "0", max: "1", step: "0.05", value: this.minSimilarity, class: "small",
      "data-testid": "suggest-similarity", "aria-label": "Minimum similarity",
      title: "How alike features must be to join a group (lower: bigger groups)",
    });
    similarity.addEventListener("change", () => {
      const value = Number(similarity.value);
      if (Number.isFinite(value) && value >= 0 && value <= 1) this.minSimilarity = value;
      else similarity.value = this.minSimilarity;
    });
    const body = this.available ? [el("label", { class: "muted small suggest-settings" }, "min. similarity ", similarity)] : [];
    if (!this.available) {
      body.push(el("div", { class: "muted small", "data-testid": "suggestions-unavailable" },
        "Suggestions need the native graph (a bundle written by circuit-atlas trace); this graph is a graph-JSON file."));
    } else if (this.loading) body.push(el("div", { class: "muted small" }, "Grouping features…"));
    else if (this.error) body.push(el("div", { class: "error small", "data-testid": "suggestions-error" }, withoutPaths(this.error)));
    else if (!this.items) {
      body.push(el("div", { class: "muted small" }, "Groups of this view's features by decoder similarity, co-activation in the feature store and shared inputs and outputs."));
    } else {
      const open = this.items.filter((item) => !this.handled.rejected.has(item.key));
      const hidden = this.items.filter((item) => this.handled.rejected.has(item.key));
      body.push(el("div", { class: "muted small" },
        `${this.items.length} group${this.items.length === 1 ? "" : "s"} · evidence: ${(this.evidence || []).join(", ") || "none"}`));
      if (!this.items.length) body.push(el("div", { class: "muted small" }, "No features group together at this threshold."));
      open.forEach((item) => body.push(this.card(item, false)));
      if (hidden.length) {
        body.push(el("button", {
          class: "link small", "data-testid": "show-rejected",
          onclick: () => { this.showRejected = !this.showRejected; this.render(); },
        }, `${this.showRejected ? "hide" : "show"} ${hidden.length} rejected`));
        if (this.showRejected) hidden.forEach((item) => body.push(this.card(item, true)));
      }
    }
    clear(this.root).append(head, ...body);
  }

  card(item, rejected) {
    const acceptedSid = this.acceptedAs(item);
    const name = el("input", {
      value: item.name, "data-testid": "suggestion-name", "aria-label": "Suggested supernode name",
      disabled: Boolean(acceptedSid) || rejected,
    });
    name.addEventListener("input", () => (item.name = name.value));
    const members = item.members.map((id) =>
      el("li", { class: "suggestion-member", "data-node-id": id },
        el("button", { class: "link", title: id, onclick: () => this.app.selectNode(id) }, this.memberName(id)),
        acceptedSid || rejected ? null : el("button", {
          class: "remove", "data-testid": "suggestion-remove-member", title: "Leave this feature out of the group",
          onclick: () => { item.members = item.members.filter((m) => m !== id); this.render(); },
        }, "×")));
    const evidence = Object.entries(item.evidence || {}).map(([kind, value]) => `${kind} ${fmt(value, 2)}`).join(" · ");
    let actions;
    if (rejected) {
      actions = [el("button", { "data-testid": "suggestion-restore", onclick: () => this.reject(item, false) }, "Restore")];
    } else if (acceptedSid) {
      actions = [el("span", { class: "accepted", "data-testid": "suggestion-accepted" }, "✓ accepted as a supernode")];
    } else {
      actions = [
        el("button", {
          class: "primary", "data-testid": "suggestion-accept", disabled: item.members.length < 2,
          title: item.members.length < 2 ? "A supernode needs two members" : "Make this group a supernode (saved with the annotations)",
          onclick: () => this.accept(item),
        }, "Accept"),
        el("button", { "data-testid": "suggestion-reject", onclick: () => this.reject(item) }, "Reject"),
      ];
    }
    return el(
      "div",
      { class: `suggestion${acceptedSid ? " is-accepted" : ""}${rejected ? " is-rejected" : ""}`, "data-testid": "suggestion", "data-key": item.key },
      name,
      el("div", { class: "muted small" }, `cohesion ${fmt(item.cohesion, 2)}${evidence ? ` (${evidence})` : ""} · influence ${fmt(item.influence, 3)}`),
      el("ul", { class: "suggestion-members" }, ...members),
      el("div", { class: "suggestion-actions" }, ...actions),
    );
  }
}
