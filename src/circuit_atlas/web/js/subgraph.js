// The pinned subgraph: pinned nodes and supernodes laid out in layers (embeddings at the bottom,
// logits at the top; within a layer by position, then reordered so that edges cross less), with
// every edge among them taken from the unpruned graph (so pins survive the pruning slider) and
// its weight written on it, grouping into supernodes, and replacement / completeness scores of
// the pinned set. Boxes never overlap: a layer wider than the pane, or more layers than fit its
// height, make the drawing scroll. The pane's height is dragged at its top edge (and remembered).

import { api } from "./api.js";
import { canvasMeasurer, fitText } from "./labels.js";
import { clear, debounce, edgeColor, el, fmt, nodeKind, svg } from "./util.js";

const BOX_W = 132;
const BOX_H = 30;
const H_GAP = 18; // between boxes of a layer
const V_GAP = 16; // at least, between layers: room for a weight label
const MARGIN = 12;
const MAX_WEIGHT_LABELS = 60;
const HEIGHT_KEY = "circuit-atlas.subgraph-height";
const MIN_HEIGHT = 90;

// The box texts are cut to the box by measured width (the fonts match .sub-item text.t1 / .t2).
const TEXT_ROOM = BOX_W - 14;
const measureTitle = canvasMeasurer('600 11.5px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif');
const measureSubtitle = canvasMeasurer("10px ui-monospace, Menlo, monospace");
const measureWeight = canvasMeasurer("600 10.5px system-ui, sans-serif");

export class SubgraphPane {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.selection = new Set(); // item ids (node ids or supernode ids) chosen for grouping
    this.data = { nodes: [], links: [], missing: [] };
    this.dataKey = "";
    this.scoreTicket = 0;
    this.toolbar = el("div", { class: "sub-toolbar" });
    this.body = el("div", { class: "sub-body" });
    this.canvasBox = el("div", { class: "sub-canvas", "data-testid": "subgraph" });
    this.groups = el("div", { class: "sub-groups", "data-testid": "supernode-list" });
    this.body.append(this.canvasBox, this.groups);
    this.handle = el("div", {
      class: "sub-resize",
      title: "Drag to resize the subgraph pane (double-click: back to its usual height)",
      "data-testid": "subgraph-resize",
      role: "separator",
      "aria-orientation": "horizontal",
    });
    root.append(this.handle, this.toolbar, this.body);
    this.bindResize();
    this.refreshScores = debounce(() => this.updateScores(), 250);
    new ResizeObserver(() => this.draw()).observe(this.canvasBox);
  }

  /** All node ids the pane needs: pins plus every supernode member. */
  neededIds() {
    const ids = new Set(this.app.state.pinned);
    for (const sn of this.app.state.supernodes.values()) sn.members.forEach((m) => ids.add(m));
    return [...ids];
  }

  async update() {
    const ids = this.neededIds();
    const key = `${this.app.state.graphId}|${[...ids].sort().join(",")}|${this.app.state.annotations.revision}`;
    for (const id of [...this.selection]) {
      if (!ids.includes(id) && !this.app.state.supernodes.has(id)) this.selection.delete(id);
    }
    if (key !== this.dataKey) {
      this.dataKey = key;
      let data = { nodes: [], links: [], missing: [] };
      if (ids.length) {
        try {
          data = await api.subgraph(this.app.state.graphId, ids);
        } catch (error) {
          data = { nodes: [], links: [], missing: ids, error: error.message };
        }
      }
      if (key !== this.dataKey) return; // superseded by a newer update
      this.data = data;
      this.refreshScores();
    }
    this.draw();
  }

  /** Display items: supernodes, and pinned nodes that are in no supernode. */
  items() {
    const byId = new Map(this.data.nodes.map((n) => [n.node_id, n]));
    const items = [];
    const grouped = new Set();
    for (const [sid, sn] of this.app.state.supernodes) {
      const members = sn.members.map((m) => byId.get(m)).filter(Boolean);
      sn.members.forEach((m) => grouped.add(m));
      items.push({ id: sid, supernode: true, name: sn.name, members, memberIds: sn.members });
    }
    for (const id of this.app.state.pinned) {
      if (grouped.has(id)) continue;
      const node = byId.get(id);
      items.push({ id, supernode: false, node, members: node ? [node] : [], memberIds: [id] });
    }
    return items;
  }

  // -- the pane's height ---------------------------------------------------------------------
  bindResize() {
    const layout = this.root.parentElement;
    const saved = Number(localStorage.getItem(HEIGHT_KEY));
    if (saved >= MIN_HEIGHT) this.setHeight(saved, false);
    this.handle.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      this.handle.setPointerCapture(e.pointerId);
      const startY = e.clientY;
      const startH = this.root.getBoundingClientRect().height;
      const move = (ev) => this.setHeight(startH - (ev.clientY - startY), false);
      const up = (ev) => {
        this.handle.removeEventListener("pointermove", move);
        this.handle.removeEventListener("pointerup", up);
        this.handle.releasePointerCapture(ev.pointerId);
        this.setHeight(this.root.getBoundingClientRect().height, true);
      };
      this.handle.addEventListener("pointermove", move);
      this.handle.addEventListener("pointerup", up);
    });
    this.handle.addEventListener("dblclick", () => {
      layout.style.gridTemplateRows = "";
      localStorage.removeItem(HEIGHT_KEY);
    });
  }

  /** Give the pane `height` px (kept between MIN_HEIGHT and most of the window). */
  setHeight(height, remember) {
    const layout = this.root.parentElement;
    const room = layout.getBoundingClientRect().height || window.innerHeight;
    const h = Math.round(Math.min(Math.max(height, MIN_HEIGHT), Math.max(MIN_HEIGHT, room - 160)));
    layout.style.gridTemplateRows = `minmax(0, 1fr) ${h}px`;
    if (remember) localStorage.setItem(HEIGHT_KEY, String(h));
  }

  // -- layout --------------------------------------------------------------------------------
  /**
   * Layers bottom to top; in each, items ordered by position, then by the mean position of
   * their neighbours in the layers below and above (two sweeps), then spread so that boxes are
   * at least H_GAP apart while staying near their token's share of the width. Sets item.x, .y
   * (box centres) and returns the drawing's {width, height}.
   */
  layout(items, links, width, height) {
    const levelOf = (n) => {
      const kind = nodeKind(n);
      if (kind === "embedding") return -1;
      if (kind === "logit") return 1e6;
      return Number(n.layer);
    };
    let maxPos = Math.max(1, this.app.tokens().length - 1);
    for (const item of items) {
      const ms = item.members.length ? item.members : [{ layer: 0, ctx_idx: 0, feature_type: "" }];
      item.level = ms.reduce((a, n) => a + levelOf(n), 0) / ms.length;
      item.pos = ms.reduce((a, n) => a + Number(n.ctx_idx || 0), 0) / ms.length;
      maxPos = Math.max(maxPos, item.pos);
    }
    const levels = [...new Set(items.map((i) => i.level))].sort((a, b) => a - b);
    const rows = levels.map((level) => items.filter((i) => i.level === level));
    rows.forEach((row) => row.sort((a, b) => a.pos - b.pos || a.id.localeCompare(b.id)));
    const neighbours = new Map(items.map((i) => [i.id, []]));
    for (const link of links) {
      neighbours.get(link.source)?.push(link.target);
      neighbours.get(link.target)?.push(link.source);
    }
    const rank = new Map();
    const setRanks = () => rows.forEach((row) => row.forEach((item, i) => rank.set(item.id, i / Math.max(row.length - 1, 1))));
    setRanks();
    for (let sweep = 0; sweep < 2; sweep += 1) {
      for (const row of rows) {
        const key = new Map(row.map((item) => {
          const others = neighbours.get(item.id).filter((id) => rank.has(id));
          const own = rank.get(item.id);
          return [item.id, others.length ? (own + others.reduce((a, id) => a + rank.get(id), 0)) / (others.length + 1) : own];
        }));
        row.sort((a, b) => key.get(a.id) - key.get(b.id) || a.pos - b.pos);
        setRanks();
      }
    }
    const slot = BOX_W + H_GAP;
    const widest = Math.max(...rows.map((row) => row.length));
    const drawWidth = Math.max(width, widest * slot - H_GAP + 2 * MARGIN);
    const drawHeight = Math.max(height, rows.length * (BOX_H + V_GAP) - V_GAP + 2 * MARGIN);
    const left = MARGIN + BOX_W / 2;
    const right = drawWidth - MARGIN - BOX_W / 2;
    const rowGap = rows.length > 1 ? (drawHeight - 2 * MARGIN - BOX_H) / (rows.length - 1) : 0;
    rows.forEach((row, r) => {
      const y = rows.length > 1 ? drawHeight - MARGIN - BOX_H / 2 - r * rowGap : drawHeight / 2;
      // Wanted places: the token's share of the width; then pushed apart, right then left.
      const xs = row.map((item) => left + ((right - left) * item.pos) / maxPos);
      for (let i = 1; i < xs.length; i += 1) xs[i] = Math.max(xs[i], xs[i - 1] + slot);
      if (xs.length) xs[xs.length - 1] = Math.min(xs[xs.length - 1], right);
      for (let i = xs.length - 2; i >= 0; i -= 1) xs[i] = Math.min(xs[i], xs[i + 1] - slot);
      row.forEach((item, i) => {
        item.x = xs[i];
        item.y = y;
      });
    });
    return { width: drawWidth, height: drawHeight };
  }

  /** Edges between display items: sums of member-to-member weights (internal ones dropped). */
  itemLinks(items) {
    const owner = new Map();
    for (const item of items) item.memberIds.forEach((m) => owner.set(m, item.id));
    const sums = new Map();
    for (const link of this.data.links) {
      const a = owner.get(link.source);
      const b = owner.get(link.target);
      if (!a || !b || a === b) continue;
      const key = `${a}\u0000${b}`;
      sums.set(key, (sums.get(key) || 0) + link.weight);
    }
    return [...sums].map(([key, weight]) => {
      const [source, target] = key.split("\u0000");
      return { source, target, weight };
    });
  }

  draw() {
    this.drawCanvas();
    this.afterDraw();
  }

  drawCanvas() {
    this.drawToolbar();
    this.drawGroups();
    const items = this.items();
    const width = Math.max(this.canvasBox.clientWidth, 200);
    const height = Math.max(this.canvasBox.clientHeight, 60);
    const scroll = { left: this.canvasBox.scrollLeft, top: this.canvasBox.scrollTop };
    clear(this.canvasBox);
    if (!items.length) {
      this.canvasBox.append(
        el("div", { class: "empty" }, "Ctrl/⌘-click nodes to pin them here. Shift-click pinned nodes to select them for grouping."),
      );
      return;
    }
    const links = this.itemLinks(items);
    const size = this.layout(items, links, width, height);
    const maxAbs = Math.max(1e-12, ...links.map((l) => Math.abs(l.weight)));
    const byId = new Map(items.map((i) => [i.id, i]));
    const root = svg("svg", { width: size.width, height: size.height, class: "sub-svg", "data-testid": "subgraph-svg" });
    const labels = [];
    const sorted = links.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
    for (const link of sorted.slice().reverse()) {
      const a = byId.get(link.source);
      const b = byId.get(link.target);
      const strength = Math.abs(link.weight) / maxAbs;
      const up = b.y < a.y; // edges run from sources up to targets
      const ay = a.y + (up ? -BOX_H / 2 : BOX_H / 2);
      const by = b.y + (up ? BOX_H / 2 : -BOX_H / 2);
      const midY = (ay + by) / 2;
      root.append(
        svg(
          "path",
          {
            d: `M${a.x},${ay} C${a.x},${midY} ${b.x},${midY} ${b.x},${by}`,
            fill: "none",
            stroke: edgeColor(link.weight),
            "stroke-width": 0.6 + 4 * strength,
            "stroke-opacity": 0.25 + 0.6 * strength,
            class: "sub-edge",
          },
          svg("title", {}, `${fmt(link.weight, 3)}`),
        ),
      );
    }
    for (const item of items) root.append(this.itemBox(item));
    // Weights at the middle of their edges, strongest first, where they hide nothing.
    const taken = items.map((i) => ({ x0: i.x - BOX_W / 2, x1: i.x + BOX_W / 2, y0: i.y - BOX_H / 2, y1: i.y + BOX_H / 2 }));
    for (const link of sorted) {
      if (labels.length >= MAX_WEIGHT_LABELS) break;
      const a = byId.get(link.source);
      const b = byId.get(link.target);
      const text = fmt(link.weight, 2);
      const w = measureWeight(text) + 6;
      const cx = (a.x + b.x) / 2;
      const cy = (a.y + b.y) / 2;
      const box = { x0: cx - w / 2, x1: cx + w / 2, y0: cy - 7, y1: cy + 7 };
      if (taken.some((t) => box.x0 < t.x1 && t.x0 < box.x1 && box.y0 < t.y1 && t.y0 < box.y1)) continue;
      taken.push(box);
      labels.push(
        svg("text", { x: cx, y: cy + 4, class: `sub-weight ${link.weight >= 0 ? "pos" : "neg"}`, "text-anchor": "middle", "data-testid": "edge-weight" }, text),
      );
    }
    root.append(...labels);
    this.canvasBox.append(root);
    this.canvasBox.scrollLeft = scroll.left;
    this.canvasBox.scrollTop = scroll.top;
  }

  /** Redraw, then let the Steer panel pick up changed pins or groups. */
  afterDraw() {
    if (this.app.steer) this.app.steer.update();
  }

  itemBox(item) {
    const selected = this.selection.has(item.id);
    const clicked = !item.supernode && item.id === this.app.state.clickedId;
    let title;
    let subtitle;
    if (item.supernode) {
      title = item.name || "(unnamed)";
      subtitle = `${item.memberIds.length} nodes`;
    } else if (item.node) {
      title = this.app.displayName(item.node);
      subtitle = item.id;
    } else {
      title = item.id;
      subtitle = "not in graph";
    }
    const cls = [
      "sub-item",
      item.supernode ? "supernode" : `kind-${item.node ? nodeKind(item.node) : "missing"}`,
      selected ? "selected" : "",
      clicked ? "clicked" : "",
    ].join(" ");
    const group = svg(
      "g",
      {
        class: cls,
        transform: `translate(${item.x - BOX_W / 2},${item.y - BOX_H / 2})`,
        "data-item-id": item.id,
        "data-testid": item.supernode ? "supernode-item" : "pinned-item",
        onclick: (e) => {
          if (e.shiftKey || item.supernode) this.toggleSelection(item.id);
          else this.app.selectNode(item.id);
        },
      },
      svg("title", {}, item.supernode ? `${title}: ${item.memberIds.join(", ")}` : `${title}\n${subtitle}`),
      svg("rect", { width: BOX_W, height: BOX_H, rx: 6 }),
      svg("text", { x: 8, y: 13, class: "t1" }, fitText(title, TEXT_ROOM, measureTitle)),
      svg("text", { x: 8, y: 25, class: "t2" }, fitText(subtitle, TEXT_ROOM, measureSubtitle)),
    );
    return group;
  }

  toggleSelection(id) {
    if (this.selection.has(id)) this.selection.delete(id);
    else this.selection.add(id);
    this.draw();
  }

  drawToolbar() {
    const pinned = this.app.state.pinned.length;
    const selectedNodes = [...this.selection].filter((id) => !this.app.state.supernodes.has(id));
    const groupable = selectedNodes.length >= 2 || (this.selection.size >= 2);
    this.scoreText = this.scoreText || el("span", { class: "scores", "data-testid": "scores" });
    clear(this.toolbar).append(
      el("h2", {}, "Subgraph"),
      el("span", { class: "count" }, `${pinned} pinned · ${this.app.state.supernodes.size} groups`),
      el(
        "button",
        {
          class: "small",
          "data-testid": "group-button",
          disabled: !groupable,
          title: "Group the selected (shift-clicked) items into a supernode",
          onclick: () => this.groupSelection(),
        },
        "Group selected",
      ),
      el(
        "button",
        {
          class: "small",
          disabled: !pinned,
          "data-testid": "clear-pins",
          onclick: () => this.app.setPinned([]),
        },
        "Clear pins",
      ),
      this.pinnedSetControls(),
      el(
        "button",
        {
          class: `small steer-open${this.app.steer && this.app.steer.isOpen ? " active" : ""}`,
          "data-testid": "steer-open",
          title: "Ablate, scale or set the pinned features on the model and compare the outputs",
          onclick: () => this.app.steer.toggle(),
        },
        "Steer…",
      ),
      this.scoreText,
    );
  }

  pinnedSetControls() {
    const sets = this.app.state.annotations.pinned_sets || {};
    const select = el(
      "select",
      {
        class: "small",
        title: "Restore a saved set of pins",
        onchange: (e) => {
          const ids = sets[e.target.value];
          if (ids) this.app.setPinned(ids);
        },
      },
      el("option", { value: "" }, "Saved pin sets…"),
      ...Object.keys(sets).sort().map((name) => el("option", { value: name }, name)),
    );
    const name = el("input", { type: "text", class: "small set-name", placeholder: "set name" });
    const save = el(
      "button",
      {
        class: "small",
        disabled: !this.app.state.pinned.length,
        onclick: () => {
          const key = name.value.trim();
          if (key) this.app.patch({ pinned_sets: { [key]: this.app.state.pinned } });
        },
      },
      "Save pins",
    );
    return el("span", { class: "pin-sets" }, select, name, save);
  }

  drawGroups() {
    // A redraw (a save landing, a pin change) must not throw away a name being typed: carry the
    // focused input's text, focus and selection over to its replacement.
    const active = this.groups.querySelector("input[data-supernode-id]:focus");
    const editing = active && {
      sid: active.dataset.supernodeId,
      value: active.value,
      start: active.selectionStart,
      end: active.selectionEnd,
    };
    this.replacingGroups = true; // removing a focused input may fire blur: that is no commit
    clear(this.groups);
    this.replacingGroups = false;
    if (!this.app.state.supernodes.size) {
      this.groups.append(el("div", { class: "empty small" }, "No supernodes yet."));
      return;
    }
    for (const [sid, sn] of this.app.state.supernodes) {
      const input = el("input", {
        type: "text",
        value: sn.name,
        "data-testid": "supernode-name",
        "data-supernode-id": sid,
        placeholder: "supernode name",
      });
      const commit = () => {
        if (this.replacingGroups) return;
        const name = input.value.trim();
        if (name !== sn.name) this.app.saveSupernode(sid, { name, members: sn.members });
      };
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") input.blur();
      });
      input.addEventListener("blur", commit);
      if (editing && editing.sid === sid) {
        input.value = editing.value;
        queueMicrotask(() => {
          input.focus();
          input.setSelectionRange(editing.start, editing.end);
        });
      }
      this.groups.append(
        el(
          "div",
          { class: `group-row${this.selection.has(sid) ? " selected" : ""}` },
          input,
          el("span", { class: "count" }, `${sn.members.length}`),
          el(
            "button",
            {
              class: "small",
              "data-testid": "ungroup",
              onclick: () => this.app.saveSupernode(sid, null),
            },
            "Ungroup",
          ),
        ),
      );
    }
  }

  async groupSelection() {
    const members = [];
    const absorbed = [];
    for (const id of this.selection) {
      const sn = this.app.state.supernodes.get(id);
      if (sn) {
        members.push(...sn.members);
        absorbed.push(id);
      } else {
        members.push(id);
      }
    }
    this.selection.clear();
    const sid = await this.app.createSupernode([...new Set(members)], absorbed);
    const input = this.groups.querySelector(`input[data-supernode-id="${sid}"]`);
    if (input) {
      input.focus();
      input.select();
    }
  }

  async updateScores() {
    const ids = this.neededIds();
    const ticket = ++this.scoreTicket;
    if (!this.scoreText) return;
    if (!ids.length) {
      this.scoreText.textContent = "";
      return;
    }
    const summary = this.app.state.graphs.find((g) => g.id === this.app.state.graphId);
    if (summary && !summary.has_native) {
      this.scoreText.textContent = "scores need the native graph";
      this.scoreText.title = "This graph exists only as JSON; replacement/completeness need the unpruned graph.";
      return;
    }
    this.scoreText.textContent = "scoring…";
    try {
      const s = await api.scores(this.app.state.graphId, ids);
      if (ticket !== this.scoreTicket) return;
      const score = (name, value) =>
        el("span", { class: "score", "data-testid": `score-${name}` }, `${name} `, el("b", {}, fmt(value, 3)));
      this.scoreText.replaceChildren(score("replacement", s.replacement), score("completeness", s.completeness));
      this.scoreText.title =
        `Replacement ${s.replacement}, completeness ${s.completeness}: scores of the pinned features ` +
        "alone; unpinned features count as errors (graph_scores with subgraph).";
    } catch (error) {
      if (ticket !== this.scoreTicket) return;
      this.scoreText.textContent = error.status === 409 ? "scores need the native graph" : error.message;
    }
  }
}
