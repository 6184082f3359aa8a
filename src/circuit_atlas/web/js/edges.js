// Edges as the painter sees them: grouped by sign and strength into typed arrays of node
// indices, styled per group, traced into canvas paths clipped to the plot. Pure functions of
// arrays, so thousands of edges cost a few loops and a handful of stroke calls.

import { NEGATIVE, POSITIVE } from "./util.js";

export const STRENGTH_BUCKETS = 5;
const WIDE_GROUP_MAX = 800; // groups with more edges than this are drawn as hairlines

/** The part of segment (ax, ay)–(bx, by) inside a rectangle, or null (Liang–Barsky). */
export function clipSegment(ax, ay, bx, by, x0, y0, x1, y1) {
  const dx = bx - ax;
  const dy = by - ay;
  let t0 = 0;
  let t1 = 1;
  const edges = [
    [-dx, ax - x0],
    [dx, x1 - ax],
    [-dy, ay - y0],
    [dy, y1 - ay],
  ];
  for (const [p, q] of edges) {
    if (p === 0) {
      if (q < 0) return null; // parallel to this edge and outside it
      continue;
    }
    const r = q / p;
    if (p < 0) {
      if (r > t1) return null;
      if (r > t0) t0 = r;
    } else {
      if (r < t0) return null;
      if (r < t1) t1 = r;
    }
  }
  return [ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy];
}

/**
 * Edges grouped by sign and strength (|weight| / `refWeight`, capped at 1), weakest group
 * first; each group holds typed arrays of node indices. `edges` = {source, target, weight}.
 */
export function packEdges(edges, refWeight) {
  const n = edges.weight.length;
  const group = new Uint8Array(n);
  const counts = new Array(STRENGTH_BUCKETS * 2).fill(0);
  for (let j = 0; j < n; j += 1) {
    const w = edges.weight[j];
    const strength = Math.min(1, Math.abs(w) / refWeight);
    const level = Math.min(STRENGTH_BUCKETS - 1, Math.floor(strength * STRENGTH_BUCKETS));
    const g = level * 2 + (w >= 0 ? 0 : 1);
    group[j] = g;
    counts[g] += 1;
  }
  const packed = [];
  for (let g = 0; g < counts.length; g += 1) {
    if (!counts[g]) continue;
    const source = new Int32Array(counts[g]);
    const target = new Int32Array(counts[g]);
    let k = 0;
    for (let j = 0; j < n; j += 1) {
      if (group[j] !== g) continue;
      source[k] = edges.source[j];
      target[k] = edges.target[j];
      k += 1;
    }
    const level = (Math.floor(g / 2) + 0.5) / STRENGTH_BUCKETS;
    packed.push({ source, target, level, positive: g % 2 === 0, count: counts[g] });
  }
  return packed;
}

/** Stroke colour, opacity and width of a group; `veil`: the hovered node's edges over the
 * faded graph. Wide translucent lines cost several times more to rasterise in software, so only
 * small groups get them. */
export function edgeStyle(ctx, group, veil, alpha = 1) {
  const { level } = group;
  ctx.strokeStyle = group.positive ? POSITIVE : NEGATIVE;
  ctx.globalAlpha = veil ? 0.25 + 0.7 * level : (0.1 + 0.45 * level) * alpha;
  const wide = veil ? 0.8 + 3.6 * level : 0.4 + 2.6 * level;
  ctx.lineWidth = group.count > WIDE_GROUP_MAX ? Math.min(0.8, wide) : wide;
}

/**
 * Add edges [from, to) of a group to the current path, each clipped to `plot` ({x0, y0, x1, y1})
 * and skipped when nothing of it is inside or an end is not drawn (NaN in `sx`); returns how
 * many were added.
 */
export function traceEdges(ctx, group, from, to, sx, sy, plot) {
  const { x0, y0, x1, y1 } = plot;
  let added = 0;
  for (let j = from; j < to; j += 1) {
    const a = group.source[j];
    const b = group.target[j];
    const ax = sx[a];
    const ay = sy[a];
    const bx = sx[b];
    const by = sy[b];
    if (ax !== ax || bx !== bx) continue; // NaN: a node that is not drawn
    const inside = ax >= x0 && ax <= x1 && bx >= x0 && bx <= x1 && ay >= y0 && ay <= y1 && by >= y0 && by <= y1;
    if (inside) {
      ctx.moveTo(ax, ay);
      ctx.lineTo(bx, by);
      added += 1;
      continue;
    }
    const seg = clipSegment(ax, ay, bx, by, x0, y0, x1, y1);
    if (!seg) continue;
    ctx.moveTo(seg[0], seg[1]);
    ctx.lineTo(seg[2], seg[3]);
    added += 1;
  }
  return added;
}
