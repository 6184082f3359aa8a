// Node placement: layers bottom-to-top (token embeddings at the bottom, logits at the top) and
// token positions left-to-right. A position's column is as wide as its most crowded layer
// needs, so busy positions get room and quiet ones stay narrow.

import { nodeKind } from "./util.js";

export const MARGIN = { left: 56, right: 24, top: 28, bottom: 58 };
const NODE_SPACING = 11;
const LOGIT_SPACING = 58; // logits carry a token label above them
const MIN_COLUMN = 44;

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

  const need = new Array(nPos).fill(MIN_COLUMN);
  for (const [key, members] of cells) {
    const [level, pos] = key.split(":").map(Number);
    const spacing = level === nLayers + 1 ? LOGIT_SPACING : NODE_SPACING;
    need[pos] = Math.max(need[pos], members.length * spacing + 12);
  }
  const inner = Math.max(availableWidth - MARGIN.left - MARGIN.right, 100);
  const total = need.reduce((a, b) => a + b, 0);
  const scale = total < inner ? inner / total : 1;
  const columns = [];
  let x = MARGIN.left;
  for (let pos = 0; pos < nPos; pos += 1) {
    const w = need[pos] * scale;
    columns.push({ x0: x, x1: x + w, token: tokens[pos] ?? "" });
    x += w;
  }
  const width = x + MARGIN.right;

  const nLevels = nLayers + 2;
  const usable = Math.max(height - MARGIN.top - MARGIN.bottom, 60);
  const rows = [];
  for (let level = 0; level < nLevels; level += 1) {
    const y = MARGIN.top + usable - (level * usable) / (nLevels - 1);
    let label = `L${level - 1}`;
    if (level === 0) label = "Emb";
    if (level === nLevels - 1) label = "Logit";
    rows.push({ y, label });
  }

  const positions = new Map();
  for (const [key, members] of cells) {
    const [level, pos] = key.split(":").map(Number);
    members.sort(cellOrder);
    const { x0, x1 } = columns[pos];
    const w = x1 - x0 - 8;
    const spacing = level === nLevels - 1 ? LOGIT_SPACING : NODE_SPACING * 1.8;
    const step = Math.min(spacing, w / members.length);
    const start = (x0 + x1) / 2 - (step * (members.length - 1)) / 2;
    members.forEach((node, i) => {
      positions.set(node.node_id, { x: start + i * step, y: rows[level].y });
    });
  }
  return { positions, width, height, nLayers, rows, columns };
}
