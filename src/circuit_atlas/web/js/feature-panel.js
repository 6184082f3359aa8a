// Feature details from the optional feature store: top-activating examples with per-token
// highlighting, the tokens the feature promotes / suppresses (the server leaves special tokens
// out) and the density of its activations, with this node's activation marked. Hidden when there
// is no store.

import { api } from "./api.js";
import { clear, el, featureCoords, fmt, showToken, svg } from "./util.js";

const MAX_EXAMPLES_PER_GROUP = 6;
const CONTEXT = 12;
const HIST_W = 320;
const HIST_H = 64;

export class FeaturePanel {
  constructor(root, app) {
    this.root = root;
    this.app = app;
    this.request = 0;
    this.root.hidden = true;
  }

  async show(node) {
    const ticket = ++this.request;
    const coords = node ? featureCoords(node, this.app.schemaVersion()) : null;
    if (!coords || !this.app.state.featuresAvailable) {
      this.root.hidden = true;
      return;
    }
    let data;
    try {
      data = await api.feature(coords.layer, coords.index);
    } catch (error) {
      if (ticket !== this.request) return;
      this.root.hidden = false;
      clear(this.root).append(el("div", { class: "error" }, error.message));
      return;
    }
    if (ticket !== this.request) return;
    if (!data.feature) {
      this.root.hidden = false;
      clear(this.root).append(
        el("h2", {}, `Feature L${coords.layer} #${coords.index}`),
        el("div", { class: "empty small" }, "No details in the feature store."),
      );
      return;
    }
    this.render(coords, node, data.feature);
  }

  render(coords, node, feature) {
    this.root.hidden = false;
    // The user's own label wins; the feature store's label is the fallback for graphs traced
    // without one, and is shown separately when the two differ so neither is hidden.
    const own = this.app.labelOf(node);
    const stored = feature.label || "";
    const title = own || stored;
    const parts = [
      el(
        "h2",
        {},
        `Feature L${coords.layer} #${coords.index}`,
        el("span", { class: "count" }, title ? ` — ${title}` : ""),
      ),
    ];
    if (own && stored && own !== stored) {
      parts.push(el("div", { class: "meta store-label" }, `dashboard label: ${stored}`));
    }
    const stats = [];
    if (node.activation !== null && node.activation !== undefined) stats.push(`activation here ${fmt(node.activation, 3)}`);
    if (feature.activation_frequency !== undefined) stats.push(`active on ${fmt(100 * feature.activation_frequency, 3)}% of tokens`);
    if (feature.act_max !== undefined) stats.push(`max ${fmt(feature.act_max, 2)}`);
    if (stats.length) parts.push(el("div", { class: "meta" }, stats.join(" · ")));
    parts.push(this.histogram(feature, node.activation));
    parts.push(this.logitRow("Promotes", feature.top_logits, "pos"));
    parts.push(this.logitRow("Suppresses", feature.bottom_logits, "neg"));
    const actMax = feature.act_max || this.maxAct(feature) || 1;
    for (const group of feature.examples_quantiles || []) {
      parts.push(el("h3", {}, group.quantile_name || "Examples"));
      for (const example of (group.examples || []).slice(0, MAX_EXAMPLES_PER_GROUP)) {
        parts.push(this.example(example, actMax));
      }
    }
    clear(this.root).append(...parts.filter(Boolean));
  }

  /**
   * Bars of the store's activation histogram (equal-width bins over [0, act_max]); heights on a
   * log scale, since the smallest activations usually outnumber the largest by orders of
   * magnitude. A red line marks this node's activation.
   */
  histogram(feature, activation) {
    const bars = Array.isArray(feature.histogram) ? feature.histogram.map(Number) : [];
    const top = Math.max(0, ...bars.filter(Number.isFinite));
    const actMax = Number(feature.act_max) || 0;
    if (!bars.length || top <= 0 || actMax <= 0) return null;
    const plotH = HIST_H - 14;
    const w = HIST_W / bars.length;
    const scale = Math.log1p(top);
    const chart = svg("svg", { width: HIST_W, height: HIST_H, class: "hist", role: "img", "data-testid": "feature-histogram" });
    bars.forEach((count, i) => {
      if (!(count > 0)) return;
      const h = Math.max(1, (plotH * Math.log1p(count)) / scale);
      const lo = (i * actMax) / bars.length;
      const hi = ((i + 1) * actMax) / bars.length;
      chart.append(
        svg("rect", { x: i * w + 0.5, y: plotH - h, width: Math.max(w - 1, 0.5), height: h, class: "hist-bar" },
          svg("title", {}, `${fmt(lo, 2)} – ${fmt(hi, 2)}: ${Math.round(count)} tokens`)),
      );
    });
    chart.append(svg("line", { x1: 0, x2: HIST_W, y1: plotH + 0.5, y2: plotH + 0.5, class: "hist-axis" }));
    chart.append(svg("text", { x: 0, y: HIST_H - 2, class: "hist-tick" }, "0"));
    chart.append(svg("text", { x: HIST_W, y: HIST_H - 2, class: "hist-tick", "text-anchor": "end" }, fmt(actMax, 2)));
    if (Number.isFinite(activation) && activation > 0) {
      const x = Math.min(HIST_W - 1, (HIST_W * activation) / actMax);
      chart.append(
        svg("line", { x1: x, x2: x, y1: 0, y2: plotH, class: "hist-here", "data-testid": "histogram-here" },
          svg("title", {}, `this node: ${fmt(activation, 3)}`)),
      );
    }
    return el(
      "div",
      { class: "hist-box" },
      el("h3", {}, "Activation density", el("span", { class: "count" }, "log scale")),
      chart,
    );
  }

  maxAct(feature) {
    let best = 0;
    for (const group of feature.examples_quantiles || []) {
      for (const ex of group.examples || []) {
        for (const a of ex.tokens_acts_list || []) best = Math.max(best, a);
      }
    }
    return best;
  }

  logitRow(title, tokens, cls) {
    if (!tokens || !tokens.length) return null;
    return el(
      "div",
      { class: "logit-row" },
      el("span", { class: "logit-title" }, title),
      ...tokens.slice(0, 12).map((t) => el("code", { class: `chip chip-${cls}` }, showToken(t))),
    );
  }

  example(example, actMax) {
    const tokens = example.tokens || [];
    const acts = example.tokens_acts_list || [];
    let focus = example.train_token_ind;
    if (focus === undefined || focus === null) {
      focus = acts.reduce((best, a, i) => (a > (acts[best] ?? -Infinity) ? i : best), 0);
    }
    const start = Math.max(0, focus - CONTEXT);
    const end = Math.min(tokens.length, focus + CONTEXT / 2 + 1);
    const line = el("div", {
      class: `example${example.is_repeated_datapoint ? " repeated" : ""}`,
      "data-testid": "feature-example",
    });
    for (let i = start; i < end; i += 1) {
      const strength = Math.max(0, Math.min(1, (acts[i] || 0) / actMax));
      line.append(
        el(
          "span",
          {
            class: `tok${i === focus ? " focus" : ""}`,
            title: `${fmt(acts[i] || 0, 3)}`,
            style: strength > 0 ? { background: `rgba(224, 123, 36, ${0.12 + 0.7 * strength})` } : {},
          },
          showToken(tokens[i]),
        ),
      );
    }
    return line;
  }
}
