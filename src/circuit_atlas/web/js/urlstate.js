// The view state that lives in the URL, so a link restores what the user was looking at.
// Parameter names follow circuit-tracer's frontend / Neuronpedia: pinnedIds (comma-joined),
// supernodes (JSON [[label, id, ...], ...]), clickedId, pruningThreshold; plus graph,
// edgeThreshold and the open attention panel: attentionSource, attentionTarget (node ids of the
// shown edge) and attentionHead ("layer.head", the chosen head).

function parseThreshold(text) {
  if (text === null || text === "") return null;
  const value = Number(text);
  return Number.isFinite(value) && value >= 0 && value <= 1 ? value : null;
}

function parseSupernodes(text) {
  if (!text) return [];
  try {
    const groups = JSON.parse(text);
    if (!Array.isArray(groups)) return [];
    return groups
      .filter((g) => Array.isArray(g) && g.length >= 2 && g.every((x) => typeof x === "string"))
      .map(([label, ...members]) => ({ name: label, members }));
  } catch {
    return [];
  }
}

const HEAD = /^\d{1,4}\.\d{1,4}$/;
const MAX_ID = 200; // longer "ids" are not node ids: ignored

/** The attention panel's edge and head, or null; malformed values are dropped (the panel then
 * also checks that the ids name an edge it can explain). */
function parseAttention(params) {
  const source = params.get("attentionSource");
  const target = params.get("attentionTarget");
  const ok = (id) => typeof id === "string" && id.length > 0 && id.length <= MAX_ID;
  if (!ok(source) || !ok(target)) return null;
  const head = params.get("attentionHead");
  return { source, target, head: head && HEAD.test(head) ? head : null };
}

export function readUrlState(search = window.location.search) {
  const params = new URLSearchParams(search);
  const pinned = (params.get("pinnedIds") || "").split(",").map((s) => s.trim()).filter(Boolean);
  return {
    graph: params.get("graph") || params.get("slug") || null,
    pinnedIds: [...new Set(pinned)],
    supernodes: parseSupernodes(params.get("supernodes")),
    clickedId: params.get("clickedId") || null,
    nodeThreshold: parseThreshold(params.get("pruningThreshold")),
    edgeThreshold: parseThreshold(params.get("edgeThreshold")),
    attention: parseAttention(params),
  };
}

export function writeUrlState(state) {
  const params = new URLSearchParams();
  if (state.graph) params.set("graph", state.graph);
  if (state.nodeThreshold !== null && state.nodeThreshold !== undefined) {
    params.set("pruningThreshold", String(state.nodeThreshold));
  }
  if (state.edgeThreshold !== null && state.edgeThreshold !== undefined) {
    params.set("edgeThreshold", String(state.edgeThreshold));
  }
  if (state.pinnedIds && state.pinnedIds.length) params.set("pinnedIds", state.pinnedIds.join(","));
  if (state.supernodes && state.supernodes.length) {
    params.set("supernodes", JSON.stringify(state.supernodes.map((s) => [s.name, ...s.members])));
  }
  if (state.clickedId) params.set("clickedId", state.clickedId);
  if (state.attention) {
    params.set("attentionSource", state.attention.source);
    params.set("attentionTarget", state.attention.target);
    if (state.attention.head) params.set("attentionHead", state.attention.head);
  }
  const query = params.toString();
  const url = `${window.location.pathname}${query ? `?${query}` : ""}`;
  window.history.replaceState(null, "", url);
  return url;
}
