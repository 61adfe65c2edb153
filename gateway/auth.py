"""Users, roles and login tokens for the dashboard and API.

Passwords are hashed with Argon2id (argon2-cffi's defaults, the OWASP recommendation); a login
returns a random token of which only the SHA-256 is stored, so a stolen database copy cannot be
used to log in. The same token works as a cookie (pages) and as ``Authorization: Bearer`` (API).

Roles, from least to most trusted:

============  ===================================================================
viewer        reads attendance, devices and alerts (e.g. an observer from BKN)
technician    viewer + device actions (remote unlock)
proctor       viewer + applicant actions (manual admit, mark absent, reopen),
              remote unlock, alert acknowledgement
manager       everything: sessions, roster import, users, exports of the audit log
============  ===================================================================

Every account but a manager's has a *room scope*: ``(session, room)`` pairs, ``*`` meaning
any. Applicant actions, remote unlock and alert acknowledgements outside it are refused (403);
reading is not scoped. A new proctor is given its rooms explicitly (``--rooms R01,R02``, or
``*`` for every room); other roles default to every room.

A password reset ends every login of the account; a disabled account's tokens stop working at
once. Failed logins lock the username and the client address for a while
(gateway/ratelimit.py); the store keeps the counts, so every web process and a restart see them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("viewer", "technician", "proctor", "manager")
#: permission -> roles that hold it
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "view": ROLES,
    "unlock": ("technician", "proctor", "manager"),
    "proctor": ("proctor", "manager"),
    "manage": ("manager",),
}
TOKEN_TTL_S = 14 * 3600  # one exam day, doors-open to the signed report
MIN_PASSWORD = 10

_hasher = PasswordHasher()


class AuthError(Exception):
    """Login refused; the message is safe to show (it never says which part was wrong)."""


def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` (refuses passwords shorter than MIN_PASSWORD)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def token_digest(token: str) -> str:
    """What the store keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


#: A room scope: ``(session or "*", room or "*")``.
Scope = tuple[str, str]
ALL_ROOMS: tuple[Scope, ...] = (("*", "*"),)


def check_username(username: str) -> str:
    """``username`` if the account rules allow it; ValueError naming the field otherwise."""
    if not username or len(username) > 64 or not username.replace(".", "").replace(
            "_", "").replace("-", "").isalnum():
        raise ValueError(f"username must be 1-64 letters, digits, . _ -; got {username!r}")
    return username


def parse_rooms(items: Sequence[str] | str) -> list[Scope]:
    """A room scope from ``R01,R02`` (those rooms in every session), ``S1/R01`` (one room of
    one session), ``S1/*`` (every room of S1) or ``*`` (everything); ValueError naming the
    field for anything else. Accepts one comma-separated string or a list of items."""
    from gerbang.wire import ID_PATTERN

    parts = items.split(",") if isinstance(items, str) else list(items)
    scope: list[Scope] = []
    for raw in parts:
        item = raw.strip()
        session, _, room = item.rpartition("/") if "/" in item else ("*", "", item)
        for what, value in (("session", session), ("room", room)):
            if value != "*" and not ID_PATTERN.match(value):
                raise ValueError(f"rooms: {item!r}: the {what} must be an id "
                                 f"(letters, digits, . _ -) or *")
        scope.append((session, room))
    if not scope:
        raise ValueError("rooms: give at least one room, or * for every room")
    return sorted(set(scope))


def add_user(store: Any, username: str, password: str, role: str,
             rooms: Sequence[Scope] | None = None) -> None:
    """Create or reset a user (a reset ends every login of the account); ``rooms`` sets its
    scope (None: keep an existing account's scope, every room for a new one). Raises
    ValueError naming the bad field."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    check_username(username)
    new = store.user(username) is None
    store.put_user(username, hash_password(password), role)
    if rooms is not None or new:
        store.set_user_rooms(username, list(rooms if rooms is not None else ALL_ROOMS))


def check_password(store: Any, username: str, password: str) -> dict[str, Any] | None:
    """The account if ``password`` is its password, else None. Costs one Argon2id check
    (64 MiB, tens of ms) whether or not the username exists, so neither the answer nor its
    time says which. Callers bound how many run at once (gateway/ratelimit.py)."""
    user = store.user(username)
    try:
        _hasher.verify(user["password_hash"] if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def open_session(store: Any, user: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A new login token for ``user`` (AuthError if the account is disabled): ``(token,
    {username, role})``; only the token's SHA-256 is stored."""
    if user.get("disabled_at") is not None:
        raise AuthError("this account is disabled; a manager can enable it again")
    token = secrets.token_urlsafe(32)
    store.put_token(token_digest(token), user["username"], time.time() + TOKEN_TTL_S)
    return token, {"username": user["username"], "role": user["role"]}


def login(store: Any, username: str, password: str) -> tuple[str, dict[str, Any]]:
    """Check a password and open a session: returns ``(token, user)``; AuthError otherwise.
    No lock-out or concurrency bound here: the web tier goes through ratelimit.LoginGuard."""
    user = check_password(store, username, password)
    if user is None:
        raise AuthError("wrong username or password")
    return open_session(store, user)


def in_scope(scope: Sequence[Scope], session: str | None, room: str | None) -> bool:
    """Whether a scope covers a room of a session (an unknown room or session is covered
    only by ``*``)."""
    return any((s == "*" or s == session) and (r == "*" or r == room) for s, r in scope)


def may_act_on(store: Any, user: dict[str, Any], session: str | None,
               room: str | None) -> bool:
    """Whether ``user`` may act (applicant action, unlock, acknowledgement) on that room of
    that session: managers always, everyone else within their room scope."""
    if user["role"] == "manager":
        return True
    return in_scope(store.user_rooms(user["username"]), session, room)


def user_for_token(store: Any, token: str | None) -> dict[str, Any] | None:
    """The logged-in user for a token, or None."""
    if not token:
        return None
    return store.token_user(token_digest(token))


def allowed(user: dict[str, Any] | None, permission: str) -> bool:
    """Whether ``user`` holds ``permission``."""
    return user is not None and user["role"] in PERMISSIONS[permission]


_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))
