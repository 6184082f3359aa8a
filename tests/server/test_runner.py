"""Running the server in a background thread, and binding errors."""

from __future__ import annotations

import httpx
import pytest

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer, bind_socket, is_loopback


def test_background_server_serves_and_stops(data_dir) -> None:
    server = BackgroundServer(create_app(data_dir)).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.url}api/health").json()["ok"] is True
        ids = {g["id"] for g in httpx.get(f"{server.url}api/graphs").json()["graphs"]}
        assert ids == {"demo", "jsonly"}
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}api/health", timeout=2)


def test_port_in_use_is_a_clear_error() -> None:
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(CircuitAtlasError, match=f"127.0.0.1:{port}.*--port"):
            bind_socket("127.0.0.1", port)
    finally:
        taken.close()


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
