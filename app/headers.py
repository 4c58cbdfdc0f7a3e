"""Security headers on every response: what a browser may load, frame or send on from our pages.

The pages load only this server's own files: one stylesheet, a pinned htmx,
images from ``/blobs`` (or a bucket's presigned URLs, with
``MICROSCOPE_BLOBS_REDIRECT``); no inline script anywhere, so scripts are
``'self'`` alone. Inline ``style`` attributes draw the histograms, boxes and
weight bars, so styles also allow ``'unsafe-inline'`` (styles cannot run
code). The API docs (Swagger UI and ReDoc, served from the fastapi-offline
package, not a CDN) start from an inline script: their two pages alone allow it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BASE = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
          "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
          "frame-ancestors 'none'")
DOCS_POLICY = POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "default-src 'self'", "default-src 'self'; worker-src 'self' blob:")
DOCS = ("/docs", "/redoc")


class SecurityHeaders:
    """Adds `BASE` and the Content-Security-Policy to every response (a pure ASGI middleware: streams pass)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if scope["path"].startswith(DOCS) else POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in (*BASE.items(), ("Content-Security-Policy", policy)):
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
