"""Request hygiene for a server that only ever talks to the user's own browser.

* Bodies larger than a cap are refused with 413 before they are read into memory: the API's
  largest legitimate body (an annotation patch) is a few hundred KiB.
* Bodies must be ``application/json``. A cross-site page can send a "simple" form or text POST
  to ``127.0.0.1`` without a CORS preflight, but not a JSON one, so this closes that hole.

Both checks run when the application first reads the body, not when the request arrives: a
request with a method the path does not support is answered 405 by the router whatever its body,
so every unsupported method gets the same answer. They raise `HTTPException`, which FastAPI's
body parsing passes through unchanged, so the app's handler renders them like any other error.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from starlette.exceptions import HTTPException

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def send_json_error(send: Send, status: int, detail: str) -> None:
    """Answer from a middleware, before the app (and its error handlers) run."""
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
    """ASGI middleware enforcing the body cap and the JSON content type on request bodies."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        received = 0
        checked = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, checked
            if not checked:
                checked = True
                self._check_headers(headers)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large_message())
            return message

        await self.app(scope, limited_receive, send)

    def _check_headers(self, headers: dict[str, str]) -> None:
        """415 / 413 / 400 from the headers alone, before any byte of the body is read."""
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        declared = headers.get("content-length")
        has_body = (declared not in (None, "0")) or "transfer-encoding" in headers
        if has_body and ctype != "application/json":
            raise HTTPException(415, "request bodies must be sent as application/json")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                raise HTTPException(400, "invalid Content-Length header") from None
            if too_big:
                raise HTTPException(413, self._too_large_message())

    def _too_large_message(self) -> str:
        return f"request body is larger than the limit of {self.max_body_bytes} bytes"
