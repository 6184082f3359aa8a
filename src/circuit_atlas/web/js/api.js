// Thin wrappers over the server's JSON API; every failure becomes an Error with the server's
// message (file paths shortened to their last part: the UI never shows a filesystem path), so
// the UI can show it as is.

import { withoutPaths } from "./util.js";

async function request(method, url, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    let detail = data && data.detail ? data.detail : `${response.status} ${response.statusText}`;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    const error = new Error(withoutPaths(detail));
    error.status = response.status;
    throw error;
  }
  return data;
}

const enc = encodeURIComponent;

function thresholdQuery(nodeThreshold, edgeThreshold) {
  const params = new URLSearchParams();
  if (nodeThreshold !== null && nodeThreshold !== undefined) params.set("node_threshold", nodeThreshold);
  if (edgeThreshold !== null && edgeThreshold !== undefined) params.set("edge_threshold", edgeThreshold);
  const query = params.toString();
  return query ? `?${query}` : "";
}

export const api = {
  graphs: () => request("GET", "api/graphs"),
  graph: (id, nt, et) => request("GET", `api/graphs/${enc(id)}${thresholdQuery(nt, et)}`),
  node: (id, nodeId, nt, et, scope = "view", limit = 200) => {
    const q = thresholdQuery(nt, et);
    const sep = q ? "&" : "?";
    return request(
      "GET",
      `api/graphs/${enc(id)}/nodes/${enc(nodeId)}${q}${sep}scope=${scope}&limit=${limit}`,
    );
  },
  annotations: (id) => request("GET", `api/graphs/${enc(id)}/annotations`),
  patchAnnotations: (id, patch) => request("PUT", `api/graphs/${enc(id)}/annotations`, patch),
  scores: (id, nodeIds) => request("POST", `api/graphs/${enc(id)}/scores`, { node_ids: nodeIds }),
  subgraph: (id, nodeIds) => request("POST", `api/graphs/${enc(id)}/subgraph`, { node_ids: nodeIds }),
  feature: (layer, index) => request("GET", `api/features/${layer}/${index}`),
  steerStatus: (id) => request("GET", `api/graphs/${enc(id)}/steer`),
  steer: (id, body) => request("POST", `api/graphs/${enc(id)}/steer`, body),
  compare: (a, b, nt, et) => request("GET", `api/compare/${enc(a)}/${enc(b)}${thresholdQuery(nt, et)}`),
  suggestions: (id, nt, et, minSimilarity) => {
    const q = thresholdQuery(nt, et);
    return request("GET", `api/graphs/${enc(id)}/supernode-suggestions${q}${q ? "&" : "?"}min_similarity=${minSimilarity}`);
  },
  attention: (id) => request("GET", `api/graphs/${enc(id)}/attention`),
  edgeHeads: (id, source, target) =>
    request("GET", `api/graphs/${enc(id)}/attention/${enc(source)}/${enc(target)}`),
  headExplanation: (id, source, target, layer, head, top = 10) =>
    request("GET", `api/graphs/${enc(id)}/attention/${enc(source)}/${enc(target)}/${layer}/${head}?top=${top}`),
};
