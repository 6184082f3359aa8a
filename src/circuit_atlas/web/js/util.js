// Small helpers shared by the explorer's modules: DOM building, node classification, formatting.

/** Create an element: el("div", {class: "x", onclick: fn}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(node.style, value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element the way `el` makes HTML ones (the subgraph pane, the diff view and the feature histogram draw SVG). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove all children of a node. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Inverse Cantor pairing (docs/graph-json.md §6): feature value -> [layer, index]. */
export function cantorUnpair(value) {
  const w = Math.floor((Math.sqrt(8 * value + 1) - 1) / 2);
  const t = (w * w + w) / 2;
  const index = value - t;
  return [w - index, index];
}

/** "feature" | "error" | "embedding" | "logit", from feature_type (never from the id). */
export function nodeKind(node) {
  const type = node.feature_type || "";
  if (type === "embedding") return "embedding";
  if (type === "logit") return "logit";
  if (type.includes("error")) return "error";
  return "feature";
}

/** Layer and feature index of a feature node, or null (schema 1: Cantor; else raw index). */
export function featureCoords(node, schemaVersion) {
  if (nodeKind(node) !== "feature" || node.feature === null || node.feature === undefined) {
    return null;
  }
  if (schemaVersion === 1) {
    const [layer, index] = cantorUnpair(Number(node.feature));
    return { layer, index };
  }
  return { layer: Number(node.layer), index: Number(node.feature) };
}

/** Show invisible characters the way circuit-tracer's frontend does. */
export function showToken(text) {
  return String(text ?? "")
    .replace(/\n/g, "⏎")
    .replace(/\t/g, "→")
    .replace(/\r/g, "↵");
}

export function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 10 ** -digits || abs >= 1e5)) return value.toExponential(1);
  return value.toFixed(digits);
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.flush = (...args) => {
    clearTimeout(timer);
    fn(...args);
  };
  return wrapped;
}

export const POSITIVE = "#e07b24"; // orange: excitatory edges
export const NEGATIVE = "#2f6fd6"; // blue: inhibitory edges

/** Edge colour by sign. */
export function edgeColor(weight) {
  return weight >= 0 ? POSITIVE : NEGATIVE;
}

/** A short random id for new supernodes. */
export function newId(prefix) {
  const rand = Math.random().toString(36).slice(2, 8);
  return `${prefix}-${Date.now().toString(36)}${rand}`;
}

/** A short description for nodes without a label: "L3 #1204 “ cat” @7", "Error L2 “ cat” @7",
 * "Emb “ and” @12" (the position, since one token can occur at many). */
export function describeNode(node, tokens = [], schemaVersion = 1) {
  if (!node) return "";
  const kind = nodeKind(node);
  const pos = node.ctx_idx;
  const token = tokens[pos];
  const at = `${token !== undefined ? ` “${showToken(token)}”` : ""}${pos !== undefined && pos !== null ? ` @${pos}` : ""}`;
  if (kind === "feature") {
    const coords = featureCoords(node, schemaVersion);
    return coords ? `L${coords.layer} #${coords.index}${at}` : `feature${at}`;
  }
  if (kind === "error") return `Error L${node.layer}${at}`;
  if (kind === "embedding") return `Emb${at}`;
  return logitText(node);
}

/** Where a node sits, for rows that show a label: "@12" (logits: the output they explain). */
export function positionTag(node) {
  if (!node || nodeKind(node) === "logit" || node.ctx_idx === undefined || node.ctx_idx === null) return "";
  return `@${node.ctx_idx}`;
}

/** The output token of a logit node, from its clerp `Output "tok" (p=…)` (the graph-JSON form). */
export function logitToken(node) {
  const match = /"(.*)"/s.exec(node.clerp || "");
  return match ? match[1] : String(node.feature ?? "");
}

/** A logit node's probability: `token_prob`, else the `p=` of its clerp, else null. */
export function logitProbability(node) {
  if (typeof node.token_prob === "number" && node.token_prob > 0) return node.token_prob;
  const match = /\(p=([0-9.eE+-]+)\)/.exec(node.clerp || "");
  return match ? Number(match[1]) : null;
}

/** A probability as a short percentage: "77%", "3.9%", "0.42%", "<0.01%". */
export function formatProbability(p) {
  if (p === null || p === undefined || !Number.isFinite(p)) return "";
  const pct = 100 * p;
  if (pct >= 9.95) return `${pct.toFixed(0)}%`;
  if (pct >= 0.995) return `${pct.toFixed(1)}%`;
  if (pct >= 0.01) return `${pct.toFixed(2)}%`;
  return "<0.01%";
}

/** A logit's label on the graph: its token and probability, e.g. "austin 77%". */
export function logitText(node) {
  const p = formatProbability(logitProbability(node));
  return `${showToken(logitToken(node))}${p ? ` ${p}` : ""}`;
}

/** Messages from the server may name files; the UI never shows a filesystem path. */
export function withoutPaths(text) {
  return String(text ?? "").replace(/(?:[A-Za-z]:)?(?:[\\/][^\s\\/'"`)]+){2,}[\\/]?/g, (path) => {
    const parts = path.split(/[\\/]/).filter(Boolean);
    return `…/${parts[parts.length - 1]}`;
  });
}
