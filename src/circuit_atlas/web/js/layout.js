// Node placement, in "world" coordinates. Layers run bottom to top (token embeddings at the
// bottom, logits at the top) and fit the pane's height; token positions run left to right.
//
// Width: each position's column is as wide as its most crowded cell needs (a crowded cell first
// spreads over a few lanes, small vertical offsets), and never narrower than an embedding box
// plus the spacing of angled token labels. Positions with no node but their embedding are
// collapsed: a run of two or more becomes one compact "gap" column where each position takes a
// few pixels and its embedding is drawn as a thin tick (edges still reach it; hovering the gap
// names its tokens, clicking it expands it into ordinary columns). When the columns need less
// than the pane, they are widened to fill it; when they need more, the world is wider than the
// pane and the view (view.js) scrolls along it. So node boxes never overlap at the home zoom,
// whatever the prompt's length.
//
// Logits sit in the top row as one group centred over their position, each in a slot as wide as
// its label ("token 77%"), most probable first, so that every logit label fits on one line.
// Token labels are horizontal when the columns have room for most tokens whole, else angled.

import { fitText } from "./labels.js";
import { formatProbability, logitProbability, logitToken, nodeKind, showToken } from "./util.js";

export const GUTTER = 44; // strip on the left for the row labels
export const RIGHT_PAD = 14;
export const TOP_PAD = 50; // room above the top row for the logit labels, below the zoom buttons
export const MIN_COLUMN = 20; // an embedding box (15.2 px) + padding; angled labels 20·sin 45° ≈ 14 px apart
export const CELL_PAD = 4; // the least horizontal room between the nodes of neighbouring columns
export const LANE_GAP = 10; // vertical distance between the lanes of a crowded cell
export const MIN_ROW_GAP = 12.5; // an embedding box over a feature glyph, with a pixel between
export const SLOT = { feature: 11, error: 11, embedding: 16 }; // horizontal room per node
/** Half width and half height of each node glyph as drawn (stroke included); `tick` is an
 * embedding inside a collapsed run. */
export const NODE_BOX = {
  feature: [4.8, 4.8],
  error: [4.1, 4.1],
  embedding: [7.6, 5.6],
  logit: [7.6, 5.6],
  tick: [1.6, 5.6],
};
export const COMPACT = 5; // px per position inside a collapsed run
const KEEP_SHARE = 0.1; // quiet positions whose embedding matters this much keep their column
export const FLAT_BAND = 40; // the token strip with horizontal labels: token line + position numbers
export const NUMBER_ROW = 14; // position numbers above angled labels
export const ANGLE = Math.PI / 4; // angled token labels rise at 45°
export const MAX_LABEL_PX = 120; // angled and logit labels longer than this are cut (full text on hover)
export const SCROLL_STRIP = 12; // the overview strip under the token labels when the world is wider than the pane
const LOGIT_GAP = 14;
const LOGIT_MIN_SLOT = 22;
const FLAT_LABEL_ROOM = 6; // a flat token label needs its width plus this much in its column
const FLAT_MIN_COLUMN = 48; // flat labels need columns of a few characters at least...
const FLAT_SHARE = 0.8; // ...and most tokens whole

/** A logit's label, "token 77%", at most MAX_LABEL_PX wide: a long token is cut, never its
 * probability. Returns {text, full}. */
export function logitLabel(node, measure) {
  const p = formatProbability(logitProbability(node));
  const token = showToken(logitToken(node));
  const full = p ? `${token} ${p}` : token;
  if (measure(full) <= MAX_LABEL_PX) return { text: full, full };
  const suffix = p ? ` ${p}` : "";
  return { text: `${fitText(token, MAX_LABEL_PX - measure(suffix), measure)}${suffix}`, full };
}

/** Row ("level") of a node: 0 = embeddings, layer + 1 = features/errors, top = logits. */
function levelOf(node, nLayers) {
  const kind = nodeKind(node);
  if (kind === "embedding") return 0;
  if (kind === "logit") return nLayers + 1;
  const layer = Number(node.layer);
  return Number.isFinite(layer) ? layer + 1 : 1;
}

/** Number of transformer layers implied by the nodes (logit layer is L + 1). */
export function countLayers(nodes) {
  let maxLayer = -1;
  let logitLayer = null;
  for (const node of nodes) {
    const kind = nodeKind(node);
    const layer = Number(node.layer);
    if (kind === "logit" && Number.isFinite(layer)) logitLayer = Math.max(logitLayer ?? 0, layer);
    else if (kind !== "embedding" && Number.isFinite(layer)) maxLayer = Math.max(maxLayer, layer);
  }
  return Math.max(maxLayer + 1, logitLayer !== null ? logitLayer - 1 : 0, 1);
}

function cellOrder(a, b) {
  const ka = nodeKind(a) === "error" ? 1 : 0;
  const kb = nodeKind(b) === "error" ? 1 : 0;
  if (ka !== kb) return ka - kb;
  const ia = a.influence ?? 2;
  const ib = b.influence ?? 2;
  if (ia !== ib) return ia - ib;
  return String(a.node_id).localeCompare(String(b.node_id));
}

function positionOf(node, nPos) {
  return Math.min(Math.max(Number(node.ctx_idx) || 0, 0), nPos - 1);
}

/**
 * Which positions get a column of their own. When every position can have one within the pane,
 * all do. Otherwise "quiet" positions — no node but their embedding, whose edges carry less than
 * KEEP_SHARE of the strongest quiet embedding's — are collapsed where two or more follow each
 * other (unless the user expanded that run). Returns `groups`: [{first, last, gap}] covering
 * 0..nPos-1 in order.
 */
export function positionGroups(nodes, links, nPos, { expanded = new Set(), collapse = true } = {}) {
  const busy = new Array(nPos).fill(false);
  const embedding = new Map();
  for (const node of nodes) {
    if (nodeKind(node) !== "embedding") busy[positionOf(node, nPos)] = true;
    else embedding.set(node.node_id, positionOf(node, nPos));
  }
  const strength = new Array(nPos).fill(0);
  for (const link of links) {
    for (const end of [link.source, link.target]) {
      const pos = embedding.get(end);
      if (pos !== undefined) strength[pos] += Math.abs(link.weight);
    }
  }
  let strongest = 0;
  for (let p = 0; p < nPos; p += 1) if (!busy[p]) strongest = Math.max(strongest, strength[p]);
  const quiet = (p) => collapse && !busy[p] && strength[p] < KEEP_SHARE * strongest + 1e-12;
  const groups = [];
  let pos = 0;
  while (pos < nPos) {
    if (!quiet(pos)) {
      groups.push({ first: pos, last: pos, gap: false });
      pos += 1;
      continue;
    }
    let end = pos;
    while (end + 1 < nPos && quiet(end + 1)) end += 1;
    if (end === pos || expanded.has(pos)) {
      for (let p = pos; p <= end; p += 1) groups.push({ first: p, last: p, gap: false });
    } else {
      groups.push({ first: pos, last: end, gap: true });
    }
    pos = end + 1;
  }
  return groups;
}

/** Lanes a crowded cell may use: they fill at most half the gap between rows. */
function maxLanesFor(rowGap) {
  return Math.max(1, Math.floor((0.5 * rowGap) / LANE_GAP) + 1);
}

function slotOf(kind) {
  return SLOT[kind] ?? SLOT.feature;
}

/** Rows that fit `height` for a token strip of height `band`, but never closer than
 * MIN_ROW_GAP (then the world is taller than the pane and the view scrolls vertically too). */
function rowsFor(nLevels, height, band) {
  const rowGap = Math.max(MIN_ROW_GAP, Math.max(height - TOP_PAD - band - 8, 40) / (nLevels - 1));
  const usable = rowGap * (nLevels - 1);
  const rows = [];
  for (let level = 0; level < nLevels; level += 1) {
    let label = `L${level - 1}`;
    if (level === 0) label = "Emb";
    if (level === nLevels - 1) label = "Logit";
    rows.push({ y: TOP_PAD + usable - level * rowGap, label });
  }
  return { rows, rowGap };
}

/**
 * Split `inner` pixels among columns in proportion to their needs when the needs fit;
 * otherwise every column gets exactly its need (the world is then wider than `inner`).
 */
export function columnWidths(need, inner) {
  const total = need.reduce((a, b) => a + b, 0);
  if (total <= 0) return need.map(() => inner / Math.max(need.length, 1));
  if (total >= inner) return need.slice();
  return need.map((n) => (n * inner) / total);
}

/**
 * The longest angled label (px) the strip must hold: tokens are cut to MAX_LABEL_PX.
 * `measure(text) -> px` in the token font.
 */
function angledDepth(labels, measure) {
  let longest = 0;
  for (const text of labels) longest = Math.max(longest, Math.min(measure(text), MAX_LABEL_PX));
  return NUMBER_ROW + longest * Math.sin(ANGLE) + 14;
}

/**
 * Cells (level, column) -> nodes, the logits, the embeddings of collapsed runs ("ticks"), and
 * each column's width need with at most `lanes` lanes per cell (and its total).
 */
function columnNeeds(nodes, groups, nPos, nLayers, lanes) {
  const nLevels = nLayers + 2;
  const posColumn = new Array(nPos);
  groups.forEach((g, i) => {
    for (let p = g.first; p <= g.last; p += 1) posColumn[p] = i;
  });
  const cells = new Map();
  const logitNodes = [];
  const ticks = [];
  for (const node of nodes) {
    const level = levelOf(node, nLayers);
    const col = posColumn[positionOf(node, nPos)];
    if (level === nLevels - 1) logitNodes.push(node);
    else if (groups[col].gap) ticks.push(node);
    else {
      const key = `${level}:${col}`;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(node);
    }
  }
  const need = groups.map((g) => (g.gap ? Math.max(MIN_COLUMN, (g.last - g.first + 1) * COMPACT + CELL_PAD) : MIN_COLUMN));
  const count = groups.map(() => 0);
  for (const [key, members] of cells) {
    const [level, col] = key.split(":").map(Number);
    const slot = Math.max(...members.map((n) => slotOf(nodeKind(n))));
    const cellLanes = level === 0 ? 1 : Math.min(lanes, members.length);
    need[col] = Math.max(need[col], Math.ceil(members.length / cellLanes) * slot + CELL_PAD);
    count[col] += members.length;
  }
  return { posColumn, cells, logitNodes, ticks, need, count, total: need.reduce((a, b) => a + b, 0) };
}

/**
 * Place every node. `measure = {token, logit}`: text width callbacks in the axis fonts.
 * Returns {positions: Map id -> {x, y}, compact: Set of embedding ids drawn as ticks (collapsed
 * runs), width, height, paneWidth,
 * nLayers, rows, columns, posColumn, labelMode ("flat" | "angled"), band, plot, logits}.
 * `rows[level] = {y, label}`; `columns[i] = {x0, x1, first, last, gap, token, count}`;
 * `posColumn[pos]` = index of the column holding position `pos`; `plot` = the world rectangle
 * where nodes are drawn; `logits` = [{id, text, x, slot: [x0, x1], prob}] in drawing order.
 */
export function computeLayout(nodes, links, tokens, paneWidth, height, measure, expanded = new Set()) {
  const nLayers = countLayers(nodes);
  const nLevels = nLayers + 2;
  let nPos = tokens.length;
  for (const node of nodes) nPos = Math.max(nPos, (Number(node.ctx_idx) || 0) + 1);
  nPos = Math.max(nPos, 1);

  // Columns for every position when they fit the pane; else collapsed runs.
  const inner = Math.max(paneWidth - GUTTER - RIGHT_PAD, 100);
  const worstBand = angledDepth(tokens.map((t) => showToken(t)), measure.token) + SCROLL_STRIP;
  const lanes = maxLanesFor(rowsFor(nLevels, height, worstBand).rowGap);
  let groups = positionGroups(nodes, links, nPos, { collapse: false });
  let columnsNeed = columnNeeds(nodes, groups, nPos, nLayers, lanes);
  if (columnsNeed.total > inner) {
    groups = positionGroups(nodes, links, nPos, { expanded });
    columnsNeed = columnNeeds(nodes, groups, nPos, nLayers, lanes);
  }
  const { posColumn, cells, logitNodes, ticks, need, count } = columnsNeed;

  // Logits: one slot per label, most probable first.
  logitNodes.sort((a, b) => (b.token_prob ?? 0) - (a.token_prob ?? 0) || String(a.node_id).localeCompare(String(b.node_id)));
  const logitSlots = logitNodes.map((node) => {
    const { text, full } = logitLabel(node, measure.logit);
    const width = Math.max(LOGIT_MIN_SLOT, measure.logit(text) + LOGIT_GAP);
    return { node, text, full, width };
  });
  const logitTotal = logitSlots.reduce((a, s) => a + s.width, 0);

  const needTotal = need.reduce((a, b) => a + b, 0);
  const content = Math.max(needTotal, logitTotal);
  const widths = columnWidths(need, Math.max(inner, content));
  const columns = [];
  let x = GUTTER;
  groups.forEach((g, i) => {
    const token = g.gap ? "" : tokens[g.first] ?? "";
    columns.push({ x0: x, x1: x + widths[i], first: g.first, last: g.last, gap: g.gap, token, count: count[i] });
    x += widths[i];
  });
  const width = x + RIGHT_PAD;

  // Token labels: flat when every column has room for a few characters and most hold their
  // whole token (the others are cut, whole on hover); else angled.
  const words = columns.filter((c) => !c.gap);
  const fitting = words.filter((c) => measure.token(showToken(c.token)) + FLAT_LABEL_ROOM <= c.x1 - c.x0);
  const flat =
    words.every((c) => c.x1 - c.x0 >= FLAT_MIN_COLUMN) && fitting.length >= FLAT_SHARE * words.length;
  const scrolls = width > paneWidth + 0.5;
  const band =
    (flat ? FLAT_BAND : angledDepth(columns.map((c) => showToken(c.token)), measure.token)) +
    (scrolls ? SCROLL_STRIP : 0);
  const { rows, rowGap } = rowsFor(nLevels, height, band);
  const maxLanes = maxLanesFor(rowGap);

  const positions = new Map();
  for (const [key, members] of cells) {
    const [level, col] = key.split(":").map(Number);
    members.sort(cellOrder);
    const { x0, x1 } = columns[col];
    const usable = Math.max(x1 - x0 - CELL_PAD, 1);
    const slot = Math.max(...members.map((n) => slotOf(nodeKind(n))));
    // The fewest lanes whose rows of nodes fit the column (the needs above guarantee they do).
    const perLaneMax = Math.max(1, Math.floor(usable / slot));
    const lanes = level === 0 ? 1 : Math.min(maxLanes, members.length, Math.ceil(members.length / perLaneMax));
    const perLane = Math.ceil(members.length / lanes);
    const step = Math.min(slot * 1.8, usable / perLane);
    members.forEach((node, i) => {
      const lane = Math.floor(i / perLane);
      const slotIndex = i % perLane;
      const inLane = Math.min(perLane, members.length - lane * perLane);
      const start = (x0 + x1) / 2 - (step * (inLane - 1)) / 2;
      const dy = (lane - (lanes - 1) / 2) * LANE_GAP;
      positions.set(node.node_id, { x: start + slotIndex * step, y: rows[level].y + dy });
    });
  }

  const compact = new Set();
  for (const node of ticks) {
    const pos = positionOf(node, nPos);
    const col = columns[posColumn[pos]];
    const n = col.last - col.first + 1;
    const step = (col.x1 - col.x0 - CELL_PAD) / n;
    positions.set(node.node_id, { x: col.x0 + CELL_PAD / 2 + (pos - col.first + 0.5) * step, y: rows[0].y });
    compact.add(node.node_id);
  }

  const logits = [];
  if (logitSlots.length) {
    const lastCol = columns[posColumn[positionOf(logitNodes[0], nPos)]];
    const centre = (lastCol.x0 + lastCol.x1) / 2;
    let left = Math.min(Math.max(centre - logitTotal / 2, GUTTER), x - logitTotal);
    const y = rows[nLevels - 1].y;
    for (const slot of logitSlots) {
      const mid = left + slot.width / 2;
      positions.set(slot.node.node_id, { x: mid, y });
      logits.push({ id: slot.node.node_id, text: slot.text, full: slot.full, x: mid, slot: [left, left + slot.width], prob: slot.node.token_prob ?? 0 });
      left += slot.width;
    }
  }

  const plot = { x0: GUTTER, y0: 0, x1: x, y1: Math.max(height - band, rows[0].y + 8) };
  return {
    positions,
    compact,
    width,
    height,
    paneWidth,
    nLayers,
    rows,
    rowGap,
    columns,
    posColumn,
    labelMode: flat ? "flat" : "angled",
    band,
    scrolls,
    plot,
    logits,
  };
}
