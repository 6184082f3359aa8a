"""Refuse requests whose ``Host`` header names another machine (DNS-rebinding protection).

A page on a hostile site can make the browser resolve its own name to 127.0.0.1 and then read a
local server as if it were same-origin; the request still carries the hostile name in ``Host``,
so a loopback server that only answers loopback names is safe. Starlette's own
TrustedHostMiddleware splits the header at the first ":" and so refuses the IPv6 loopback
(``[::1]:8000``); this one parses bracketed IPv6 literals.
"""

from __future__ import annotations

import re
from typing import Iterable

from circuit_atlas.server.limits import Receive, Scope, Send, send_json_error

# Where the explorer listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8041

_PORT = re.compile(r"(?::\d{1,5})?")


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lowercased, port and IPv6 brackets removed; "" when
    anything but a numeric port follows the host (such a header names no host we answer to)."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not _PORT.fullmatch(value[end + 1:]):
            return ""
        return value[1:end]
    if value.count(":") == 1:
        name, port = value.split(":", 1)
        return name if port.isdigit() else ""
    return value  # a bare name, or an unbracketed IPv6 literal (no port can be told apart)


class AllowedHostsMiddleware:
    """Answer 400 unless the request's ``Host`` names one of `allowed_hosts`."""

    def __init__(self, app, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                if scope["type"] == "http":
                    await send_json_error(send, 400, "invalid Host header: this server answers only "
                                                "to its loopback names")
                return
        await self.app(scope, receive, send)
