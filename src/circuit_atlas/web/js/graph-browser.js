// The landing page: every graph of the data folder in one table (prompt, model, transcoders,
// date, size, replacement / completeness), sortable by any column and filtered by words typed
// in the box; each prompt links to the graph. Sort and filter live in the URL, so a link
// reproduces the list. Columns are one table of descriptors, so more can be added in one place.

import { clear, el, fmt, showToken, withoutPaths } from "./util.js";

const COLUMNS = [
  { key: "prompt", title: "Prompt", value: (g) => g.prompt || g.id, text: true },
  { key: "model", title: "Model", value: (g) => g.model || "", text: true },
  { key: "transcoders", title: "Transcoders", value: (g) => g.transcoders || "", text: true },
  { key: "created", title: "Date", value: (g) => g.created || "", show: (g) => formatDate(g.created), text: true },
  { key: "n_tokens", title: "Tokens", value: (g) => g.n_tokens, numeric: true },
  {
    key: "n_nodes",
    title: "Nodes",
    value: (g) => g.n_nodes,
    numeric: true,
    hint: (g) => (g.n_links !== null && g.n_links !== undefined ? `${g.n_links} edges in the default view` : ""),
  },
  { key: "replacement", title: "Replacement", value: (g) => g.replacement, show: (g) => score(g.replacement), numeric: true },
  { key: "completeness", title: "Completeness", value: (g) => g.completeness, show: (g) => score(g.completeness), numeric: true },
];

const NOT_RECORDED = "not recorded: the graph was written before summaries were kept, or by another tool";

function score(value) {
  return value === null || value === undefined ? "–" : fmt(value, 3);
}

function formatDate(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "–";
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** Rows whose searchable text holds every word of `query` (case-insensitive). */
export function filterGraphs(graphs, query) {
  const words = String(query || "").toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return graphs.slice();
  return graphs.filter((g) => {
    const hay = [g.id, g.prompt, g.model, g.transcoders, formatDate(g.created)].join("\n").toLowerCase();
    return words.every((w) => hay.includes(w));
  });
}

/** Rows sorted by column `key`; unknown values always last. */
export function sortGraphs(graphs, key, descending) {
  const column = COLUMNS.find((c) => c.key === key) || COLUMNS[3];
  const known = [];
  const unknown = [];
  for (const g of graphs) {
    const v = column.value(g);
    (v === null || v === undefined || v === "" ? unknown : known).push(g);
  }
  known.sort((a, b) => {
    const va = column.value(a);
    const vb = column.value(b);
    const order = column.numeric ? va - vb : String(va).localeCompare(String(vb));
    return (descending ? -order : order) || a.id.localeCompare(b.id);
  });
  return [...known, ...unknown];
}

export class GraphBrowser {
  /** `picker`: optional first column to choose graphs with (diff-view.js's ComparePicker). */
  constructor(root, { picker = null } = {}) {
    this.root = root;
    this.picker = picker;
    this.graphs = [];
    const params = new URLSearchParams(window.location.search);
    this.query = params.get("q") || "";
    this.sortKey = params.get("sort") || "created";
    this.descending = params.has("sort") ? params.get("desc") === "1" : true;
  }

  /** Show the list; `notice` (e.g. an unknown graph id) is shown above it. */
  show(graphs, notice = "") {
    this.graphs = graphs;
    this.notice = notice;
    this.render();
  }

  writeUrl() {
    const params = new URLSearchParams();
    if (this.query) params.set("q", this.query);
    params.set("sort", this.sortKey);
    params.set("desc", this.descending ? "1" : "0");
    const keep = new URLSearchParams(window.location.search).get("graph");
    if (keep) params.set("graph", keep); // an unknown id stays visible in the address bar
    window.history.replaceState(null, "", `${window.location.pathname}?${params}`);
  }

  render() {
    const filter = el("input", {
      type: "search",
      class: "browser-filter",
      placeholder: "Filter: prompt, model, transcoders, date…",
      value: this.query,
      "data-testid": "graph-filter",
      "aria-label": "Filter graphs",
    });
    filter.addEventListener("input", () => {
      this.query = filter.value;
      this.writeUrl();
      this.renderRows();
    });
    this.count = el("span", { class: "count", "data-testid": "graph-count" });
    this.pickerSlot = el("span", { class: "picker-slot" });
    this.head = el("tr");
    this.body = el("tbody");
    clear(this.root).append(
      el(
        "div",
        { class: "browser-inner" },
        this.notice ? el("div", { class: "browser-notice", "data-testid": "browser-notice", role: "alert" }, this.notice) : null,
        el("div", { class: "browser-head" }, el("h1", {}, "Graphs"), this.count, this.pickerSlot, filter),
        el("table", { class: "browser-table", "data-testid": "graph-browser" }, el("thead", {}, this.head), this.body),
        this.graphs.length
          ? null
          : el("div", { class: "empty" }, "No graphs in the data folder yet. Write one with `circuit-atlas trace … --out DIR`."),
      ),
    );
    this.renderHead();
    this.renderRows();
  }

  renderPicker() {
    if (!this.picker) return;
    clear(this.pickerSlot).append(this.picker.bar(() => {
      this.renderPicker();
      this.renderRows();
    }));
  }

  renderHead() {
    clear(this.head).append(
      this.picker ? this.picker.header() : "",
      ...COLUMNS.map((column) => {
        const active = column.key === this.sortKey;
        const arrow = active ? (this.descending ? " ↓" : " ↑") : "";
        return el(
          "th",
          { class: column.numeric ? "num" : "", "aria-sort": active ? (this.descending ? "descending" : "ascending") : "none" },
          el(
            "button",
            {
              class: `sort${active ? " active" : ""}`,
              "data-testid": `sort-${column.key}`,
              title: `Sort by ${column.title.toLowerCase()}`,
              onclick: () => {
                if (this.sortKey === column.key) this.descending = !this.descending;
                else {
                  this.sortKey = column.key;
                  this.descending = Boolean(column.numeric || column.key === "created");
                }
                this.writeUrl();
                this.renderHead();
                this.renderRows();
              },
            },
            column.title + arrow,
          ),
        );
      }),
    );
  }

  renderRows() {
    const rows = sortGraphs(filterGraphs(this.graphs, this.query), this.sortKey, this.descending);
    this.renderPicker();
    this.count.textContent = rows.length === this.graphs.length ? `${rows.length}` : `${rows.length} of ${this.graphs.length}`;
    clear(this.body).append(
      ...rows.map((g) =>
        el(
          "tr",
          { "data-testid": "graph-row", "data-graph-id": g.id, class: g.error ? "unreadable" : "" },
          this.picker ? this.picker.cell(g) : null,
          ...COLUMNS.map((column) => {
            if (column.key === "prompt") return this.promptCell(g);
            const value = column.value(g);
            const shown = column.show ? column.show(g) : value === null || value === undefined || value === "" ? "–" : String(value);
            const unknown = value === null || value === undefined || value === "";
            const hint = column.hint ? column.hint(g) : unknown && column.numeric ? NOT_RECORDED : "";
            return el("td", { class: column.numeric ? "num" : "", title: hint || (column.text ? shown : "") }, shown);
          }),
        ),
      ),
    );
  }

  promptCell(g) {
    const prompt = showToken(g.prompt || "");
    return el(
      "td",
      { class: "prompt-cell" },
      el("a", { href: `?graph=${encodeURIComponent(g.id)}`, title: prompt || g.id, "data-testid": "graph-link" }, prompt || g.id),
      el("div", { class: "graph-id" }, g.id),
      g.error ? el("div", { class: "error small" }, `unreadable: ${withoutPaths(g.error)}`) : null,
    );
  }
}
