"""Server-rendered pages (Jinja2) and their live updates.

Each live part of a page is a *fragment* rendered by one template on the server. The page
includes it once, and ``/live/{fragment}`` streams the same fragment, re-rendered whenever the
store changes, as server-sent events; ``static/live.js`` swaps it in. One renderer, so the first
paint and the live updates can never disagree.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from gateway import auth
from gateway.alerts import current_alerts, open_count
from gateway.attendance import parse_time, public_board, session_attendance, totals
from gateway.dashboard import checkins_per_minute, overview
from gateway.ratelimit import client_key, same_origin, tokens_match
from gateway.webcontext import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    guarded_login,
    set_login_cookie,
    sse_stream,
)
from gateway.webcontext import current_user as logged_in

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def sparkline(values: list[int], width: int = 180, height: int = 36) -> str:
    """An inline SVG bar chart (check-ins per minute): cheap, no JavaScript, prints well."""
    if not values:
        return ""
    top = max(max(values), 1)
    bar = width / len(values)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - v / top * height:.1f}" width="{max(bar - 1, 1):.1f}"'
        f' height="{v / top * height:.1f}"/>' for i, v in enumerate(values) if v)
    return (f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="check-ins per minute, peak {top}">'
            f"{bars}</svg>")


templates.env.globals["sparkline"] = sparkline


def _latency(store: Any) -> dict[str, dict[str, Any]]:
    """Median and 95th-percentile decision latency per gate over its last 200 events."""
    by_device: dict[str, list[float]] = {}
    for e in store.recent_events(2000):
        if e["latency_ms"] is not None:
            values = by_device.setdefault(e["device_id"], [])
            if len(values) < 200:
                values.append(float(e["latency_ms"]))
    out: dict[str, dict[str, Any]] = {}
    for device, newest_first in by_device.items():
        values = sorted(newest_first)
        out[device] = {"p50": values[len(values) // 2],
                       "p95": values[min(len(values) - 1, int(len(values) * 0.95))],
                       "series": [round(v) for v in reversed(newest_first[:60])]}
    return out


# fragment name -> (permission or None for public, builder(store, params) -> template context)
def _frag_overview(store: Any, params: dict[str, str]) -> dict[str, Any]:
    return {"ov": overview(store)}


def _frag_session(store: Any, params: dict[str, str]) -> dict[str, Any]:
    attendance = session_attendance(store, params["session"])
    if attendance is None:
        raise HTTPException(404, f"no exam session {params['session']!r}")
    alerts = [a for a in current_alerts(store) if a["acknowledged"] is None]
    return {"att": attendance, "totals": totals(attendance["rooms"]),
            "series": checkins_per_minute(store, params["session"]),
            "alerts_by_room": {r["room"]: sum(1 for a in alerts if a["room"] == r["room"])
                               for r in attendance["rooms"]},
            "refused": store.refused_events(params["session"], limit=50)}


def _frag_room(store: Any, params: dict[str, str]) -> dict[str, Any]:
    attendance = session_attendance(store, params["session"])
    if attendance is None:
        raise HTTPException(404, f"no exam session {params['session']!r}")
    room = params["room"]
    tally = next((r for r in attendance["rooms"] if r["room"] == room), None)
    return {"att": attendance, "room": room, "tally": tally,
            "people": [a for a in attendance["applicants"] if a["room"] == room],
            "refused": store.refused_events(params["session"], room, limit=100)}


def _frag_devices(store: Any, params: dict[str, str]) -> dict[str, Any]:
    return {"devices": store.devices(), "latency": _latency(store)}


def _frag_alerts(store: Any, params: dict[str, str]) -> dict[str, Any]:
    alerts = current_alerts(store)
    return {"alerts": alerts, "open": open_count(alerts)}


def _frag_board(store: Any, params: dict[str, str]) -> dict[str, Any]:
    attendance = session_attendance(store, params["session"])
    if attendance is None:
        raise HTTPException(404, "no such session")
    board = public_board(attendance)
    return {"board": board, "totals": {k: sum(r[k] for r in board["rooms"])
                                       for k in ("expected", "present")}}


FRAGMENTS: dict[str, tuple[str | None, tuple[str, ...],
                           Callable[[Any, dict[str, str]], dict[str, Any]]]] = {
    "overview": ("view", (), _frag_overview),
    "session": ("view", ("session",), _frag_session),
    "room": ("view", ("session", "room"), _frag_room),
    "devices": ("view", (), _frag_devices),
    "alerts": ("view", (), _frag_alerts),
    "board": (None, ("session",), _frag_board),
}


def clock_filter(offset: timedelta) -> Callable[..., str]:
    """Jinja filter: an ISO 8601 time shown as HH:MM:SS on the centre's wall clock."""
    zone = timezone(offset)

    def clock(ts: Any, empty: str = "") -> str:
        if not ts:
            return empty
        try:
            return parse_time(ts).astimezone(zone).strftime("%H:%M:%S")
        except (ValueError, TypeError, AttributeError, OverflowError):
            return str(ts)[:19]  # never a 500 for a value a page did not expect

    return clock


def tz_label(offset: timedelta) -> str:
    """``WIB`` / ``WITA`` / ``WIT`` for Indonesia's zones, else ``UTC+hh:mm``."""
    hours = offset.total_seconds() / 3600
    names = {7.0: "WIB", 8.0: "WITA", 9.0: "WIT", 0.0: "UTC"}
    if hours in names:
        return names[hours]
    sign = "+" if hours >= 0 else "-"
    minutes = int(abs(offset.total_seconds()) // 60)
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def add_pages(app: FastAPI, display_offset: timedelta = timedelta(hours=7),
              public_only: bool = False) -> None:
    """Register the HTML pages, login form, live fragments and static files on ``app``.
    Times are shown on the centre's clock (``display_offset``, default WIB). ``public_only``:
    the public board's listener: the board page, its live fragment and static files, nobody
    logged in (a cookie sent there is ignored), nothing else."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates.env.filters["clock"] = clock_filter(display_offset)
    templates.env.globals["tz_label"] = tz_label(display_offset)

    def store() -> Any:
        return app.state.ctx.store

    def current_user(request: Request) -> dict[str, Any] | None:
        return None if public_only else logged_in(request)

    def render_fragment(request: Request, name: str, params: dict[str, str]) -> str:
        _, needed, build = FRAGMENTS[name]
        missing = [p for p in needed if not params.get(p)]
        if missing:
            raise HTTPException(422, f"missing {', '.join(missing)}")
        context = build(store(), params)
        return templates.get_template(f"_{name}.html").render(
            request=request, user=current_user(request), **context)

    def page(request: Request, template: str, fragment: str, params: dict[str, str],
             title: str, public: bool = False) -> Response:
        user = current_user(request)
        if not public and not auth.allowed(user, "view"):
            return RedirectResponse(f"/login?next={quote(str(request.url.path))}", 303)
        body = render_fragment(request, fragment, params)
        live = f"/live/{fragment}?" + "&".join(f"{k}={quote(v)}" for k, v in params.items())
        return templates.TemplateResponse(request, template, {
            "user": user, "title": title, "fragment_html": body, "live_url": live,
            "params": params, "params_json": json.dumps(params)})

    @app.get("/board/{session_id}", response_class=HTMLResponse, include_in_schema=False)
    def board_page(request: Request, session_id: str) -> Response:
        return page(request, "board.html", "board", {"session": session_id},
                    "Live attendance", public=True)

    @app.get("/live/{name}", include_in_schema=False)
    async def live(request: Request, name: str) -> Response:
        if name not in FRAGMENTS or (public_only and FRAGMENTS[name][0] is not None):
            raise HTTPException(404, "no such fragment")
        permission = FRAGMENTS[name][0]
        if permission and not auth.allowed(await run_in_threadpool(current_user, request),
                                           permission):
            raise HTTPException(401, "log in first")
        params = {k: v for k, v in request.query_params.items() if k in FRAGMENTS[name][1]}
        # fail now (404/422), not inside the stream
        await run_in_threadpool(render_fragment, request, name, params)
        on_close = None
        if permission is None:  # anonymous (the public board): bounded in total and per address
            limiter, address = app.state.ctx.board_streams, client_key(request)
            refused = limiter.try_open(address)
            if refused is not None:
                return refused
            on_close = lambda: limiter.close(address)  # noqa: E731
        return sse_stream(app.state.ctx,
                          lambda: {"html": render_fragment(request, name, params)}, on_close)

    if public_only:
        return

    def login_page(request: Request, next: str, error: str | None,
                   status_code: int = 200) -> Response:
        """The login form with a fresh double-submit token (cookie + hidden field): a form
        posted from another site carries neither, so it cannot log this browser in."""
        csrf = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request, "login.html", {"next": next, "error": error, "user": None, "csrf": csrf},
            status_code=status_code)
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                            secure=app.state.ctx.secure_cookies, max_age=3600, path="/login")
        return response

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        return login_page(request, next, None)

    @app.post("/login", include_in_schema=False)
    async def login_submit(request: Request, username: str = Form(...),
                           password: str = Form(...), next: str = Form("/"),
                           csrf: str = Form("")) -> Response:
        if not same_origin(request) or not tokens_match(
                request.cookies.get(LOGIN_CSRF_COOKIE), csrf):
            await run_in_threadpool(store().audit, username[:64].replace("\x00", "\\0"),
                                    "login_csrf_refused", None,
                                    {"address": client_key(request),
                                     "origin": request.headers.get("origin")})
            return login_page(request, next, "this login form has expired or came from "
                                             "another site; log in again", 403)
        try:
            if "\x00" in username + password:  # no account has one; PostgreSQL can't compare
                raise HTTPException(401, "wrong username or password")
            token, _user = await guarded_login(app.state.ctx, request, username, password)
        except HTTPException as exc:
            if exc.status_code == 401 and "\x00" in username + password:
                await run_in_threadpool(store().audit, username[:64].replace("\x00", "\\0"),
                                        "login_failed")
            page = login_page(request, next, str(exc.detail), exc.status_code)
            page.headers.update(exc.headers or {})
            return page
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        response = RedirectResponse(target, 303)
        set_login_cookie(response, token, app.state.ctx.secure_cookies)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            store().drop_token(auth.token_digest(token))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> Response:
        return page(request, "overview.html", "overview", {}, "Attendance")

    @app.get("/sessions/{session_id}", response_class=HTMLResponse, include_in_schema=False)
    def session_page(request: Request, session_id: str) -> Response:
        return page(request, "session.html", "session", {"session": session_id},
                    f"Session {session_id}")

    @app.get("/sessions/{session_id}/rooms/{room}", response_class=HTMLResponse,
             include_in_schema=False)
    def room_page(request: Request, session_id: str, room: str) -> Response:
        return page(request, "room.html", "room", {"session": session_id, "room": room},
                    f"{room} · {session_id}")

    @app.get("/devices", response_class=HTMLResponse, include_in_schema=False)
    def devices_page(request: Request) -> Response:
        return page(request, "devices.html", "devices", {}, "Gates")

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts_page(request: Request) -> Response:
        return page(request, "alerts.html", "alerts", {}, "Alerts")
