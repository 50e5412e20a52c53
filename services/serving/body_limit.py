"""ASGI middleware: request bodies above a limit get 413 before anything reads them whole.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted
as it streams in and refused the moment it crosses the limit, so an upload can never make
a replica buffer more than the limit (no out-of-memory crash from one client).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it (as a 413) instead of making it a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimit:
    """Args:
    app: the wrapped ASGI app.
    max_bytes: the limit, or a callable returning it (read per request, e.g. from settings).
    """

    def __init__(self, app: ASGIApp, max_bytes: int | Callable[[], int]) -> None:
        self.app = app
        self._max = max_bytes if callable(max_bytes) else (lambda: max_bytes)

    def _reject(self, limit: int) -> JSONResponse:
        return JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._max()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(limit)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._reject(limit)(scope, receive, send)
