// The explorer's controller: owns the state (graph, thresholds, pins, supernodes, labels),
// talks to the API, keeps the URL in sync, and tells the views to redraw.

import { api } from "./api.js";
import { AttentionPanel } from "./attention-panel.js";
import { ComparePicker, DiffView, readDiffState } from "./diff-view.js";
import { FeaturePanel } from "./feature-panel.js";
import { GraphBrowser } from "./graph-browser.js";
import { GraphCanvas } from "./graph-canvas.js";
import { NodePanel } from "./node-panel.js";
import { SteerPanel } from "./steer-panel.js";
import { SubgraphPane } from "./subgraph.js";
import { SuggestionPanel } from "./supernode-suggestions.js";
import { readUrlState, writeUrlState } from "./urlstate.js";
import { debounce, describeNode, el, fmt, newId, nodeKind, showToken, withoutPaths } from "./util.js";

const $ = (sel) => document.querySelector(sel);

class App {
  constructor() {
    this.state = {
      graphs: [],
      graphId: null,
      doc: null,
      nodeThreshold: null,
      edgeThreshold: null,
      clickedId: null,
      pinned: [],
      supernodes: new Map(),
      annotations: { node_labels: {}, feature_labels: {}, supernodes: {}, pinned_sets: {}, revision: 0 },
      featuresAvailable: false,
      search: "",
      matches: [],
    };
    this.canvas = new GraphCanvas($("#graph"), {
      onClick: (id, mods) => this.onNodeClick(id, mods),
      labelOf: (node) => this.displayName(node),
      // Drawn edges the attention panel can explain are clickable (attention-panel.js).
      edgeAction: (link) => this.attention.edgeAction(link),
      onEdgeClick: (link) => this.attention.openEdge(link.source, link.target),
      edgeActions: () => this.attention.available,
    });
    this.nodePanel = new NodePanel($("#node-panel"), this);
    this.attention = new AttentionPanel($("#attention-panel"), this);
    this.featurePanel = new FeaturePanel($("#feature-panel"), this);
    this.subgraph = new SubgraphPane($("#subgraph"), this);
    this.steer = new SteerPanel($("#steer"), this);
    this.suggestions = new SuggestionPanel($("#suggestions"), this);
    this.diff = new DiffView($("#diff"), this);
    this.browser = new GraphBrowser($("#browser"), { picker: new ComparePicker((a, b) => this.diff.open(a, b)) });
    this.reloadView = debounce(() => this.loadView(), 200);
    this.bindControls();
    window.__atlas = this; // lets tests and curious users inspect the state
  }

  // -- helpers used by the views -------------------------------------------------------------
  tokens() {
    return (this.state.doc && this.state.doc.metadata.prompt_tokens) || [];
  }

  schemaVersion() {
    return this.state.doc ? this.state.doc.metadata.schema_version ?? 0 : 0;
  }

  labelOf(node) {
    if (!node) return "";
    const ann = this.state.annotations;
    const own = ann.node_labels[node.node_id];
    if (own) return own;
    if (nodeKind(node) === "feature") {
      const shared = ann.feature_labels[String(node.feature)];
      if (shared) return shared;
    }
    return node.clerp || "";
  }

  /** The label, or a short description when the node has none. */
  displayName(node) {
    return this.labelOf(node) || describeNode(node, this.tokens(), this.schemaVersion());
  }

  labelForRow(row) {
    const node = this.canvas.byId && this.canvas.byId.get(row.node_id);
    if (node) return this.displayName(node);
    return row.label || describeNode(row, this.tokens(), this.schemaVersion());
  }

  isPinned(id) {
    return this.state.pinned.includes(id);
  }

  // -- loading -------------------------------------------------------------------------------
  async init() {
    const url = readUrlState();
    let listing;
    try {
      listing = await api.graphs();
    } catch (error) {
      this.setStatus(`Cannot list graphs: ${error.message}`, true);
      return;
    }
    this.state.graphs = listing.graphs;
    this.state.featuresAvailable = listing.features;
    const select = $("#graph-select");
    select.replaceChildren(
      ...listing.graphs.map((g) =>
        el("option", { value: g.id }, `${g.id} — ${showToken(g.prompt).slice(0, 80)}`),
      ),
    );
    const diff = readDiffState();
    if (diff) {
      await this.diff.open(diff.a, diff.b, diff);
      return;
    }
    if (!url.graph) {
      this.showBrowser();
      return;
    }
    if (!listing.graphs.some((g) => g.id === url.graph)) {
      this.showBrowser(this.unknownGraphText(url.graph));
      return;
    }
    await this.openGraph(url.graph, url);
  }

  unknownGraphText(graphId) {
    const n = this.state.graphs.length;
    return (
      `There is no graph “${graphId}” in this data folder` +
      (n ? ` — choose one of its ${n} graph${n === 1 ? "" : "s"} below.` : ".")
    );
  }

  /** The landing page: every graph of the folder (graph-browser.js), with an optional notice. */
  showBrowser(notice = "") {
    document.body.dataset.mode = "browser";
    document.title = "circuit-atlas · graphs";
    this.state.graphId = null;
    this.state.doc = null;
    this.browser.show(this.state.graphs, notice);
    const n = this.state.graphs.length;
    this.setStatus(notice ? "Unknown graph" : `${n} graph${n === 1 ? "" : "s"}`, Boolean(notice));
    document.body.dataset.ready = "1";
  }

  /** A graph file may carry a saved view (qParams, docs/graph-json.md §4): use it when the URL has none. */
  adoptSavedView(q) {
    if (!q) return;
    if (Array.isArray(q.pinnedIds) && q.pinnedIds.length) this.state.pinned = [...q.pinnedIds];
    if (Array.isArray(q.supernodes) && q.supernodes.length) {
      const groups = q.supernodes
        .filter((g) => Array.isArray(g) && g.length >= 2)
        .map(([name, ...members]) => ({ name: String(name), members }));
      this.syncSupernodes(groups);
    }
    if (q.clickedId && !String(q.clickedId).startsWith("supernode-")) this.state.clickedId = q.clickedId;
  }

  async openGraph(graphId, url = {}) {
    const summary = this.state.graphs.find((g) => g.id === graphId);
    if (!summary) {
      this.showBrowser(this.unknownGraphText(graphId));
      return;
    }
    document.body.dataset.mode = "graph";
    document.title = `${showToken(summary.prompt || graphId).slice(0, 60)} · circuit-atlas`;
    const s = this.state;
    s.graphId = graphId;
    $("#graph-select").value = graphId;
    $("#graph-select").title = $("#graph-select").selectedOptions[0]?.textContent || "";
    s.nodeThreshold = url.nodeThreshold ?? summary.node_threshold;
    s.edgeThreshold = url.edgeThreshold ?? summary.edge_threshold;
    s.clickedId = url.clickedId || null;
    s.pinned = url.pinnedIds || [];
    $("#node-threshold").value = s.nodeThreshold;
    $("#edge-threshold").value = s.edgeThreshold;
    $("#edge-threshold").disabled = !summary.has_native;
    $("#edge-threshold").title = summary.has_native ? "" : "JSON-only graph: edges cannot be re-pruned";
    $("#compare-open").disabled = !summary.has_native;
    this.showThresholds();
    this.steer.setGraph(graphId);
    this.suggestions.setGraph(graphId);
    this.attention.setGraph(graphId, url.attention);
    try {
      s.annotations = await api.annotations(graphId);
    } catch (error) {
      this.setStatus(`Annotations unavailable: ${error.message}`, true);
    }
    this.syncSupernodes(url.supernodes || []);
    const hasViewState = Boolean(url.pinnedIds?.length || url.supernodes?.length || url.clickedId);
    await this.loadView();
    if (!hasViewState && this.state.doc) {
      this.adoptSavedView(this.state.doc.qParams);
      this.redraw();
      this.nodePanel.show(this.state.clickedId);
    }
  }

  /** Supernodes come from the saved annotations; URL groups not saved there are added. */
  syncSupernodes(urlGroups) {
    const saved = this.state.annotations.supernodes || {};
    const map = new Map(Object.entries(saved).map(([id, sn]) => [id, { ...sn }]));
    const sameMembers = (a, b) => a.length === b.length && a.every((m) => b.includes(m));
    for (const group of urlGroups) {
      const match = [...map.values()].some((sn) => sameMembers(sn.members, group.members));
      if (!match) map.set(newId("sn"), { name: group.name, members: group.members });
    }
    this.state.supernodes = map;
  }

  async loadView() {
    const s = this.state;
    const ticket = (this._viewTicket = (this._viewTicket || 0) + 1);
    this.setStatus("Loading…");
    let doc;
    try {
      doc = await api.graph(s.graphId, s.nodeThreshold, s.edgeThreshold);
    } catch (error) {
      if (ticket !== this._viewTicket) return;
      if (error.status === 404) this.showBrowser(this.unknownGraphText(s.graphId));
      else this.setStatus(error.message, true);
      return;
    }
    if (ticket !== this._viewTicket) return; // a newer slider position is already on its way
    performance.mark("atlas-view-loaded");
    s.doc = doc;
    this.canvas.setGraph(s.doc);
    performance.mark("atlas-graph-set");
    this.attention.viewLoaded(s.graphId);
    const view = s.doc.view || {};
    document.body.dataset.nodeCount = String(view.n_nodes ?? s.doc.nodes.length);
    document.body.dataset.linkCount = String(view.n_links ?? s.doc.links.length);
    $("#prompt").textContent = s.doc.metadata.prompt || "";
    $("#prompt").title = s.doc.metadata.prompt || ""; // the bar cuts long prompts with "…"
    this.setStatus(
      `${view.n_nodes} nodes · ${view.n_links} edges · ${view.source === "native" ? "pruned from the native graph" : "filtered JSON"}`,
    );
    this.applySearch();
    this.redraw();
    this.nodePanel.show(s.clickedId);
    this.featurePanel.show(s.clickedId ? this.canvas.byId.get(s.clickedId) : null);
    document.body.dataset.ready = "1";
  }

  // -- state changes -------------------------------------------------------------------------
  redraw() {
    const grouped = new Set();
    for (const sn of this.state.supernodes.values()) sn.members.forEach((m) => grouped.add(m));
    this.canvas.setDecorations({
      pinned: new Set(this.state.pinned),
      clicked: this.state.clickedId,
      matches: new Set(this.state.matches),
      grouped,
    });
    this.subgraph.update();
    this.writeUrl();
  }

  writeUrl() {
    const s = this.state;
    writeUrlState({
      graph: s.graphId,
      nodeThreshold: s.nodeThreshold,
      edgeThreshold: s.edgeThreshold,
      pinnedIds: s.pinned,
      supernodes: [...s.supernodes.values()],
      clickedId: s.clickedId,
      attention: this.attention ? this.attention.urlState() : null,
    });
  }

  onNodeClick(id, { pin }) {
    if (!id) {
      if (!pin) this.selectNode(null);
      return;
    }
    if (pin) this.togglePin(id);
    else this.selectNode(id === this.state.clickedId ? null : id);
  }

  selectNode(id) {
    this.state.clickedId = id;
    this.canvas.reveal(id);
    this.nodePanel.scope = "view";
    this.nodePanel.show(id);
    const node = id && this.canvas.byId ? this.canvas.byId.get(id) : null;
    this.featurePanel.show(node);
    this.redraw();
  }

  togglePin(id) {
    const pinned = this.state.pinned;
    this.setPinned(pinned.includes(id) ? pinned.filter((p) => p !== id) : [...pinned, id]);
  }

  setPinned(ids) {
    this.state.pinned = [...new Set(ids)];
    this.redraw();
    if (this.state.clickedId) this.nodePanel.show(this.state.clickedId);
  }

  async patch(patch) {
    try {
      this.state.annotations = await api.patchAnnotations(this.state.graphId, patch);
      this.flash("Saved");
    } catch (error) {
      this.setStatus(`Not saved: ${error.message}`, true);
      throw error;
    }
  }

  async saveLabel(node, label, scope) {
    const patch =
      scope === "feature"
        ? { feature_labels: { [String(node.feature)]: label || null } }
        : { node_labels: { [node.node_id]: label || null } };
    await this.patch(patch);
    this.redraw();
    this.nodePanel.show(this.state.clickedId);
    this.featurePanel.show(node);
  }

  async createSupernode(members, absorbed = []) {
    const sid = newId("sn");
    const name = `group ${this.state.supernodes.size + 1 - absorbed.length}`;
    const patch = { supernodes: { [sid]: { name, members } } };
    for (const old of absorbed) patch.supernodes[old] = null;
    absorbed.forEach((old) => this.state.supernodes.delete(old));
    this.state.supernodes.set(sid, { name, members });
    const pins = new Set(this.state.pinned);
    members.forEach((m) => pins.add(m));
    this.state.pinned = [...pins];
    this.redraw();
    await this.patch(patch);
    return sid;
  }

  async saveSupernode(sid, value) {
    if (value === null) this.state.supernodes.delete(sid);
    else this.state.supernodes.set(sid, value);
    this.redraw();
    await this.patch({ supernodes: { [sid]: value } });
    this.redraw();
  }

  // -- controls ------------------------------------------------------------------------------
  bindControls() {
    $("#graph-select").addEventListener("change", (e) => this.openGraph(e.target.value));
    $("#compare-open").addEventListener("click", () => this.diff.openFrom(this.state.graphId));
    for (const [id, key] of [
      ["#node-threshold", "nodeThreshold"],
      ["#edge-threshold", "edgeThreshold"],
    ]) {
      $(id).addEventListener("input", (e) => {
        this.state[key] = Number(e.target.value);
        this.showThresholds();
        this.reloadView();
      });
    }
    const search = $("#search");
    search.addEventListener("input", debounce(() => {
      this.state.search = search.value.trim();
      this.applySearch();
      this.redraw();
    }, 120));
    search.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && this.state.matches.length) {
        const i = this.state.matches.indexOf(this.state.clickedId);
        this.selectNode(this.state.matches[(i + 1) % this.state.matches.length]);
      }
    });
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape" || ["INPUT", "SELECT"].includes(document.activeElement.tagName)) return;
      if (this.steer.isOpen) this.steer.close();
      else this.selectNode(null);
    });
  }

  showThresholds() {
    $("#node-threshold-value").textContent = fmt(this.state.nodeThreshold, 2);
    $("#edge-threshold-value").textContent = fmt(this.state.edgeThreshold, 2);
  }

  applySearch() {
    const q = this.state.search.toLowerCase();
    const doc = this.state.doc;
    if (!q || !doc) {
      this.state.matches = [];
      $("#search-count").textContent = "";
      return;
    }
    const tokens = this.tokens();
    this.state.matches = doc.nodes
      .filter((n) => {
        const token = nodeKind(n) === "embedding" ? tokens[n.ctx_idx] || "" : "";
        return (
          n.node_id.toLowerCase().includes(q) ||
          this.labelOf(n).toLowerCase().includes(q) ||
          token.toLowerCase().includes(q)
        );
      })
      .map((n) => n.node_id);
    $("#search-count").textContent = `${this.state.matches.length} match${this.state.matches.length === 1 ? "" : "es"}`;
  }

  setStatus(text, isError = false) {
    const status = $("#status");
    status.textContent = withoutPaths(text);
    status.classList.toggle("error", isError);
  }

  flash(text) {
    const note = $("#flash");
    note.textContent = text;
    note.classList.add("show");
    clearTimeout(this._flashTimer);
    this._flashTimer = setTimeout(() => note.classList.remove("show"), 1200);
  }
}

new App().init();
