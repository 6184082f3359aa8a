// Text that must fit: canvas labels are truncated with an ellipsis to the room they have, and
// the logit labels above the top row are spread over a few lines so that no two overlap. Pure
// functions of a `measure(text) -> width` callback, so they are testable without a canvas.

export const ELLIPSIS = "…";

/** `measure(text) -> px` for a CSS font, through a canvas, cached (labels are re-fitted often). */
export function canvasMeasurer(font) {
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = font;
  const cache = new Map();
  return (text) => {
    let width = cache.get(text);
    if (width === undefined) {
      width = ctx.measureText(text).width;
      if (cache.size > 5000) cache.clear();
      cache.set(text, width);
    }
    return width;
  };
}

/**
 * The longest prefix of `text` (plus "…" when cut) whose width is at most `room`; "" when not
 * even one character and the ellipsis fit. Binary search, since measuring is the costly part.
 */
export function fitText(text, room, measure) {
  const full = String(text ?? "");
  if (measure(full) <= room) return full;
  let lo = 0; // longest prefix known to fit (with ellipsis)
  let hi = full.length - 1;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (measure(full.slice(0, mid) + ELLIPSIS) <= room) lo = mid;
    else hi = mid - 1;
  }
  return lo > 0 ? full.slice(0, lo) + ELLIPSIS : "";
}

/**
 * Place labels centred above anchors at `items[i].x`, on up to `lines` stacked lines, inside
 * [left, right]. Greedy from left to right: a label goes on the first line where it clears the
 * previous label by `gap`; when it fits on none it goes on the line with the most room and is
 * cut to that room, or dropped ("" text) when even "x…" does not fit there.
 * Returns, per item in input order, {text, line, x0, x1} (x0/x1: the drawn extent).
 */
export function placeLabels(items, { measure, lines = 2, gap = 4, left = -Infinity, right = Infinity }) {
  const order = items.map((_, i) => i).sort((a, b) => items[a].x - items[b].x);
  const lastRight = new Array(lines).fill(left - gap);
  const placed = new Array(items.length);
  for (const i of order) {
    const { x, text } = items[i];
    const width = measure(text);
    const span = (w) => {
      // Centred on the anchor, shifted inwards at the edges of the allowed range.
      const x0 = Math.min(Math.max(x - w / 2, left), right - w);
      return { x0, x1: x0 + w };
    };
    let chosen = -1;
    for (let line = 0; line < lines; line += 1) {
      const { x0 } = span(width);
      if (x0 >= lastRight[line] + gap && width <= right - left) {
        chosen = line;
        break;
      }
    }
    if (chosen >= 0) {
      const { x0, x1 } = span(width);
      lastRight[chosen] = x1;
      placed[i] = { text, line: chosen, x0, x1 };
      continue;
    }
    // No line has room for the whole label: cut it to the room on the emptiest line. The cut
    // label starts where that line is free and may reach as far right as it is wide on the left
    // of its anchor (it stays roughly centred), and never past `right`.
    let best = 0;
    for (let line = 1; line < lines; line += 1) if (lastRight[line] < lastRight[best]) best = line;
    const start = Math.max(lastRight[best] + gap, left);
    const room = Math.min(2 * (x - start), right - start);
    const cut = room > 0 ? fitText(text, room, measure) : "";
    if (!cut) {
      placed[i] = { text: "", line: -1, x0: x, x1: x };
      continue;
    }
    const { x0, x1 } = span(measure(cut));
    const x0c = Math.max(x0, start);
    const x1c = x0c + (x1 - x0);
    lastRight[best] = x1c;
    placed[i] = { text: cut, line: best, x0: x0c, x1: x1c };
  }
  return placed;
}
