"""Dashboard accounts and who did what: users and their login tokens (hashes only), room scopes,
disabled accounts, login lock-outs (counted here so every web process sees them), and the
audit log of every write, login and export.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from gateway.store.sql import SqlBase


class AccountQueries(SqlBase):
    """Users, tokens, room scopes, login lock-outs and the audit log."""

    def put_user(self, username: str, password_hash: str, role: str) -> None:
        """Create a user or reset their password and role; every login token of the user ends
        in the same transaction (a reset password must not leave an old session working)."""
        self._transaction([
            ("INSERT INTO users (username, password_hash, role, created_at) "
             "VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
             "password_hash = excluded.password_hash, role = excluded.role",
             [(username, password_hash, role, time.time())]),
            ("DELETE FROM auth_tokens WHERE username = ?", [(username,)]),
        ])

    def user(self, username: str) -> dict[str, Any] | None:
        """One user (with the password hash), or None."""
        rows = self._execute("SELECT * FROM users WHERE username = ?", (username,))
        return rows[0] if rows else None

    def users(self) -> list[dict[str, Any]]:
        """Every user without password hashes."""
        rooms = self.all_user_rooms()
        return [{**r, "rooms": rooms.get(r["username"], [])} for r in self._execute(
            "SELECT username, role, created_at, disabled_at, disabled_by FROM users "
            "ORDER BY username")]

    def put_token(self, token_sha256: str, username: str, expires_at: float) -> None:
        """Remember a login (only the token's hash is stored)."""
        self._executemany("INSERT INTO auth_tokens (token_sha256, username, expires_at) "
                          "VALUES (?, ?, ?)", [(token_sha256, username, expires_at)])

    def token_user(self, token_sha256: str) -> dict[str, Any] | None:
        """The user a live token belongs to, or None (unknown or expired)."""
        rows = self._execute(
            "SELECT u.username, u.role FROM auth_tokens t JOIN users u "
            "ON u.username = t.username WHERE t.token_sha256 = ? AND t.expires_at > ? "
            "AND u.disabled_at IS NULL", (token_sha256, time.time()))
        return rows[0] if rows else None

    def drop_token(self, token_sha256: str) -> None:
        """Log out."""
        self._executemany("DELETE FROM auth_tokens WHERE token_sha256 = ?", [(token_sha256,)])

    def set_user_disabled(self, username: str, disabled: bool, by: str) -> bool:
        """Disable (every token ends at once) or re-enable an account; False if no such user."""
        if disabled:
            steps: list[tuple[str, list[tuple[Any, ...]]]] = [
                ("UPDATE users SET disabled_at = ?, disabled_by = ? WHERE username = ?",
                 [(time.time(), by, username)]),
                ("DELETE FROM auth_tokens WHERE username = ?", [(username,)])]
        else:
            steps = [("UPDATE users SET disabled_at = NULL, disabled_by = NULL "
                      "WHERE username = ?", [(username,)])]
        if self.user(username) is None:
            return False
        self._transaction(steps)
        return True

    def set_user_rooms(self, username: str, rooms: Sequence[tuple[str, str]]) -> None:
        """Make ``rooms`` (``(session or '*', room or '*')`` pairs) the account's whole scope."""
        self._transaction([
            ("DELETE FROM user_rooms WHERE username = ?", [(username,)]),
            ("INSERT INTO user_rooms (username, session, room) VALUES (?, ?, ?)",
             [(username, session, room) for session, room in sorted(set(rooms))]),
        ])

    def user_rooms(self, username: str) -> list[tuple[str, str]]:
        """The account's scope as ``(session, room)`` pairs, ``'*'`` meaning any."""
        return [(r["session"], r["room"]) for r in self._execute(
            "SELECT session, room FROM user_rooms WHERE username = ? ORDER BY session, room",
            (username,))]

    def all_user_rooms(self) -> dict[str, list[str]]:
        """Every account's scope as ``SESSION/ROOM`` strings (``*`` = any), by username."""
        out: dict[str, list[str]] = {}
        for r in self._execute("SELECT username, session, room FROM user_rooms "
                               "ORDER BY username, session, room"):
            out.setdefault(r["username"], []).append(
                r["room"] if r["session"] == "*" else f"{r['session']}/{r['room']}")
        return out

    def login_locked_until(self, scope: str, key: str, now: float) -> float | None:
        """When the lock-out of a username (``scope`` 'user') or client address ('address')
        ends, or None if it is not locked out."""
        rows = self._execute("SELECT locked_until FROM login_throttle WHERE scope = ? AND "
                             "key = ? AND locked_until > ?", (scope, key, now))
        return float(rows[0]["locked_until"]) if rows else None

    def record_login_failure(self, scope: str, key: str, now: float, window_s: float,
                             lock_after: int, lockout_s: float) -> tuple[int, float | None]:
        """Count a failed login in one atomic upsert (several web processes may count at
        once): a failure older than ``window_s`` starts the count again, the ``lock_after``-th
        locks the key for ``lockout_s``. Returns ``(failures, locked_until or None)``."""
        fresh = "login_throttle.window_start <= ?"  # the window has run out: count from 1
        self._executemany(
            "INSERT INTO login_throttle (scope, key, failures, window_start, locked_until) "
            "VALUES (?, ?, 1, ?, CASE WHEN ? <= 1 THEN ? END) "
            "ON CONFLICT (scope, key) DO UPDATE SET "
            f"failures = CASE WHEN {fresh} THEN 1 ELSE login_throttle.failures + 1 END, "
            f"window_start = CASE WHEN {fresh} THEN ? ELSE login_throttle.window_start END, "
            f"locked_until = CASE WHEN (CASE WHEN {fresh} THEN 1 "
            "ELSE login_throttle.failures + 1 END) >= ? THEN ? "
            "ELSE login_throttle.locked_until END",
            [(scope, key, now, lock_after, now + lockout_s,
              now - window_s, now - window_s, now, now - window_s, lock_after,
              now + lockout_s)])
        (row,) = self._execute("SELECT failures, locked_until FROM login_throttle "
                               "WHERE scope = ? AND key = ?", (scope, key))
        until = row["locked_until"]
        return int(row["failures"]), (float(until) if until is not None and until > now
                                      else None)

    def clear_login_failures(self, scope: str, key: str) -> bool:
        """Forget a key's failures and lock-out (a successful login, a manager's unlock)."""
        return self._executemany("DELETE FROM login_throttle WHERE scope = ? AND key = ?",
                                 [(scope, key)]) > 0

    def purge_login_throttle(self, now: float, window_s: float) -> int:
        """Drop counts whose window and lock-out are both over (keeps the table small when
        addresses keep changing)."""
        return self._executemany(
            "DELETE FROM login_throttle WHERE window_start <= ? AND "
            "(locked_until IS NULL OR locked_until <= ?)", [(now - window_s, now)])

    def audit(self, username: str, action: str, target: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        """Append to the audit log: who did what to what (every write through the API)."""
        from gerbang.wire import utc_now_iso

        self._executemany(
            "INSERT INTO audit (ts, username, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            [(utc_now_iso(), username, action, target,
              json.dumps(detail, sort_keys=True) if detail else None)])

    def audit_log(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """The audit log, oldest first."""
        return self._execute("SELECT * FROM audit ORDER BY id LIMIT ?", (limit,))
