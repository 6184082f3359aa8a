// Where the token labels (under the plot) and the logit labels (above the top row) go for the
// current view, so that no two overlap. Pure functions of the layout, the view and a
// `measure(text) -> px` callback, so they are testable without a canvas.
//
// Token labels are horizontal ("flat") when the layout gave every column room for its token, and
// otherwise rise at 45° from their column: parallel strips that clear each other whenever the
// columns are at least MIN_SPACING apart. Zoomed out below that, labels are thinned, busiest
// columns first. Every label carries its position number; collapsed runs read "⋯ 12–40".

import { ELLIPSIS, fitText } from "./labels.js";
import { ANGLE, MAX_LABEL_PX, NUMBER_ROW, SCROLL_STRIP } from "./layout.js";
import { showToken } from "./util.js";

export const TOKEN_LINE = 13; // height of a token label's box
export const NUMBER_LINE = 11;
const MIN_SPACING = TOKEN_LINE / Math.sin(ANGLE) + 0.5; // anchors closer than this would touch
const NUMBER_GAP = 4;
const LOGIT_LINE = 12;
const LOGIT_GAP = 6;

function gapText(col) {
  return `${ELLIPSIS} ${col.first}–${col.last}`;
}

/** The four corners of a label of width w and height h whose text ends at (ax, ay) and rises at
 * `angle` (0 = horizontal, text centred on ax instead). */
export function labelCorners(ax, ay, w, h, angle) {
  if (angle === 0) {
    return [[ax - w / 2, ay], [ax + w / 2, ay], [ax + w / 2, ay + h], [ax - w / 2, ay + h]];
  }
  const ux = Math.cos(angle);
  const uy = -Math.sin(angle); // along the text, up and to the right on the screen
  const nx = -uy * (h / 2); // half the height, across the text
  const ny = ux * (h / 2);
  const bx = ax - w * ux;
  const by = ay - w * uy;
  return [[bx - nx, by - ny], [ax - nx, ay - ny], [ax + nx, ay + ny], [bx + nx, by + ny]];
}

function boundsOf(corners) {
  const xs = corners.map((c) => c[0]);
  const ys = corners.map((c) => c[1]);
  return { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) };
}

/** Whether (x, y) lies in the convex polygon `corners` (clockwise or not). */
export function insideCorners(corners, x, y) {
  let sign = 0;
  for (let i = 0; i < corners.length; i += 1) {
    const [ax, ay] = corners[i];
    const [bx, by] = corners[(i + 1) % corners.length];
    const cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax);
    if (cross !== 0) {
      if (sign !== 0 && Math.sign(cross) !== sign) return false;
      sign = Math.sign(cross);
    }
  }
  return true;
}

/** Visible columns in priority order: busiest first, then the later position. */
function byPriority(items) {
  return items.slice().sort((a, b) => b.col.count - a.col.count || b.col.first - a.col.first);
}

/** Keep items whose `lo..hi` extent clears every already kept one by `gap` (priority order). */
function thin(items, gap) {
  const kept = [];
  for (const item of items) {
    if (kept.every((k) => item.hi + gap <= k.lo || k.hi + gap <= item.lo)) kept.push(item);
  }
  return kept;
}

/**
 * Token labels for the view. `layout`: computeLayout's result; `view`: a ViewTransform;
 * `screenPlot`: {x0, x1} of the plot on the screen; `measure` / `measureNumber`: widths in the
 * token and number fonts. Returns [{pos, last, gap, text, full, number, angle, ax, ay, width,
 * height, corners, x0, x1, y0, y1, cx0, cx1, numberBox}] (`cx0..cx1`: the column on the
 * screen, for hovering; `numberBox`: null when the number is thinned out).
 */
export function placeTokenLabels(layout, view, screenPlot, measure, measureNumber) {
  const bandTop = layout.height - layout.band;
  const flat = layout.labelMode === "flat";
  const angle = flat ? 0 : ANGLE;
  const visible = [];
  layout.columns.forEach((col) => {
    const a = view.toScreen(col.x0, 0).x;
    const b = view.toScreen(col.x1, 0).x;
    const cx0 = Math.max(a, screenPlot.x0);
    const cx1 = Math.min(b, screenPlot.x1);
    if (cx1 - cx0 < 1) return;
    let mid = flat ? (cx0 + cx1) / 2 : (a + b) / 2;
    if (!flat && (mid < screenPlot.x0 || mid > screenPlot.x1)) return;
    // Rotated text reaches half its height past its anchor: keep it on the canvas (before
    // thinning, so that the shifted anchor is the one kept apart from the others).
    if (!flat) mid = Math.min(mid, screenPlot.x1 - (TOKEN_LINE / 2) * Math.sin(angle) - 1);
    visible.push({ col, mid, cx0, cx1, lo: mid, hi: mid });
  });
  const shown = flat ? visible : thin(byPriority(visible), MIN_SPACING);
  const out = [];
  for (const { col, mid, cx0, cx1 } of shown) {
    const full = col.gap ? gapText(col) : showToken(col.token);
    let text;
    let ax;
    let ay;
    if (flat) {
      text = col.gap ? ELLIPSIS : fitText(full, cx1 - cx0 - 4, measure);
      ax = mid;
      ay = bandTop + 6;
    } else {
      ax = mid;
      ay = bandTop + NUMBER_ROW + 6; // the top corner of the rotated text clears the numbers
      const room = Math.min(
        MAX_LABEL_PX,
        (ax - 2) / Math.cos(angle), // the canvas's left edge
        (layout.height - (layout.scrolls ? SCROLL_STRIP : 0) - ay - 2) / Math.sin(angle) - TOKEN_LINE / 2,
      );
      text = fitText(full, room, measure);
    }
    const width = measure(text);
    const corners = labelCorners(ax, ay, width, TOKEN_LINE, angle);
    out.push({
      pos: col.first,
      last: col.last,
      gap: col.gap,
      text,
      full,
      number: col.gap ? "" : String(col.first),
      angle,
      ax,
      ay,
      width,
      height: TOKEN_LINE,
      corners,
      ...boundsOf(corners),
      cx0,
      cx1,
      numberBox: null,
    });
  }
  // Numbers: on their own line (below flat labels, above angled ones), thinned alike.
  const numberY = flat ? bandTop + 6 + TOKEN_LINE + 2 : bandTop + 2;
  const numbered = out
    .filter((l) => l.number)
    .map((l) => {
      const w = measureNumber(l.number);
      return { label: l, col: layout.columns[layout.posColumn[l.pos]], lo: l.ax - w / 2, hi: l.ax + w / 2 };
    });
  for (const item of thin(byPriority(numbered), NUMBER_GAP)) {
    item.label.numberBox = { x0: item.lo, x1: item.hi, y0: numberY, y1: numberY + NUMBER_LINE };
  }
  return out;
}

/**
 * Logit labels above their nodes on one line: every one whole and apart; when zoomed out so
 * far that some would touch, the less probable ones are left out (never the most probable).
 * Returns [{id, text, full, top, x0, x1, y0, y1}].
 */
export function placeLogitLabels(layout, view, screenPlot, measure) {
  const items = [];
  layout.logits.forEach((logit, rank) => {
    const p = view.toScreen(logit.x, layout.rows[layout.rows.length - 1].y);
    if (p.x < screenPlot.x0 || p.x > screenPlot.x1) return;
    if (p.y - 8 - LOGIT_LINE < screenPlot.y0 || p.y > screenPlot.y1) return; // scrolled out of view
    const text = logit.text;
    const w = measure(text);
    const x0 = Math.min(Math.max(p.x - w / 2, screenPlot.x0 + 1), screenPlot.x1 - w - 1);
    const bottom = p.y - 8;
    items.push({ id: logit.id, text, full: logit.full, top: rank === 0, rank, x0, x1: x0 + w, y0: bottom - LOGIT_LINE, y1: bottom, lo: x0, hi: x0 + w });
  });
  items.sort((a, b) => a.rank - b.rank);
  return thin(items, LOGIT_GAP).map(({ lo, hi, rank, ...label }) => label);
}
