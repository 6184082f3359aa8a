// How each kind of node looks: features are circles, errors squares, embeddings and logits
// rounded boxes, the embeddings of collapsed runs thin ticks (sizes: layout.js NODE_BOX). Each
// glyph is rendered once into a small sprite: stamping thousands of sprites costs a fraction of
// filling and stroking thousands of paths.

import { NODE_BOX } from "./layout.js";

export const NODE_STYLE = {
  tick: { fill: "#e6edf8", stroke: "#5b6f8f", r: 5 },
  feature: { fill: "#f6f1e7", stroke: "#7d715f", r: 4.2 },
  error: { fill: "#d6d6d6", stroke: "#8d8d8d", r: 3.4 },
  embedding: { fill: "#e6edf8", stroke: "#5b6f8f", r: 5 },
  logit: { fill: "#efe5f6", stroke: "#7a5a8c", r: 5 },
};

/** Add a node glyph's outline to the current path. */
export function traceGlyph(ctx, kind, x, y) {
  const r = NODE_STYLE[kind].r;
  if (kind === "tick") {
    ctx.rect(x - 1, y - r, 2, r * 2);
  } else if (kind === "feature") {
    ctx.moveTo(x + r, y);
    ctx.arc(x, y, r, 0, Math.PI * 2);
  } else if (kind === "error") {
    ctx.rect(x - r, y - r, r * 2, r * 2);
  } else {
    ctx.roundRect(x - r - 2, y - r, r * 2 + 4, r * 2, 2.5);
  }
}

const sprites = new Map();

/** {canvas, w, h}: the glyph of `kind`, drawn once at the screen's pixel ratio. */
export function glyphSprite(kind) {
  const ratio = window.devicePixelRatio || 1;
  const key = `${kind}@${ratio}`;
  if (!sprites.has(key)) {
    const [hw, hh] = NODE_BOX[kind];
    const w = Math.ceil(hw + 1) * 2;
    const h = Math.ceil(hh + 1) * 2;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const style = NODE_STYLE[kind];
    ctx.beginPath();
    traceGlyph(ctx, kind, w / 2, h / 2);
    ctx.fillStyle = style.fill;
    ctx.strokeStyle = style.stroke;
    ctx.lineWidth = 1.2;
    ctx.fill();
    ctx.stroke();
    sprites.set(key, { canvas, w, h });
  }
  return sprites.get(key);
}
