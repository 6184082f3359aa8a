// Which drawn edge lies under the pointer. Edges are straight segments between node centres, so
// the question is a point-to-segment distance; what must stay cheap is finding the few segments
// worth measuring among tens of thousands. `EdgeIndex` files every edge under the cells of a
// uniform grid over the layout's world coordinates that its segment crosses. The world positions
// change only with the layout (thresholds, pane size, opened runs), never with zoom or pan, so
// the index is built once per layout, and a query reads only the cells around the pointer. The
// build can be spread over idle frames (`build(budgetMs)`, a few ms at a time, after the graph
// is painted); a query before it is done finishes it at once.

const MIN_CELL = 24; // world pixels
const MAX_COLUMNS = 256;
const MAX_ROWS = 64;
const ENTRY_BUDGET = 400_000; // grid entries at most (cells crossed, summed over the edges)
const BUILD_CHUNK = 500; // edges between two looks at the clock

/** Squared distance from point (px, py) to segment (ax, ay)–(bx, by). */
export function segmentDistance2(px, py, ax, ay, bx, by) {
  const dx = bx - ax;
  const dy = by - ay;
  const length2 = dx * dx + dy * dy;
  let t = length2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / length2 : 0;
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  const ex = ax + t * dx - px;
  const ey = ay + t * dy - py;
  return ex * ex + ey * ey;
}

export class EdgeIndex {
  /**
   * `wx`, `wy`: world position of node i (NaN: not drawn); `source`, `target`: node indices of
   * edge j. Edges with an end that is not drawn are left out.
   */
  constructor(wx, wy, source, target) {
    const start = performance.now();
    this.wx = wx;
    this.wy = wy;
    this.source = source;
    this.target = target;
    this._bounds();
    // Long edges in a wide world cross many cells: coarsen until the grid fits the budget.
    for (let tries = 0, total = this._estimate(); total > ENTRY_BUDGET && tries < 8; tries += 1) {
      const scale = Math.min(8, total / ENTRY_BUDGET + 0.01);
      this._cells(this.cellW * scale, this.cellH * scale);
      total = this._estimate();
    }
    // Two passes over the edges: count the entries of each cell, then file the edges.
    // Compressed rows: cell c holds the edges entries[offsets[c] .. offsets[c + 1]).
    this.offsets = new Int32Array(this.columns * this.rows + 1);
    this.entries = null;
    this.next = null; // while filing: each cell's first free entry
    this.phase = "count"; // "count" | "file" | "ready"
    this.cursor = 0; // the next edge of the current pass
    this.seen = new Int32Array(source.length); // query stamps: each edge measured once per query
    this.query = 0;
    this.buildMs = performance.now() - start;
  }

  get ready() {
    return this.phase === "ready";
  }

  /** Build for about `budgetMs` (Infinity: to the end); returns whether the index is ready. */
  build(budgetMs = Infinity) {
    const start = performance.now();
    while (this.phase !== "ready") {
      const end = Math.min(this.source.length, this.cursor + BUILD_CHUNK);
      this._walk(this.cursor, end);
      this.cursor = end;
      if (end === this.source.length) this._endPass();
      if (performance.now() - start > budgetMs) break;
    }
    this.buildMs += performance.now() - start;
    return this.ready;
  }

  _endPass() {
    this.cursor = 0;
    if (this.phase === "count") {
      const offsets = this.offsets;
      for (let c = 1; c < offsets.length; c += 1) offsets[c] += offsets[c - 1];
      this.entries = new Int32Array(offsets[offsets.length - 1]);
      this.next = offsets.slice(0, -1);
      this.phase = "file";
    } else {
      this.next = null;
      this.phase = "ready";
    }
  }

  /** The world box of the drawn nodes, and the first (finest) cell size. */
  _bounds() {
    let x0 = Infinity;
    let y0 = Infinity;
    let x1 = -Infinity;
    let y1 = -Infinity;
    for (let i = 0; i < this.wx.length; i += 1) {
      const x = this.wx[i];
      const y = this.wy[i];
      if (x !== x || y !== y) continue;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    if (x0 > x1) {
      x0 = y0 = 0;
      x1 = y1 = 1;
    }
    this.x0 = x0;
    this.y0 = y0;
    this.width = Math.max(x1 - x0, 1);
    this.height = Math.max(y1 - y0, 1);
    this._cells(Math.max(MIN_CELL, this.width / MAX_COLUMNS), Math.max(MIN_CELL, this.height / MAX_ROWS));
  }

  _cells(cellW, cellH) {
    this.cellW = cellW;
    this.cellH = cellH;
    this.columns = Math.floor(this.width / cellW) + 1;
    this.rows = Math.floor(this.height / cellH) + 1;
  }

  _column(x) {
    return Math.min(this.columns - 1, Math.max(0, Math.floor((x - this.x0) / this.cellW)));
  }

  _row(y) {
    return Math.min(this.rows - 1, Math.max(0, Math.floor((y - this.y0) / this.cellH)));
  }

  /** About how many cells the edges cross in all (a segment crosses at most the columns plus
   * the rows it spans), in one cheap pass. */
  _estimate() {
    const { wx, wy, source, target, cellW, cellH } = this;
    let total = 0;
    for (let j = 0; j < source.length; j += 1) {
      const dx = Math.abs(wx[source[j]] - wx[target[j]]);
      const dy = Math.abs(wy[source[j]] - wy[target[j]]);
      if (dx === dx && dy === dy) total += Math.ceil(dx / cellW) + Math.ceil(dy / cellH) + 1;
    }
    return total;
  }

  /**
   * Walk every (edge, cell crossed) pair: per column the segment spans, the rows of its part
   * inside that column, for edges [from, to). Counting: add one to the cell's count (kept one
   * place on, in `offsets`, for the running sums). Filing: put the edge in the cell's next entry.
   */
  _walk(from, to) {
    const { wx, wy, source, target, cellW, cellH, x0, y0, rows, columns, entries, next } = this;
    const counts = this.phase === "count" ? this.offsets : null;
    const lastRow = rows - 1;
    const column = (x) => Math.min(columns - 1, Math.max(0, Math.floor((x - x0) / cellW)));
    for (let j = from; j < to; j += 1) {
      let ax = wx[source[j]];
      let ay = wy[source[j]];
      let bx = wx[target[j]];
      let by = wy[target[j]];
      if (ax !== ax || bx !== bx || ay !== ay || by !== by) continue;
      if (ax > bx) [ax, ay, bx, by] = [bx, by, ax, ay];
      const c0 = column(ax);
      const c1 = column(bx);
      const slope = bx > ax ? (by - ay) / (bx - ax) : 0;
      for (let c = c0; c <= c1; c += 1) {
        // The segment's x-range inside column c, and its y at both ends of that range.
        const yl = c === c0 ? ay : ay + (x0 + c * cellW - ax) * slope;
        const yr = c === c1 ? by : ay + (x0 + (c + 1) * cellW - ax) * slope;
        const low = yl < yr ? yl : yr;
        const high = yl < yr ? yr : yl;
        const r0 = Math.min(lastRow, Math.max(0, Math.floor((low - y0) / cellH)));
        const r1 = Math.min(lastRow, Math.max(0, Math.floor((high - y0) / cellH)));
        const base = c * rows;
        if (counts) {
          for (let r = r0; r <= r1; r += 1) counts[base + r + 1] += 1;
        } else {
          for (let r = r0; r <= r1; r += 1) entries[next[base + r]++] = j;
        }
      }
    }
  }

  /**
   * Call `visit(j)` once for every edge filed in a cell that meets the world rectangle
   * [x0, x1] × [y0, y1] (a superset of the edges that pass through it).
   */
  near(x0, y0, x1, y1, visit) {
    if (!this.ready) this.build();
    this.query += 1;
    const stamp = this.query;
    const c0 = this._column(x0);
    const c1 = this._column(x1);
    const r0 = this._row(y0);
    const r1 = this._row(y1);
    if (x1 < this.x0 - this.cellW || x0 > this.x0 + this.width + this.cellW) return;
    for (let c = c0; c <= c1; c += 1) {
      for (let r = r0; r <= r1; r += 1) {
        const cell = c * this.rows + r;
        for (let k = this.offsets[cell]; k < this.offsets[cell + 1]; k += 1) {
          const j = this.entries[k];
          if (this.seen[j] === stamp) continue;
          this.seen[j] = stamp;
          visit(j);
        }
      }
    }
  }
}
