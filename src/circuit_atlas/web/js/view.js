// Zoom and pan of the link graph as one affine map, screen = world · (kx, ky) + t. Crowding in
// an attribution graph is horizontal (many features of a layer at one position), while the
// layers fit the height, so the vertical zoom grows more slowly: ky = k^Y_EXPONENT, kx = k.
// The layout is computed to fit the pane, so k = 1, t = 0 is the "fit" view; zooming never goes
// below it and panning never uncovers empty space past the plot, which keeps every view a part
// of the fitted one and makes "fit" a plain reset.

export const MAX_ZOOM = 40;
export const Y_EXPONENT = 0.5;

export class ViewTransform {
  constructor() {
    this.k = 1;
    this.tx = 0;
    this.ty = 0;
    // The plot rectangle in world (= fitted screen) coordinates; pan is clamped to it.
    this.bounds = { x0: 0, y0: 0, x1: 1, y1: 1 };
  }

  get kx() {
    return this.k;
  }

  get ky() {
    return this.k ** Y_EXPONENT;
  }

  /** True when this is the fitted view. */
  get isFit() {
    return this.k === 1 && this.tx === 0 && this.ty === 0;
  }

  setBounds(bounds) {
    this.bounds = { ...bounds };
    this.clamp();
  }

  reset() {
    this.k = 1;
    this.tx = 0;
    this.ty = 0;
  }

  toScreen(x, y) {
    return { x: x * this.kx + this.tx, y: y * this.ky + this.ty };
  }

  toWorld(x, y) {
    return { x: (x - this.tx) / this.kx, y: (y - this.ty) / this.ky };
  }

  /** Multiply the zoom by `factor`, keeping the world point under (cx, cy) where it is. */
  zoomAt(cx, cy, factor) {
    const world = this.toWorld(cx, cy);
    this.k = Math.min(MAX_ZOOM, Math.max(1, this.k * factor));
    this.tx = cx - world.x * this.kx;
    this.ty = cy - world.y * this.ky;
    this.clamp();
  }

  panBy(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.clamp();
  }

  /** Move so that world point (x, y) sits at screen point (cx, cy), as far as the clamp allows. */
  centreOn(x, y, cx, cy) {
    this.tx = cx - x * this.kx;
    this.ty = cy - y * this.ky;
    this.clamp();
  }

  /**
   * Keep the scaled plot covering the unscaled one: x0·kx + tx ≤ x0 and x1·kx + tx ≥ x1, so
   * tx ∈ [x1(1 − kx), x0(1 − kx)] (same for y). At k = 1 this forces t = 0.
   */
  clamp() {
    const { x0, y0, x1, y1 } = this.bounds;
    const { kx, ky } = this;
    this.tx = Math.min(x0 * (1 - kx), Math.max(x1 * (1 - kx), this.tx));
    this.ty = Math.min(y0 * (1 - ky), Math.max(y1 * (1 - ky), this.ty));
    if (Math.abs(this.tx) < 1e-9) this.tx = 0;
    if (Math.abs(this.ty) < 1e-9) this.ty = 0;
  }

  copy() {
    return { k: this.k, tx: this.tx, ty: this.ty };
  }
}

/** Wheel delta in pixels whatever the event's deltaMode (lines, pages). */
export function wheelPixels(event) {
  if (event.deltaMode === 1) return event.deltaY * 16;
  if (event.deltaMode === 2) return event.deltaY * 400;
  return event.deltaY;
}
