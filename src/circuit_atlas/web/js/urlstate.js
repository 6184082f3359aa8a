// The view state that lives in the URL, so a link restores what the user was looking at.
// Parameter names follow circuit-tracer's frontend / Neuronpedia: pinnedIds (comma-joined),
// supernodes (JSON [[label, id, ...], ...]), clickedId, pruningThreshold; plus graph and
// edgeThreshold.

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
  const query = params.toString();
  const url = `${window.location.pathname}${query ? `?${query}` : ""}`;
  window.history.replaceState(null, "", url);
  return url;
}
