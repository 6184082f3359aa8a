"""Request hygiene for a server that only ever talks to the user's own browser.

* Bodies larger than a cap are refused with 413 before they are read into memory: the API's
  largest legitimate body (an annotation patch) is a few hundred KiB.
* Writes must be ``application/json``. A cross-site page can send a "simple" form or text POST
  to ``127.0.0.1`` without a CORS preflight, but not a JSON one, so this closes that hole.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a streamed body passes the cap."""


async def send_json_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimitsMiddleware:
    """ASGI middleware enforcing the body cap and the JSON content type on writes."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"].upper()
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if has_body and ctype != "application/json":
                await send_json_error(send, 415, "request bodies must be sent as application/json")
                return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                await send_json_error(send, 400, "invalid Content-Length header")
                return
            if too_big:
                await send_json_error(send, 413, self._too_large_message())
                return

        received = 0
        response_started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await send_json_error(send, 413, self._too_large_message())

    def _too_large_message(self) -> str:
        return f"request body is larger than the limit of {self.max_body_bytes} bytes"
