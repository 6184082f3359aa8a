// Text that must fit: canvas labels are truncated with an ellipsis to the room they have (their
// placement is in axis.js). Pure functions of a `measure(text) -> width` callback, so they are
// testable without a canvas.

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
