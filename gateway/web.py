"""The gateway's web application: the JSON API (OpenAPI document at /openapi.json) and login,
with the server-rendered pages of gateway/pages.py added on. What the API and the pages share
(request context, logged-in user, live streams) is in gateway/webcontext.py; what they show
in gateway/dashboard.py.

Every request that reads needs a logged-in user (role ``viewer`` or above) except the public
board, which shows counts per room and nothing that identifies anyone. Every write is checked
against the caller's role (and, for applicant actions, unlocks and acknowledgements, the
account's room scope) and recorded in the audit log with who, what and why. Logins go through
ratelimit.LoginGuard (bounded password checks, lock-outs); every request body is capped
(ratelimit.BodyLimit). No Swagger UI or ReDoc page: they load scripts from a CDN.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from gateway import auth
from gateway.alerts import current_alerts
from gateway.assignments import AssignmentError, assign
from gateway.attendance import APPLICANT_ACTIONS, parse_time, public_board, session_attendance
from gateway.dashboard import checkins_per_minute, overview
from gateway.ingest import IngestStats
from gateway.pages import add_pages
from gateway.ratelimit import BodyLimit, LoginGuard, LoginLimits, StreamLimiter, same_origin
from gateway.reports import attendance_csv, attendance_pdf, audit_csv
from gateway.roster_import import parse_roster_csv
from gateway.store import Store
from gateway.webcontext import (
    COOKIE,
    Commander,
    RejectNul,
    WebContext,
    current_user,
    guarded_login,
    request_token,
    set_login_cookie,
    sse_stream,
)
from gerbang.wire import ID_PATTERN, utc_now_iso


def queued_commander(store: Store) -> Commander:
    """The web tier's way to reach a gate: queue the command in the store, where the ingest
    process that owns the broker connection publishes it (gateway/outgoing.py)."""

    def command(centre: str, device_id: str, name: str, payload: dict[str, Any]) -> None:
        store.queue_command(centre, device_id, name, payload,
                            requested_by=str(payload.get("by") or "") or None)

    return command


def clean_text(value: str) -> str:
    """``value`` if a store can keep it; ValueError for NUL characters (PostgreSQL refuses
    them) and unpaired surrogates (``\\ud800`` in JSON: not encodable as UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


def meaningful_reason(value: str) -> str:
    """``value`` stripped, if a person could read it as a reason: at least 3 letters or digits
    once whitespace and invisible characters (zero-width spaces and joiners, bidi marks, soft
    hyphens: Unicode category Cf) are left out. Spaces, punctuation or ``\u200b`` alone are
    refused (ValueError), wherever a reason is required (API and CLI)."""
    text = "".join(c for c in value if unicodedata.category(c) != "Cf").strip()
    if sum(1 for c in text if unicodedata.category(c)[0] in "LN") < 3:
        raise ValueError("a reason needs at least 3 letters or digits (spaces, punctuation "
                         "and invisible characters do not count)")
    return text


class TextModel(BaseModel):
    """A request body whose strings are all text a store can keep (see clean_text)."""

    @field_validator("*")
    @classmethod
    def _clean(cls, value: Any) -> Any:
        return clean_text(value) if isinstance(value, str) else value


def attachment(name: str) -> dict[str, str]:
    """A Content-Disposition header for a download; ``name`` may carry a user-given room, so
    anything but letters, digits and ``. _ -`` becomes ``_`` (headers are Latin-1, quoted)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return {"Content-Disposition": f'attachment; filename="{safe}"'}


class Credentials(TextModel):
    """A login."""

    username: str = Field(max_length=64)
    password: str = Field(max_length=256)


class ExamSessionIn(TextModel):
    """An exam session; times are ISO 8601 with the centre's UTC offset (WIB is +07:00)."""

    centre: str = Field(pattern=ID_PATTERN.pattern)
    name: str = Field(min_length=1, max_length=120)
    doors_open: str
    starts_at: str
    doors_close: str

    @field_validator("doors_open", "starts_at", "doors_close")
    @classmethod
    def _iso(cls, value: str) -> str:
        try:
            parsed = parse_time(value)
        except ValueError:
            raise ValueError("not an ISO 8601 time") from None
        if parsed.utcoffset() is None or "T" not in value:
            raise ValueError("give a date and time with its UTC offset, e.g. "
                             "2026-12-01T07:30:00+07:00")
        return value


class ApplicantAction(TextModel):
    """A proctor's decision about one applicant; the reason is mandatory and audited."""

    action: str = Field(description="manual_admit | mark_absent | reopen",
                        json_schema_extra={"enum": list(APPLICANT_ACTIONS)})
    reason: str = Field(min_length=3, max_length=300,
                        description="e.g. 'identity checked against KTP 3174…; camera refused'")

    @field_validator("reason")
    @classmethod
    def _meaningful(cls, value: str) -> str:
        return meaningful_reason(value)

    @field_validator("action")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in APPLICANT_ACTIONS:
            raise ValueError(f"must be one of {', '.join(APPLICANT_ACTIONS)}")
        return value


class Reason(TextModel):
    """Why a proctor or technician did something."""

    reason: str = Field(min_length=3, max_length=300)

    @field_validator("reason")
    @classmethod
    def _meaningful(cls, value: str) -> str:
        return meaningful_reason(value)


class Note(TextModel):
    """An optional note on an acknowledgement."""

    note: str | None = Field(default=None, max_length=300)


class AssignmentIn(TextModel):
    """Where a gate admits: its centre and room, and one session (or none: any open session
    of the centre)."""

    centre: str = Field(pattern=ID_PATTERN.pattern)
    room: str = Field(pattern=ID_PATTERN.pattern)
    session: str | None = Field(default=None, pattern=ID_PATTERN.pattern)


class NewUser(TextModel):
    """A dashboard account."""

    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    password: str = Field(min_length=auth.MIN_PASSWORD, max_length=256)
    role: str = Field(json_schema_extra={"enum": list(auth.ROLES)})
    rooms: list[str] | None = Field(
        default=None, max_length=200,
        description="room scope: ROOM (every session), SESSION/ROOM, SESSION/* or *; "
                    "required for a new proctor; omitted = keep (every room for a new account)")

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in auth.ROLES:
            raise ValueError(f"must be one of {', '.join(auth.ROLES)}")
        return value

    @field_validator("rooms")
    @classmethod
    def _rooms(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            auth.parse_rooms(value)
        return value


class RoomScope(TextModel):
    """An account's room scope."""

    rooms: list[str] = Field(min_length=1, max_length=200,
                             description="ROOM (every session), SESSION/ROOM, SESSION/* or *")

    @field_validator("rooms")
    @classmethod
    def _rooms(cls, value: list[str]) -> list[str]:
        auth.parse_rooms(value)
        return value


def scope_error(user: dict[str, Any], what: str) -> HTTPException:
    """The 403 for an action outside the caller's room scope."""
    return HTTPException(403, f"{user['username']} may not act on {what}: outside the "
                              "account's rooms (a manager sets them: gerbang-gateway user "
                              f"{user['username']} --rooms ...)")


def device_room(store: Store, device_id: str) -> tuple[str | None, str | None]:
    """``(session, room)`` a gate serves, used to scope remote unlocks and a gate's alerts to
    the proctors of that room: its assignment at the gateway (``gerbang-gateway assign``; a
    session of None means any), else its latest birth message (what the gate says of itself,
    for a gate not assigned yet); None where unknown. An assignment to any open session takes
    the session from the birth message."""
    assigned = next((a for a in store.assignments() if a["device_id"] == device_id), None)
    device = next((d for d in store.devices() if d["device_id"] == device_id), None)
    status = (device or {}).get("status") or {}
    room, session = status.get("room"), status.get("session")
    if assigned is not None:
        room, session = assigned["room"], assigned.get("session") or session
    return (session if isinstance(session, str) else None,
            room if isinstance(room, str) else None)


def requires(permission: str) -> Callable[..., dict[str, Any]]:
    """A FastAPI dependency: 401 without a login, 403 without the permission."""

    def dependency(request: Request) -> dict[str, Any]:
        user = current_user(request)
        if user is None:
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
        if not auth.allowed(user, permission):
            raise HTTPException(403, f"role {user['role']} may not do this "
                                     f"(needs {'/'.join(auth.PERMISSIONS[permission])})")
        return user

    return dependency


Viewer = Annotated[dict[str, Any], Depends(requires("view"))]
Proctor = Annotated[dict[str, Any], Depends(requires("proctor"))]
Unlocker = Annotated[dict[str, Any], Depends(requires("unlock"))]
Manager = Annotated[dict[str, Any], Depends(requires("manage"))]


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """What a 422 says: for each error its location, type and message, never the submitted
    value (a password, a roster line) nor pydantic's context (which can quote it)."""
    return [{"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
            for e in exc.errors()]


def create_app(store: Store, stats: IngestStats | None = None, poll_s: float = 0.3,
               commander: Commander | None = None, display_utc_offset_h: float = 7.0, *,
               secure_cookies: bool = False, login_limits: LoginLimits | None = None,
               board_streams: StreamLimiter | None = None) -> FastAPI:
    """The FastAPI application over ``store`` (``stats`` from an ingest in this process, if
    any, else the ingest processes' counters in the store; ``commander`` sends gate commands
    such as remote unlock, by default through the store's command queue). ``secure_cookies``
    marks cookies ``Secure``; ``login_limits`` and ``board_streams`` bound logins and the public
    board's live streams (defaults: the config's defaults)."""
    app = FastAPI(title="Gerbang gateway", version="0.2.0", docs_url=None, redoc_url=None,
                  description="Live exam-room attendance from Gerbang gate devices. Log in "
                              "with POST /api/login and send the token as a Bearer header.")
    app.add_middleware(RejectNul)
    app.add_middleware(BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # No echo of the input (FastAPI's own handler returns it, and fails with 500 when it
        # holds an unpaired surrogate); ASCII-escaped JSON can carry any message.
        body = json.dumps({"detail": jsonable_encoder(validation_errors(exc))}, default=str)
        return Response(body, status_code=422, media_type="application/json")
    ctx = WebContext(store=store, stats=stats, commander=commander or queued_commander(store),
                     poll_s=poll_s, guard=LoginGuard(store, login_limits),
                     secure_cookies=secure_cookies,
                     board_streams=board_streams or StreamLimiter(100, 4))
    app.state.ctx = ctx

    def need_session(session_id: str) -> dict[str, Any]:
        attendance = session_attendance(store, session_id)
        if attendance is None:
            raise HTTPException(404, f"no exam session {session_id!r}")
        return attendance

    # ---- login ------------------------------------------------------------------------------

    @app.post("/api/login", tags=["auth"],
              responses={401: {"description": "wrong username or password"},
                         403: {"description": "account disabled, or a cross-site request"},
                         429: {"description": "username or address locked out"},
                         503: {"description": "too many password checks at once"}})
    async def api_login(credentials: Credentials, request: Request,
                        response: Response) -> dict[str, Any]:
        """Log in; returns a bearer token (also set as an HttpOnly cookie for the pages).
        Failed logins lock the username and the client address for a while (429)."""
        if not same_origin(request):
            raise HTTPException(403, "cross-site login refused")
        token, user = await guarded_login(ctx, request, credentials.username,
                                          credentials.password)
        set_login_cookie(response, token, ctx.secure_cookies)
        return {"token": token, "user": user}

    @app.post("/api/logout", tags=["auth"])
    def api_logout(request: Request, response: Response) -> dict[str, str]:
        """End this login."""
        token = request_token(request)
        if token:
            store.drop_token(auth.token_digest(token))
        response.delete_cookie(COOKIE)
        return {"status": "logged out"}

    @app.get("/api/me", tags=["auth"])
    def me(user: Viewer) -> dict[str, Any]:
        """Who is logged in, and their role."""
        return user

    @app.post("/api/users", tags=["auth"], status_code=201)
    def create_user(new: NewUser, user: Manager) -> dict[str, Any]:
        """Create a dashboard account or reset one's password and role (managers only). A reset
        ends every login of the account. A new proctor needs ``rooms``."""
        try:
            if new.role == "proctor" and new.rooms is None and store.user(new.username) is None:
                raise ValueError("rooms: a new proctor needs its rooms (e.g. [\"R01\"], or "
                                 "[\"*\"] for every room)")
            rooms = auth.parse_rooms(new.rooms) if new.rooms is not None else None
            auth.add_user(store, new.username, new.password, new.role, rooms)
        except ValueError as exc:  # the rule the CLI applies too, e.g. a name of only "-"
            raise HTTPException(422, str(exc)) from None
        scope = store.all_user_rooms().get(new.username, [])
        store.audit(user["username"], "user_put", new.username,
                    {"role": new.role, "rooms": scope})
        return {"username": new.username, "role": new.role, "rooms": scope}

    @app.get("/api/users", tags=["auth"])
    def list_users(user: Manager) -> list[dict[str, Any]]:
        """Dashboard accounts (no password hashes): role, room scope, disabled or not."""
        return store.users()

    def need_user(username: str) -> dict[str, Any]:
        found = store.user(username)
        if found is None:
            raise HTTPException(404, f"no user {username!r}")
        return found

    @app.post("/api/users/{username}/disable", tags=["auth"])
    def disable_user(username: str, body: Reason, user: Manager) -> dict[str, Any]:
        """Disable an account: its logins end at once and it cannot log in (audited)."""
        need_user(username)
        if username == user["username"]:
            raise HTTPException(409, "you cannot disable your own account")
        store.set_user_disabled(username, True, user["username"])
        store.audit(user["username"], "user_disable", username, {"reason": body.reason})
        return {"username": username, "disabled": True}

    @app.post("/api/users/{username}/enable", tags=["auth"])
    def enable_user(username: str, body: Reason, user: Manager) -> dict[str, Any]:
        """Enable a disabled account again (audited); it logs in with its password."""
        need_user(username)
        store.set_user_disabled(username, False, user["username"])
        store.audit(user["username"], "user_enable", username, {"reason": body.reason})
        return {"username": username, "disabled": False}

    @app.put("/api/users/{username}/rooms", tags=["auth"])
    def put_user_rooms(username: str, body: RoomScope, user: Manager) -> dict[str, Any]:
        """Set the rooms an account may act on (``*`` = every room), audited."""
        need_user(username)
        store.set_user_rooms(username, auth.parse_rooms(body.rooms))
        scope = store.all_user_rooms().get(username, [])
        store.audit(user["username"], "user_rooms", username, {"rooms": scope})
        return {"username": username, "rooms": scope}

    @app.post("/api/users/{username}/unlock", tags=["auth"])
    def unlock_user(username: str, user: Manager) -> dict[str, Any]:
        """End a username's login lock-out now (audited)."""
        cleared = store.clear_login_failures("user", username[:64])
        store.audit(user["username"], "login_unlock", username[:64])
        return {"username": username, "was_locked": cleared}

    # ---- sessions, rosters, attendance --------------------------------------------------------

    @app.get("/api/sessions", tags=["attendance"])
    def sessions(user: Viewer) -> list[dict[str, Any]]:
        """Exam sessions, earliest first."""
        return store.exam_sessions()

    @app.put("/api/sessions/{session_id}", tags=["attendance"])
    def put_session(session_id: Annotated[str, Path(pattern=ID_PATTERN.pattern)],
                    body: ExamSessionIn, user: Manager) -> dict[str, Any]:
        """Create or update an exam session (doors open ≤ start ≤ doors close)."""
        times = [parse_time(t) for t in (body.doors_open, body.starts_at, body.doors_close)]
        if not times[0] <= times[1] <= times[2]:
            raise HTTPException(422, "doors_open must be <= starts_at <= doors_close")
        row = {"session_id": session_id, **body.model_dump()}
        store.upsert_session(row)
        store.audit(user["username"], "session_put", session_id, body.model_dump())
        return row

    @app.post("/api/sessions/{session_id}/roster", tags=["attendance"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "text/csv": {"schema": {"type": "string"}}}}})
    async def import_roster(session_id: str, request: Request, user: Manager) -> JSONResponse:
        """Replace the session's roster with a CSV (see gateway/roster_import.py for the
        columns). Any bad row → 422 with every error by line, and nothing is changed."""
        if store.exam_session(session_id) is None:
            raise HTTPException(404, f"no exam session {session_id!r}; create it first")
        body = await request.body()
        if len(body) > 20 * 1024 * 1024:
            raise HTTPException(413, "roster file larger than 20 MB")
        result = parse_roster_csv(body, session_id)
        if not result.ok:
            return JSONResponse({"imported": 0, "errors": result.errors[:200],
                                 "error_count": len(result.errors)}, status_code=422)
        count = store.replace_roster(session_id, result.entries)
        store.audit(user["username"], "roster_import", session_id, {"entries": count})
        return JSONResponse({"imported": count, "errors": []})

    @app.get("/api/sessions/{session_id}/roster", tags=["attendance"])
    def get_roster(session_id: str, user: Viewer,
                   room: Annotated[str | None, Query(max_length=64)] = None,
                   ) -> list[dict[str, Any]]:
        """The session's roster (one room's with ``room``)."""
        return store.roster(session_id, room)

    @app.get("/api/sessions/{session_id}/attendance", tags=["attendance"])
    def attendance(session_id: str, user: Viewer) -> dict[str, Any]:
        """Per room and per applicant, derived from stored events and proctor actions."""
        return need_session(session_id)

    @app.get("/api/sessions/{session_id}/checkins-per-minute", tags=["attendance"])
    def per_minute(session_id: str, user: Viewer) -> dict[str, list[int]]:
        """Accepted check-ins per minute per room, last hour of activity (plot data)."""
        need_session(session_id)
        return checkins_per_minute(store, session_id)

    @app.post("/api/sessions/{session_id}/applicants/{applicant_id}/actions",
              tags=["proctor"], status_code=201)
    def applicant_action(session_id: str, applicant_id: str, body: ApplicantAction,
                         user: Proctor) -> dict[str, Any]:
        """Manual admit (identity checked by a person), mark absent, or reopen."""
        roster = {r["applicant_id"]: r for r in store.roster(session_id)}
        if store.exam_session(session_id) is None or applicant_id not in roster:
            raise HTTPException(404, f"{applicant_id!r} is not on the roster of "
                                     f"{session_id!r}")
        if not auth.may_act_on(store, user, session_id, roster[applicant_id]["room"]):
            raise scope_error(user, f"room {roster[applicant_id]['room']} of {session_id}")
        row = {"ts": utc_now_iso(), "session_id": session_id,
               "room": roster[applicant_id]["room"], "applicant_id": applicant_id,
               "device_id": None, "action": body.action, "reason": body.reason,
               "username": user["username"]}
        store.add_override(row)
        store.audit(user["username"], body.action, f"{session_id}/{applicant_id}",
                    {"reason": body.reason})
        return row

    @app.get("/api/sessions/{session_id}/export.csv", tags=["exports"])
    def export_csv(session_id: str, user: Viewer,
                   room: Annotated[str | None, Query(max_length=64)] = None) -> Response:
        """Attendance as CSV (every room, or one)."""
        data = attendance_csv(need_session(session_id), room)
        store.audit(user["username"], "export_csv", session_id, {"room": room})
        name = f"attendance-{session_id}{'-' + room if room else ''}.csv"
        return Response(data, media_type="text/csv; charset=utf-8", headers=attachment(name))

    @app.get("/api/sessions/{session_id}/export.pdf", tags=["exports"])
    def export_pdf(session_id: str, user: Viewer,
                   room: Annotated[str | None, Query(max_length=64)] = None) -> Response:
        """The printable attendance record with signature lines."""
        data = attendance_pdf(need_session(session_id), room, user["username"], utc_now_iso(),
                              display_utc_offset_h)
        store.audit(user["username"], "export_pdf", session_id, {"room": room})
        name = f"attendance-{session_id}{'-' + room if room else ''}.pdf"
        return Response(data, media_type="application/pdf", headers=attachment(name))

    @app.get("/api/audit", tags=["exports"])
    def audit_log(user: Manager,
                  limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                  ) -> list[dict[str, Any]]:
        """Every write, login and export: who, when, what, why."""
        return store.audit_log(limit)

    @app.get("/api/audit.csv", tags=["exports"])
    def audit_export(user: Manager) -> Response:
        """The audit log as CSV (the download itself is audited)."""
        entries = store.audit_log(1_000_000)
        store.audit(user["username"], "export_audit_csv", None, {"entries": len(entries)})
        return Response(audit_csv(entries), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="audit.csv"'})

    # ---- devices and alerts -----------------------------------------------------------------

    @app.get("/api/devices", tags=["devices"])
    def devices(user: Viewer) -> list[dict[str, Any]]:
        """Gates: online/offline (birth / last will), last telemetry, versions."""
        return store.devices()

    @app.post("/api/devices/{device_id}/unlock", tags=["devices"], status_code=202)
    def unlock(device_id: str, body: Reason, user: Unlocker) -> dict[str, Any]:
        """Ask a gate to release its lock for one pulse (recorded with who and why)."""
        known = {d["device_id"]: d for d in store.devices()}
        if device_id not in known:
            raise HTTPException(404, f"unknown device {device_id!r}")
        session, room = device_room(store, device_id)
        if not auth.may_act_on(store, user, session, room):
            raise scope_error(user, f"gate {device_id} (room {room or 'unknown'})")
        ctx.commander(known[device_id]["centre"], device_id, "unlock",
                      {"reason": body.reason, "by": user["username"], "ts": utc_now_iso()})
        store.audit(user["username"], "remote_unlock", device_id, {"reason": body.reason})
        return {"device_id": device_id, "command": "unlock", "status": "sent"}

    # ---- gate assignments and events refused at admission (gateway/admission.py) ---------

    @app.get("/api/assignments", tags=["devices"])
    def assignments(user: Viewer) -> list[dict[str, Any]]:
        """Every gate's assignment: the room (and session) it admits for."""
        return store.assignments()

    @app.put("/api/devices/{device_id}/assignment", tags=["devices"])
    def put_assignment(device_id: Annotated[str, Path(pattern=ID_PATTERN.pattern)],
                       body: AssignmentIn, user: Manager) -> dict[str, Any]:
        """Assign a gate (audited). The ingest re-evaluates the events it refused for
        configuration reasons within a few seconds."""
        try:
            return assign(store, device_id, body.centre, body.room, body.session,
                          user["username"])
        except AssignmentError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/api/sessions/{session_id}/refused", tags=["attendance"])
    def refused(session_id: str, user: Viewer,
                room: Annotated[str | None, Query(max_length=64)] = None,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> list[dict[str, Any]]:
        """Events kept as evidence but not counted (``admission`` names why), newest first."""
        need_session(session_id)
        return store.refused_events(session_id, room, limit)

    @app.get("/api/alerts", tags=["devices"])
    def alerts(user: Viewer) -> list[dict[str, Any]]:
        """Offline gates, door alarms, suspected spoofs, duplicate identities, refused
        messages; newest first, with acknowledgements."""
        return current_alerts(store)

    @app.post("/api/alerts/{alert_key}/ack", tags=["proctor"])
    def acknowledge(alert_key: str, user: Proctor,
                    body: Annotated[Note | None, Body()] = None) -> dict[str, Any]:
        """Mark an alert as seen and handled."""
        alert = next((a for a in current_alerts(store, limit=10_000) if a["key"] == alert_key),
                     None)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_key!r}")
        session, room = (device_room(store, alert["device_id"]) if alert["device_id"]
                         else (None, None))
        room = alert["room"] or room
        if not auth.may_act_on(store, user, session, room):
            raise scope_error(user, f"the alert of room {room or 'unknown'}")
        note = body.note if body else None
        new = store.acknowledge(alert_key, user["username"], note)
        if new:
            store.audit(user["username"], "alert_ack", alert_key, {"note": note})
        return {"key": alert_key, "acknowledged": True, "already": not new}

    # ---- monitoring (kept from the walking skeleton) ----------------------------------------

    @app.get("/api/rooms", tags=["monitoring"])
    def rooms(user: Viewer) -> list[dict[str, Any]]:
        """Raw per session and room event counts (also for sessions not scheduled here)."""
        return store.room_summary()

    @app.get("/api/events", tags=["monitoring"])
    def events(user: Viewer,
               limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """The newest check-in events, newest first."""
        return store.recent_events(limit)

    @app.get("/api/stats", tags=["monitoring"])
    def api_stats(user: Viewer) -> dict[str, Any]:
        """Ingest counters since start (summed over the ingest processes) plus totals in the
        store."""
        if ctx.stats is not None:
            live: dict[str, Any] = dict(ctx.stats.__dict__)
        else:
            rows = store.ingest_counters()
            live = {k: sum(int(r[k]) for r in rows)
                    for k in ("received", "stored", "duplicates", "rejected", "refused")}
            live["processes"] = len(rows)
        return {**store.counts(), "ingest": live}

    @app.get("/api/overview", tags=["monitoring"])
    def api_overview(user: Viewer) -> dict[str, Any]:
        """What the home page shows."""
        return overview(store)

    # ---- public board -----------------------------------------------------------------------

    @app.get("/api/public/sessions/{session_id}", tags=["public"])
    def board(session_id: str) -> dict[str, Any]:
        """Counts per room for one session, no login; no names, ids or devices."""
        return public_board(need_session(session_id))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/stream", include_in_schema=False)
    async def stream(request: Request) -> StreamingResponse:
        """The overview as server-sent events whenever anything changes (login needed)."""
        if not auth.allowed(current_user(request), "view"):
            raise HTTPException(401, "log in first")
        return sse_stream(ctx, lambda: overview(store))

    add_pages(app, timedelta(hours=display_utc_offset_h))
    return app
