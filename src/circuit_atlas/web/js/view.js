// Zoom and pan of the link graph as one affine map, screen = world · (kx, ky) + t. Crowding in
// an attribution graph is horizontal (many features of a layer at one position, many positions
// in a long prompt), while the layers fit the height, so the vertical zoom grows more slowly than
// the horizontal one (ky = k^Y_EXPONENT) and never shrinks below 1.
//
// The layout (layout.js) is computed for the pane: its world is as tall as the pane and at least
// as wide. At k = 1 nothing overlaps ("home"); when the world is wider than the pane, home shows
// its right end (the last positions and the logits) and the view scrolls along it. Zooming out
// below 1 (down to `kMin`, where the whole world fits the pane: "fit") gives an overview. Panning
// never uncovers empty space past the plot: the scaled world always covers the screen's plot.

export const MAX_ZOOM = 40;
export const Y_EXPONENT = 0.5;

export class ViewTransform {
  constructor() {
    this.k = 1;
    this.tx = 0;
    this.ty = 0;
    // The plot rectangle in world coordinates, and where it is shown on the screen.
    this.world = { x0: 0, y0: 0, x1: 1, y1: 1 };
    this.screen = { x0: 0, y0: 0, x1: 1, y1: 1 };
    this.kMin = 1;
  }

  get kx() {
    return this.k;
  }

  get ky() {
    return Math.max(1, this.k) ** Y_EXPONENT;
  }

  /** True when the whole world is in view, unzoomed vertically. */
  get isFit() {
    return Math.abs(this.k - this.kMin) < 1e-9 && Math.abs(this.tx - this.fitTx()) < 1e-6 && this.ty === 0;
  }

  /** True at the home zoom (k = 1) and position (the world's right end). */
  get isHome() {
    return this.k === 1 && Math.abs(this.tx - this.homeTx()) < 1e-6 && this.ty === 0;
  }

  /** The world's plot rectangle and the screen rectangle showing it (the same when the world
   * fits the pane, as `setBounds` sets). */
  setFrame(world, screen) {
    this.world = { ...world };
    this.screen = { ...screen };
    const worldWidth = Math.max(world.x1 - world.x0, 1e-9);
    this.kMin = Math.min(1, (screen.x1 - screen.x0) / worldWidth);
    this.k = Math.min(MAX_ZOOM, Math.max(this.kMin, this.k));
    this.clamp();
  }

  setBounds(bounds) {
    this.setFrame(bounds, bounds);
  }

  homeTx() {
    return Math.min(0, this.screen.x1 - this.world.x1);
  }

  fitTx() {
    return this.screen.x0 - this.world.x0 * this.kMin;
  }

  /** k = 1 at the world's right end. */
  home() {
    this.k = 1;
    this.tx = this.homeTx();
    this.ty = 0;
    this.clamp();
  }

  /** The whole world in the pane. */
  fit() {
    this.k = this.kMin;
    this.tx = this.fitTx();
    this.ty = 0;
    this.clamp();
  }

  reset() {
    this.home();
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
    this.k = Math.min(MAX_ZOOM, Math.max(this.kMin, this.k * factor));
    if (Math.abs(this.k - 1) < 1e-3) this.k = 1; // snap to the home zoom
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
   * Keep the scaled world covering the screen's plot: W.x0·kx + tx ≤ S.x0 and
   * W.x1·kx + tx ≥ S.x1, so tx ∈ [S.x1 − W.x1·kx, S.x0 − W.x0·kx] (the same for y).
   */
  clamp() {
    const W = this.world;
    const S = this.screen;
    const { kx, ky } = this;
    const lowX = S.x1 - W.x1 * kx;
    const highX = S.x0 - W.x0 * kx;
    this.tx = lowX > highX ? highX : Math.min(highX, Math.max(lowX, this.tx));
    const lowY = S.y1 - W.y1 * ky;
    const highY = S.y0 - W.y0 * ky;
    this.ty = lowY > highY ? highY : Math.min(highY, Math.max(lowY, this.ty));
    if (Math.abs(this.tx) < 1e-9) this.tx = 0;
    if (Math.abs(this.ty) < 1e-9) this.ty = 0;
  }

  /** The visible share of the world's width: [start, end] as fractions. */
  visibleFraction() {
    const W = this.world;
    const a = this.toWorld(this.screen.x0, 0).x;
    const b = this.toWorld(this.screen.x1, 0).x;
    const span = Math.max(W.x1 - W.x0, 1e-9);
    return [Math.max(0, (a - W.x0) / span), Math.min(1, (b - W.x0) / span)];
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
