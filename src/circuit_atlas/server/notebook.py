"""`graph.show()` / `circuit_atlas.show_graph` for Jupyter: the explorer inline, served from a
background thread. (`Graph.show` reaches this through the viewer slot the package façade fills,
`circuit_atlas.viewer`, so the graph layer does not import the server.)

Why a server and not a self-contained HTML blob: the explorer prunes server-side when the slider
moves, loads neighbourhoods on demand and saves labels, which all need the API. The server binds
127.0.0.1 on a free port, lives as long as the Python process, and is shared by every `show()`
call that uses the same data folder.

Remote notebooks (JupyterHub, VS Code remote): the browser cannot reach the kernel's
127.0.0.1, so pass ``url_template`` for your proxy, e.g. ``"/proxy/{port}/"`` with
jupyter-server-proxy; the web app uses relative URLs and works under such a prefix.
"""

from __future__ import annotations

import atexit
import html
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.graph.graph import Graph
from circuit_atlas.io.checks import check_threshold
from circuit_atlas.server.app import LOOPBACK_HOSTS, create_app
from circuit_atlas.server.runner import BackgroundServer

_servers: dict[Path, Any] = {}
_servers_lock = threading.Lock()
_counter = 0


class ExplorerView:
    """What `show_graph` returns: renders as an iframe in Jupyter, prints its URL elsewhere."""

    def __init__(self, url: str, height: int, width: str, data_dir: Path, graph_id: str) -> None:
        self.url = url
        self.height = height
        self.width = width
        self.data_dir = data_dir
        self.graph_id = graph_id

    def _repr_html_(self) -> str:
        src = html.escape(self.url, quote=True)
        return (
            f'<iframe src="{src}" width="{html.escape(str(self.width), quote=True)}" '
            f'height="{int(self.height)}" style="border:1px solid #ddd;border-radius:6px" '
            f'title="circuit-atlas explorer"></iframe>'
        )

    def __repr__(self) -> str:
        return f"circuit-atlas explorer for {self.graph_id!r}: {self.url}"


def _server_for(data_dir: Path) -> Any:
    """The background server of ``data_dir``, started on first use."""
    key = data_dir.resolve()
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.thread.is_alive():
            app = create_app(key, allowed_hosts=LOOPBACK_HOSTS)
            server = BackgroundServer(app, "127.0.0.1", 0).start()
            _servers[key] = server
        return server


def _next_slug(prefix: str) -> str:
    global _counter
    with _servers_lock:
        _counter += 1
        n = _counter
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.") or "graph"
    return f"{clean[:100]}-{n}"


def show_graph(
    graph: Graph | str | Path,
    *,
    slug: str | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    data_dir: str | Path | None = None,
    height: int = 760,
    width: str = "100%",
    url_template: str | None = None,
) -> ExplorerView:
    """Show ``graph`` in the explorer, inline in a notebook.

    Args:
        graph: a `Graph`, or the path of a data folder / graph bundle to open as it is.
        slug: the graph's name in the explorer (default: ``graph-<n>``).
        node_threshold, edge_threshold: the initial pruning thresholds.
        data_dir: where the graph bundle (and the labels you save) is written; by default a
            temporary folder that disappears with the process.
        height, width: iframe size.
        url_template: the browser-visible base URL, with ``{port}`` (remote notebooks).
    """
    node_threshold = check_threshold(node_threshold, "node_threshold")
    edge_threshold = check_threshold(edge_threshold, "edge_threshold")
    if isinstance(graph, (str, Path)):
        folder = Path(graph).expanduser()
        if not folder.is_dir():
            raise CircuitAtlasError(f"show_graph: {folder} is not a folder of graphs")
        server = _server_for(folder)
        entries = server.app.state.explorer.catalog.refresh()
        if not entries:
            raise CircuitAtlasError(f"show_graph: {folder} holds no graphs")
        graph_id = slug if slug and any(e.id == slug for e in entries) else entries[0].id
    else:
        if not hasattr(graph, "save"):
            raise CircuitAtlasError(
                f"show_graph: expected a Graph or a folder path, got {type(graph).__name__}"
            )
        folder = Path(data_dir).expanduser() if data_dir else _temp_root()
        folder.mkdir(parents=True, exist_ok=True)
        name = slug or _next_slug("graph")
        write_graph_bundle(graph, folder, name, node_threshold, edge_threshold)
        server = _server_for(folder)
        graph_id = _id_of(server, folder / name)
    base = url_template.format(port=server.port) if url_template else server.url
    query = urlencode(
        {"graph": graph_id, "pruningThreshold": node_threshold, "edgeThreshold": edge_threshold}
    )
    return ExplorerView(f"{base}?{query}", height, width, folder, graph_id)


def _id_of(server: Any, bundle_folder: Path) -> str:
    """The id the catalog gave the bundle just written (ids are unique per data folder)."""
    resolved = bundle_folder.resolve()
    for entry in server.app.state.explorer.catalog.refresh():
        if entry.folder.resolve() == resolved:
            return entry.id
    raise CircuitAtlasError(f"show_graph: the explorer did not find the graph in {bundle_folder}")


_temp_dir: Path | None = None


def _temp_root() -> Path:
    global _temp_dir
    with _servers_lock:
        if _temp_dir is None:
            _temp_dir = Path(tempfile.mkdtemp(prefix="circuit-atlas-show-"))
            atexit.register(shutil.rmtree, _temp_dir, True)
        return _temp_dir
