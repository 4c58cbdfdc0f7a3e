"""Who may use the live side: the policy, the token, the Origin check and per-client limits.

Every POST of the live side (render requests, probe uploads) passes `guard`
first, as Jupyter's server checks its token and XSRF before any handler runs:

- the policy (`Settings.live_policy`): ``off`` refuses every live request,
  ``renders`` refuses uploads; a refusal is a 403 that says which setting;
- the Origin check (CSRF): a browser's POST carries ``Origin`` (or at least
  ``Referer``); one naming another site than the server's own is refused;
- the token, where one is set: header ``X-Microscope-Token``, form field
  ``token``, or the HttpOnly, SameSite=Strict cookie the login form sets;
- a rate limit per client address, through the ``limits`` package (the
  moving-window algorithm slowapi uses, without its decorators): the
  server's processes each count in memory, so behind N processes a client
  gets up to N times the rate.

A client's address is the connection's peer; behind a proxy that sets
``X-Forwarded-For``, its first entry when `Settings.trust_forwarded` says so
(never by default: any client can write that header).
"""

from __future__ import annotations

import hmac
from typing import Literal
from urllib.parse import urlsplit

from fastapi import Request
from limits import parse
from starlette.formparsers import MultiPartException
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from app.core.errors import MicroscopeError
from app.core.settings import Settings

TOKEN_HEADER = "X-Microscope-Token"
TOKEN_COOKIE = "microscope_token"
TOKEN_FIELD = "token"

Need = Literal["renders", "probes"]


class Forbidden(MicroscopeError):
    status_code = 403


class TooManyRequests(MicroscopeError):
    status_code = 429


class Limiter:
    """Live requests per client within the settings' rate (in this server process)."""

    def __init__(self, rate: str) -> None:
        self.rate = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, client: str) -> None:
        if not self._limiter.hit(self.rate, client):
            raise TooManyRequests(f"too many live requests from {client}: at most {self.rate} (try again later)")


def client_address(request: Request, settings: Settings) -> str:
    if settings.trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return request.client.host if request.client else "unknown"


def allows(settings: Settings, need: Need) -> bool:
    policy = settings.live_policy
    return policy == "all" or (policy == "renders" and need == "renders")


def check_policy(settings: Settings, need: Need) -> None:
    if not allows(settings, need):
        what = "rendering on demand and probes are" if settings.live_policy == "off" else "probes are"
        raise Forbidden(f"{what} off on this server (MICROSCOPE_LIVE={settings.live_policy})")


def check_origin(request: Request) -> None:
    """A POST from a page of another site is refused (the browser names the page's origin)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return  # no browser sent this (curl, scripts): the token, where one is set, guards those
    if origin == "null" or urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden(f"a live request from another site ({origin}) is refused")


async def presented_token(request: Request) -> str | None:
    found = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
    if found:
        return found
    kind = request.headers.get("content-type", "")
    if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        try:  # the upload form's own bounds: Starlette keeps the parsed form for the view
            form = await request.form(max_files=1, max_fields=4)
        except MultiPartException:
            return None
        value = form.get(TOKEN_FIELD)
        return value if isinstance(value, str) else None
    return None


def token_matches(settings: Settings, given: str | None) -> bool:
    return settings.token is None or (given is not None and hmac.compare_digest(given, settings.token))


async def guard(request: Request, need: Need) -> None:
    """Everything a live POST must pass, in order: policy, Origin, token, the client's rate."""
    state = request.app.state.microscope
    settings: Settings = state.store.settings
    check_policy(settings, need)
    check_origin(request)
    if not token_matches(settings, await presented_token(request)):
        raise Forbidden(f"this server asks for a token: log in at /login, or send the {TOKEN_HEADER} header")
    state.limiter.hit(client_address(request, settings))


async def guard_renders(request: Request) -> None:
    await guard(request, "renders")


async def guard_probes(request: Request) -> None:
    await guard(request, "probes")
