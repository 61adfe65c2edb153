"""What keeps an unauthenticated client from exhausting the web tier: a bound on password checks
running at once, lock-outs per username and per client address, a cap on every request body,
and a cap on the public board's live streams.

Every Argon2id check takes 64 MiB for tens of milliseconds: forty at once took the gateway from
166 MB to 2.5 GB. So at most ``login_concurrency`` run at once, at most ``login_queue`` more
wait (in the event loop, holding no thread), and the rest are answered 503 at once. Lock-outs
are counted in the store (``login_throttle``), so a restart or a second web process sees them,
and they are kept by username string whether or not such an account exists: the answers for a
real and an invented username are the same.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from gateway import auth

log = logging.getLogger(__name__)

#: Any request body above this is refused with 413 (logins, reasons, sessions are tiny).
MAX_BODY_BYTES = 64 * 1024
#: The roster CSV import may send this much (a centre's whole registration export).
MAX_ROSTER_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class LoginLimits:
    """The ``[gateway] login_*`` settings."""

    concurrency: int = 2
    queue: int = 4
    lock_after: int = 6
    address_lock_after: int = 20
    window_s: float = 900.0
    lockout_s: float = 900.0
    #: How long a queued check waits for a slot before it is answered 503.
    wait_s: float = 10.0

    @classmethod
    def from_config(cls, gw: Any) -> LoginLimits:
        """From a ``ServiceConfig``."""
        return cls(concurrency=gw.login_concurrency, queue=gw.login_queue,
                   lock_after=gw.login_lock_after,
                   address_lock_after=gw.login_address_lock_after,
                   window_s=gw.login_window_s, lockout_s=gw.login_lockout_s)


class LoginRefused(Exception):
    """A login answered without success: HTTP ``status``, a message safe to show (it never
    says whether the username exists), and ``retry_after`` seconds for 429/503."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After`` for a lock-out or a busy answer."""
        return {} if self.retry_after is None else {
            "Retry-After": str(max(1, int(self.retry_after + 0.999)))}


def client_key(request: Request) -> str:
    """The client address a lock-out counts against: the peer (or, from a trusted proxy, the
    forwarded client; uvicorn resolves that), an IPv6 address by its /64 (one host can use
    the whole /64)."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginGuard:
    """Every password check of one web process goes through here (``await guard.login``)."""

    def __init__(self, store: Any, limits: LoginLimits | None = None) -> None:
        self.store = store
        self.limits = limits or LoginLimits()
        self._running = 0
        self._waiting = 0
        self._next_purge = 0.0

    async def login(self, username: str, password: str, address: str,
                    ) -> tuple[str, dict[str, Any]]:
        """``(token, user)`` for a right password; LoginRefused otherwise: 429 while the
        address or the username is locked out (no password is checked then), 503 when too
        many checks are running and waiting, 401 for a wrong password, 403 for a disabled
        account."""
        now = time.time()
        key = username[:64]
        until = await asyncio.to_thread(self.store.login_locked_until, "address", address, now)
        if until is not None:
            raise LoginRefused(429, "too many failed logins from this address; try again "
                                    f"in {_minutes(until - now)}", until - now)
        until = await asyncio.to_thread(self.store.login_locked_until, "user", key, now)
        if until is not None:
            raise LoginRefused(429, "too many failed logins for this username; try again in "
                                    f"{_minutes(until - now)} or ask a manager to unlock it",
                               until - now)
        user = await self._check(username, password)
        if user is None:
            await asyncio.to_thread(self._failed, key, address)
            raise LoginRefused(401, "wrong username or password")
        try:
            token, public = await asyncio.to_thread(auth.open_session, self.store, user)
        except auth.AuthError as exc:
            raise LoginRefused(403, str(exc)) from None
        await asyncio.to_thread(self.store.clear_login_failures, "user", key)
        return token, public

    async def _check(self, username: str, password: str) -> dict[str, Any] | None:
        """One Argon2id check in a worker thread, at most ``concurrency`` at once."""
        limits = self.limits
        if self._running + self._waiting >= limits.concurrency + limits.queue:
            raise LoginRefused(503, "too many logins at once; try again in a moment", 1.0)
        # A few waiters poll for a slot (no lock bound to one event loop, no thread held);
        # the counters are only touched from the event loop, so they need no lock.
        self._waiting += 1
        try:
            deadline = time.monotonic() + limits.wait_s
            while self._running >= limits.concurrency:
                if time.monotonic() > deadline:
                    raise LoginRefused(503, "too many logins at once; try again in a moment",
                                       1.0)
                await asyncio.sleep(0.02)
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            return await asyncio.to_thread(auth.check_password, self.store, username, password)
        finally:
            self._running -= 1

    def _failed(self, key: str, address: str) -> None:
        """Count a failure against the username and the address; log and audit a new lock."""
        limits, now = self.limits, time.time()
        for scope, name, lock_after in (("user", key, limits.lock_after),
                                        ("address", address, limits.address_lock_after)):
            failures, until = self.store.record_login_failure(
                scope, name, now, limits.window_s, lock_after, limits.lockout_s)
            if until is not None and failures == lock_after:
                log.warning("login lock-out: %s %r after %d failed logins in %.0f s, until "
                            "%s", scope, name, failures, limits.window_s,
                            time.strftime("%H:%M:%S", time.localtime(until)))
                self.store.audit(name if scope == "user" else f"address:{name}",
                                 "login_locked", name, {"scope": scope, "failures": failures,
                                                        "address": address,
                                                        "seconds": limits.lockout_s})
        if now >= self._next_purge:
            self._next_purge = now + 60
            self.store.purge_login_throttle(now, max(limits.window_s, limits.lockout_s))


def _minutes(seconds: float) -> str:
    minutes = max(1, int(seconds / 60 + 0.999))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


class StreamLimiter:
    """Live streams open at once: ``total`` in all, ``per_address`` from one client. Only the
    event loop touches the counts, so they need no lock."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        """Streams open now."""
        return sum(self._open.values())

    def try_open(self, address: str) -> JSONResponse | None:
        """Count one more stream from ``address`` and return None, or return the 503/429
        answer when that would pass a limit (nothing counted then)."""
        if self.open >= self.total:
            log.warning("live stream refused: %d open (public_stream_max)", self.open)
            return JSONResponse({"detail": "too many live viewers; reload in a minute"}, 503,
                                headers={"Retry-After": "30"})
        if self._open[address] >= self.per_address:
            return JSONResponse({"detail": f"at most {self.per_address} live streams from "
                                           "one address"}, 429, headers={"Retry-After": "30"})
        self._open[address] += 1
        return None

    def close(self, address: str) -> None:
        """A stream from ``address`` ended."""
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


class BodyLimit:
    """ASGI middleware: a request body over its cap is answered 413 and not read further.

    The cap is ``MAX_BODY_BYTES`` for every route but the roster import (``MAX_ROSTER_BYTES``).
    A ``Content-Length`` over the cap is refused before a byte of the body is read; a chunked
    body is counted as it streams, and the 413 goes out as soon as it passes the cap (the app
    then sees a disconnect, and whatever it would answer is dropped).
    """

    def __init__(self, app: Any, default: int = MAX_BODY_BYTES,
                 roster: int = MAX_ROSTER_BYTES) -> None:
        self.app = app
        self.default = default
        self.roster = roster

    def cap(self, scope: Any) -> int:
        """The body cap of this request."""
        path = scope.get("path", "")
        if (scope.get("method") == "POST" and path.startswith("/api/sessions/")
                and path.endswith("/roster") and path.count("/") == 4):
            return self.roster
        return self.default

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap(scope)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > cap:
                await _too_large(cap, declared)(scope, receive, send)
                return
        seen = 0
        refused = False
        started = False

        async def counting_receive() -> Any:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    refused = True
                    if not started:
                        await _too_large(cap, None)(scope, _disconnected, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; the app's own answer is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _disconnected() -> dict[str, str]:
    return {"type": "http.disconnect"}


def _too_large(cap: int, declared: int | None) -> JSONResponse:
    log.warning("request body refused: %s over the %d-byte cap",
                f"Content-Length {declared}" if declared is not None else "streamed body", cap)
    return JSONResponse({"detail": f"request body larger than {cap} bytes"}, 413,
                        headers={"Connection": "close"})


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site: an ``Origin`` (or,
    without one, a ``Referer``) whose host is not this request's ``Host``. Requests without
    either (API clients, curl) pass; the login form also needs its double-submit token."""
    from urllib.parse import urlsplit

    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    if origin == "null":
        return False
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def tokens_match(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens (both present and equal)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
