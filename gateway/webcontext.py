"""What every web application of the gateway shares: the per-app context (store, ingest
counters, limits), who is logged in on a request, the guarded login, live event streams and the
NUL-refusing middleware.

The JSON API (gateway/web.py), the server-rendered pages (gateway/pages.py) and the public
board's listener (gateway/public.py) all import from here, and this module imports none of
them: web and public import pages, and pages imports neither of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway import auth
from gateway.ingest import IngestStats
from gateway.ratelimit import LoginGuard, LoginRefused, StreamLimiter, client_key
from gateway.store import Store

COOKIE = "gerbang_session"
#: The login form's double-submit token (login CSRF): a cookie and a hidden field that match.
LOGIN_CSRF_COOKIE = "gerbang_login_csrf"
#: Publishes a command to a gate: (centre, device_id, command name, payload) -> None.
Commander = Callable[[str, str, str, dict[str, Any]], None]


@dataclass
class WebContext:
    """What the routes share: the store, live ingest counters, how to reach gates."""

    store: Store
    stats: IngestStats | None = None
    commander: Commander | None = None
    poll_s: float = 0.3
    guard: LoginGuard | None = None
    #: ``Secure`` on every cookie (HTTPS here, or at a reverse proxy).
    secure_cookies: bool = False
    #: The public board's live streams (total and per address).
    board_streams: StreamLimiter | None = None


class ClosingStream(StreamingResponse):
    """A StreamingResponse that calls ``on_close`` when it is over, even if the body never
    started (so a counted live stream is always given back)."""

    def __init__(self, content: Any, on_close: Callable[[], None] | None,
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


def sse_stream(ctx: WebContext, build: Callable[[], Any],
               on_close: Callable[[], None] | None = None) -> StreamingResponse:
    """A server-sent event stream of ``build()`` whenever the store changes (polled every
    ``ctx.poll_s``); ``on_close`` runs once the response is over (the client went away)."""

    async def gen() -> AsyncIterator[str]:
        last, quiet = None, 0
        while True:
            token = await asyncio.to_thread(ctx.store.change_token)
            if token != last:
                last, quiet = token, 0
                data = await asyncio.to_thread(build)
                yield f"data: {json.dumps(data, default=str)}\n\n"
            elif (quiet := quiet + 1) * ctx.poll_s >= 15:
                quiet = 0
                yield ": keep-alive\n\n"  # keeps proxies from closing an idle stream
            await asyncio.sleep(ctx.poll_s)

    return ClosingStream(gen(), on_close, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store"})


class RejectNul:
    """ASGI middleware: a path or query string carrying a NUL character (``%00``) gets 400.
    No id, room or filter contains one, and PostgreSQL cannot even compare against it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"]
                                        or b"%00" in scope.get("query_string", b"")):
            response = JSONResponse({"detail": "NUL characters are not allowed in URLs"}, 400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def set_login_cookie(response: Response, token: str, secure: bool) -> None:
    """The page login cookie: HttpOnly, SameSite=Strict, ``Secure`` over HTTPS."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure,
                        max_age=auth.TOKEN_TTL_S)


def request_token(request: Request) -> str | None:
    """The login token a request carries: a Bearer header (API clients), else the cookie
    (pages)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def current_user(request: Request) -> dict[str, Any] | None:
    """The logged-in user of this request, or None."""
    ctx: WebContext = request.app.state.ctx
    return auth.user_for_token(ctx.store, request_token(request))


async def guarded_login(ctx: WebContext, request: Request, username: str, password: str,
                        ) -> tuple[str, dict[str, Any]]:
    """A login through ``ctx.guard``, audited; HTTPException with the guard's status. The API
    (``POST /api/login``) and the login form both log in through here."""
    assert ctx.guard is not None
    store = ctx.store
    try:
        token, user = await ctx.guard.login(username, password, client_key(request))
    except LoginRefused as exc:
        if exc.status in (401, 403):
            await asyncio.to_thread(store.audit, username[:64], "login_failed", None,
                                    {"address": client_key(request)})
        raise HTTPException(exc.status, exc.message, headers=exc.headers()) from None
    await asyncio.to_thread(store.audit, user["username"], "login", None,
                            {"address": client_key(request)})
    return token, user
