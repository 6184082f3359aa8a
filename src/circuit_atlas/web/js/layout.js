// Node placement: layers bottom-to-top (token embeddings at the bottom, logits at the top) and
// token positions left-to-right, fitted to the pane's width so the whole prompt is visible
// (zoom and pan, in view.js, are for looking closer). A position's column gets a share of the
// width that grows with what its most crowded layer needs, above a floor that keeps quiet
// positions wide enough for their token. A crowded cell spreads over a few lanes (small
// vertical offsets) before its nodes are squeezed together.

import { nodeKind } from "./util.js";

export const MARGIN = { left: 56, right: 24, top: 44, bottom: 58 };
export const NODE_SPACING = 11; // closest spacing at which node glyphs do not touch
const LOGIT_SPACING = 58; // logits carry a token label above them
const MIN_COLUMN = 44;
const LANE_GAP = 10; // vertical distance between the lanes of a crowded cell

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

/**
 * Place every node. Returns {positions: Map id -> {x, y}, width, height, nLayers, rows, columns}.
 * `rows[level] = {y, label}`, `columns[pos] = {x0, x1, token}`.
 */
export function computeLayout(nodes, tokens, availableWidth, height) {
  const nLayers = countLayers(nodes);
  let nPos = tokens.length;
  for (const node of nodes) nPos = Math.max(nPos, (Number(node.ctx_idx) || 0) + 1);
  nPos = Math.max(nPos, 1);

  const cells = new Map(); // "level:pos" -> nodes
  for (const node of nodes) {
    const level = levelOf(node, nLayers);
    const pos = Math.min(Math.max(Number(node.ctx_idx) || 0, 0), nPos - 1);
    const key = `${level}:${pos}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(node);
  }

  const inner = Math.max(availableWidth - MARGIN.left - MARGIN.right, 100);
  const need = new Array(nPos).fill(MIN_COLUMN);
  const floor = new Array(nPos).fill(MIN_COLUMN);
  for (const [key, members] of cells) {
    const [level, pos] = key.split(":").map(Number);
    const isLogit = level === nLayers + 1;
    need[pos] = Math.max(need[pos], members.length * (isLogit ? LOGIT_SPACING : NODE_SPACING) + 12);
    // Logit labels share two lines, so half their spacing keeps them readable when fitted.
    if (isLogit) floor[pos] = Math.max(floor[pos], Math.min((members.length * LOGIT_SPACING) / 2 + 12, 0.4 * inner));
  }
  const columns = [];
  let x = MARGIN.left;
  columnWidths(need, inner, floor).forEach((w, pos) => {
    columns.push({ x0: x, x1: x + w, token: tokens[pos] ?? "" });
    x += w;
  });
  const width = x + MARGIN.right;

  const nLevels = nLayers + 2;
  const usable = Math.max(height - MARGIN.top - MARGIN.bottom, 60);
  const rowGap = usable / (nLevels - 1);
  const rows = [];
  for (let level = 0; level < nLevels; level += 1) {
    const y = MARGIN.top + usable - level * rowGap;
    let label = `L${level - 1}`;
    if (level === 0) label = "Emb";
    if (level === nLevels - 1) label = "Logit";
    rows.push({ y, label });
  }
  // Lanes may fill about half the gap between rows, so rows stay apart.
  const maxLanes = Math.max(1, Math.floor((0.5 * rowGap) / LANE_GAP) + 1);

  const positions = new Map();
  for (const [key, members] of cells) {
    const [level, pos] = key.split(":").map(Number);
    members.sort(cellOrder);
    const { x0, x1 } = columns[pos];
    const w = Math.max(x1 - x0 - 8, 1);
    const isLogit = level === nLevels - 1;
    const spacing = isLogit ? LOGIT_SPACING : NODE_SPACING * 1.8;
    const lanes = isLogit
      ? 1
      : Math.min(maxLanes, Math.ceil((members.length * NODE_SPACING) / w), members.length);
    const perLane = Math.ceil(members.length / lanes);
    const step = Math.min(spacing, w / perLane);
    members.forEach((node, i) => {
      const lane = Math.floor(i / perLane);
      const slot = i % perLane;
      const inLane = Math.min(perLane, members.length - lane * perLane);
      const start = (x0 + x1) / 2 - (step * (inLane - 1)) / 2;
      const dy = (lane - (lanes - 1) / 2) * LANE_GAP;
      positions.set(node.node_id, { x: start + slot * step, y: rows[level].y + dy });
    });
  }
  return { positions, width, height, nLayers, rows, columns };
}

/**
 * Split `inner` pixels among columns. When the needs fit, each column is scaled up alike; when
 * they do not, every column first gets its floor (all floors shrunk alike if even they do not
 * fit) and the rest is shared in proportion to the need above the floor.
 */
export function columnWidths(need, inner, floor = need.map(() => MIN_COLUMN)) {
  const total = need.reduce((a, b) => a + b, 0);
  if (total <= inner) return need.map((n) => (n * inner) / total);
  const floorTotal = floor.reduce((a, b) => a + b, 0);
  const shrink = Math.min(1, inner / floorTotal);
  const base = floor.map((f) => f * shrink);
  const extra = need.map((n, i) => Math.max(n - base[i], 0));
  const extraTotal = extra.reduce((a, b) => a + b, 0);
  const spare = inner - base.reduce((a, b) => a + b, 0);
  return base.map((b, i) => b + (extraTotal > 0 ? (spare * extra[i]) / extraTotal : spare / need.length));
}
