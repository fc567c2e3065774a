"""The guard every request passes before any route: Host header, bearer token, body size.

A plain ASGI middleware, so it refuses before FastAPI reads the body. It adds no CORS headers: a web page
in the user's browser cannot read the engine's answers, and a page that rebinds its own name to 127.0.0.1
still sends its own Host header, which is refused.
"""

from __future__ import annotations

import hmac
from typing import Iterable, Optional

from fastapi.responses import JSONResponse

from .errors import BodyTooLarge, body_too_large, error_response

MAX_BODY_BYTES = 8 * 2**20
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Guard:
    """ASGI middleware: Host header, bearer token (constant-time), body size cap; answers errors as JSON."""

    def __init__(self, app, token: str, allowed_hosts: Iterable[str], max_body: int):
        self.app, self.token, self.max_body = app, token.encode(), max_body
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal:
            return await refusal(scope, receive, send)
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, capped_receive, send)
        except BodyTooLarge:
            await body_too_large(self.max_body)(scope, receive, send)

    def _refusal(self, headers: dict) -> Optional[JSONResponse]:
        if host_name(headers.get("host", "")) not in self.allowed:
            return error_response(400, "HostNotAllowed",
                                  "the Host header names another host; call the engine by the address it printed")
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            return error_response(401, "Unauthorized", "missing or wrong token; send 'Authorization: Bearer <token>' "
                                                       "with the token pointsam serve printed")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return body_too_large(self.max_body)
        return None


def host_name(host: str) -> str:
    """``example.org:8080`` -> ``example.org``; ``[::1]:8080`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
