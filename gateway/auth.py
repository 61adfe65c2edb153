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
"""

from __future__ import annotations

import hashlib
import secrets
import time
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


def add_user(store: Any, username: str, password: str, role: str) -> None:
    """Create or reset a user; raises ValueError naming the bad field."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not username or len(username) > 64 or not username.replace(".", "").replace(
            "_", "").replace("-", "").isalnum():
        raise ValueError(f"username must be 1-64 letters, digits, . _ -; got {username!r}")
    store.put_user(username, hash_password(password), role)


def login(store: Any, username: str, password: str) -> tuple[str, dict[str, Any]]:
    """Check a password and open a session: returns ``(token, user)``; AuthError otherwise."""
    user = store.user(username)
    try:
        if user is None:
            # Spend the same time as a real check so response time does not reveal usernames.
            _hasher.verify(_DUMMY_HASH, password)
            raise AuthError("wrong username or password")
        _hasher.verify(user["password_hash"], password)
    except (VerificationError, InvalidHashError):
        raise AuthError("wrong username or password") from None
    token = secrets.token_urlsafe(32)
    store.put_token(token_digest(token), username, time.time() + TOKEN_TTL_S)
    return token, {"username": user["username"], "role": user["role"]}


def user_for_token(store: Any, token: str | None) -> dict[str, Any] | None:
    """The logged-in user for a token, or None."""
    if not token:
        return None
    return store.token_user(token_digest(token))


def allowed(user: dict[str, Any] | None, permission: str) -> bool:
    """Whether ``user`` holds ``permission``."""
    return user is not None and user["role"] in PERMISSIONS[permission]


_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))
