// Supernode suggestions: the server groups the view's feature nodes that mean and do the same
// thing (GET api/graphs/ID/supernode-suggestions: decoder similarity, co-activation in the
// served feature store, shared inputs and outputs in the graph; docs/graph-comparison.md) and
// names each group from its labels. Each suggestion can be renamed and have members removed,
// then accepted (it becomes a supernode through the app's own mechanism, saved with the graph's
// annotations like any other) or rejected (remembered in this browser for this graph, and
// restorable). A suggestion whose members already form a supernode shows as accepted.

import { api } from "./api.js";
import { clear, el, fmt, newId, withoutPaths } from "./util.js";

const REJECTED_KEY = "circuit-atlas.rejected-suggestions";

/** The identity of a suggestion: its original members, order-free. */
export function suggestionKey(members) {
  return [...members].sort().join(",");
}

function readRejected(graphId) {
  try {
    const all = JSON.parse(window.localStorage.getItem(REJECTED_KEY) || "{}");
    return new Set(Array.isArray(all[graphId]) ? all[graphId] : []);
  } catch {
    return new Set();
  }
}

function writeRejected(graphId, keys) {
  try {
    const all = JSON.parse(window.localStorage.getItem(REJECTED_KEY) || "{}");
    if (keys.size) all[graphId] = [...keys];
    else delete all[graphId];
    window.localStorage.setItem(REJECTED_KEY, JSON.stringify(all));
  } catch {
    // storage unavailable (private window): rejections last for this page only
  }
}

export class SuggestionPanel {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.graphId = null;
    this.items = null; // [{key, name, members, original, cohesion, evidence, influence}]
    this.showRejected = false;
    this.ticket = 0;
  }

  setGraph(graphId) {
    this.graphId = graphId;
    this.items = null;
    this.error = "";
    this.rejected = readRejected(graphId);
    this.render();
  }

  async suggest() {
    const s = this.app.state;
    const ticket = ++this.ticket;
    this.loading = true;
    this.error = "";
    this.render();
    try {
      const data = await api.suggestions(this.graphId, s.nodeThreshold, s.edgeThreshold);
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

  /** The saved supernode with exactly these members, if any. */
  acceptedAs(members) {
    const key = suggestionKey(members);
    for (const [sid, sn] of this.app.state.supernodes) if (suggestionKey(sn.members) === key) return sid;
    return null;
  }

  async accept(item) {
    const members = [...item.members];
    const name = item.name.trim() || "group";
    const pins = new Set(this.app.state.pinned);
    members.forEach((m) => pins.add(m));
    this.app.state.pinned = [...pins];
    await this.app.saveSupernode(newId("sn"), { name, members });
    this.render();
  }

  reject(item, rejected = true) {
    if (rejected) this.rejected.add(item.key);
    else this.rejected.delete(item.key);
    writeRejected(this.graphId, this.rejected);
    this.render();
  }

  memberName(id) {
    const node = this.app.canvas.byId && this.app.canvas.byId.get(id);
    return node ? this.app.displayName(node) : id;
  }

  render() {
    const head = el(
      "div",
      { class: "panel-head" },
      el("h2", {}, "Supernode suggestions"),
      el("button", {
        "data-testid": "suggest-supernodes",
        disabled: !this.graphId || this.loading,
        title: "Group the features of this view that mean and do the same thing",
        onclick: () => this.suggest(),
      }, this.items ? "Suggest again" : "Suggest"),
    );
    const body = [];
    if (this.loading) body.push(el("div", { class: "muted small" }, "Grouping features…"));
    else if (this.error) body.push(el("div", { class: "error small", "data-testid": "suggestions-error" }, withoutPaths(this.error)));
    else if (!this.items) {
      body.push(el("div", { class: "muted small" }, "Groups of this view's features by decoder similarity, co-activation in the feature store and shared inputs and outputs."));
    } else {
      const open = this.items.filter((item) => !this.rejected.has(item.key));
      const hidden = this.items.filter((item) => this.rejected.has(item.key));
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
    const acceptedSid = this.acceptedAs(item.members);
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
