"""Running the explorer: in the foreground for the CLI, or in a background thread for notebooks
and tests.

The listening socket is bound here, before uvicorn starts, so "port in use" becomes a clear
CircuitAtlasError instead of a log line from inside uvicorn, and port 0 (any free port) works.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import quote

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.server.app import LOOPBACK_HOSTS, create_app
from circuit_atlas.server.features import load_feature_provider
from circuit_atlas.server.hosts import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("circuit_atlas.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise CircuitAtlasError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "pass another --port, or --port 0 for any free port"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def build_app(
    data_dir: str | Path,
    host: str,
    features_dir: str | Path | None = None,
    model: Any | None = None,
) -> Any:
    """The app with the security settings that suit ``host`` (``model``: for steering)."""
    features = load_feature_provider(features_dir) if features_dir else None
    allowed = LOOPBACK_HOSTS if is_loopback(host) else None
    return create_app(data_dir, features=features, allowed_hosts=allowed, model=model)


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class BackgroundServer:
    """uvicorn serving an app from a daemon thread; ``stop()`` shuts it down cleanly."""

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0) -> None:
        import uvicorn

        self.app = app
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
            name=f"circuit-atlas-server-{self.port}",
        )

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise CircuitAtlasError(f"the explorer server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    data_dir: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    open_browser: bool = True,
    features_dir: str | Path | None = None,
    model: Any | None = None,
    graph: str | None = None,
) -> None:
    """Serve ``data_dir`` until interrupted (the ``circuit-atlas serve`` command).

    ``model``: a loaded `ReplacementModel`, held for the Steer panel's requests. ``graph``: the id
    of the graph the browser opens on (default: the graph browser, which lists them all).
    """
    import uvicorn

    app = build_app(data_dir, host, features_dir, model)
    sock = bind_socket(host, port)
    url = _url(host, sock.getsockname()[1])
    if not is_loopback(host):
        print(
            f"warning: listening on {host}: anyone who can reach this machine can read the "
            "graphs and change their annotations",
            file=sys.stderr,
        )
    n_graphs = len(app.state.explorer.catalog.refresh())
    print(f"circuit-atlas explorer: {n_graphs} graph(s) from {data_dir} at {url}", flush=True)
    if graph:
        print(f"this graph: {url}?graph={quote(graph)}", flush=True)
    if model is not None:
        print(f"steering with model {model.lm.name} and transcoders {model.transcoders.scan}", flush=True)
    print("press Ctrl+C to stop", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    if open_browser:
        def _open() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                webbrowser.open(f"{url}?graph={quote(graph)}" if graph else url)

        threading.Thread(target=_open, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
