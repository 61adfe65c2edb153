"""The web tier's own process: dashboard, API and (optionally) the public board's listener.

``gerbang-gateway run`` starts it as a child, ``gerbang-gateway web --worker-of PID``, and
starts it again if it exits; the ingest process serves no HTTP, so nothing a web client sends
can take memory or the GIL from ingest. The web process has no broker connection: gate
commands go through the store's queue (gateway/outgoing.py), ``/api/stats`` reads the ingest
processes' counters from the store. Its address space can be capped (``web_memory_limit_mb``,
RLIMIT_AS): a request that needs more fails there alone, and at worst the process is restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from gerbang.stopping import stop_processes

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.web")

#: glibc gives every thread that allocates its own 64 MiB malloc arena (address space, mostly
#: untouched); with the thread pool that serves requests that would take RLIMIT_AS for
#: nothing, so the web process uses two.
MALLOC_ARENAS = "2"


def limit_memory(limit_mb: int) -> None:
    """Cap this process's address space at ``limit_mb`` MB (0: leave it)."""
    if limit_mb <= 0:
        return
    limit = limit_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    log.info("web process address space capped at %d MB (web_memory_limit_mb)", limit_mb)


def die_with_parent(parent: int) -> bool:
    """Ask Linux to send SIGTERM here when ``parent`` exits (even by SIGKILL); False if it is
    gone already. The parent-watch thread stays as a fallback where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent


class _Server:
    """A uvicorn server that leaves signals to serve_web (two servers share one loop)."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        self.server = Quiet(config)


def _uvicorn_config(app: Any, host: str, port: int, gw: Any, tls: bool,
                    max_connections: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level="warning",
        ssl_certfile=str(gw.tls_cert_file) if tls else None,
        ssl_keyfile=str(gw.tls_key_file) if tls else None,
        # X-Forwarded-For / -Proto only from the configured reverse proxies.
        proxy_headers=bool(gw.trusted_proxies), forwarded_allow_ips=gw.trusted_proxies or [],
        # connections + requests at once; past it uvicorn answers 503 (memory stays bounded)
        limit_concurrency=max_connections, timeout_keep_alive=5,
        timeout_graceful_shutdown=3, server_header=False)


def serve_web(config: GatewayConfig, parent: int | None = None) -> int:
    """Run the web tier in this process until SIGTERM (or the parent ``run`` is gone)."""
    from gateway.public import create_public_app
    from gateway.ratelimit import LoginLimits, StreamLimiter
    from gateway.store import open_store
    from gateway.web import create_app

    gw = config.gateway
    if parent is not None and not die_with_parent(parent):
        log.warning("parent gateway %d is gone; not starting", parent)
        return 0
    store = open_store(gw.db)
    streams = StreamLimiter(gw.public_stream_max, gw.public_stream_per_address)
    app = create_app(store, display_utc_offset_h=gw.display_utc_offset_h,
                     secure_cookies=gw.secure_cookies,
                     login_limits=LoginLimits.from_config(gw), board_streams=streams)
    servers = [_Server(_uvicorn_config(app, gw.http_host, gw.http_port, gw, gw.tls, 500))]
    scheme = "https" if gw.tls else "http"
    log.info("dashboard at %s://%s:%d/ (web process %d, database %s, no broker connection)",
             scheme, gw.http_host, gw.http_port, os.getpid(), gw.db)
    if gw.public_http_port is not None:
        public = create_public_app(store, display_utc_offset_h=gw.display_utc_offset_h,
                                   board_streams=streams)
        servers.append(_Server(_uvicorn_config(public, gw.public_http_host,
                                               gw.public_http_port, gw, gw.tls,
                                               gw.public_stream_max + 100)))
        log.info("public board at %s://%s:%d/board/{session}", scheme, gw.public_http_host,
                 gw.public_http_port)
    limit_memory(gw.web_memory_limit_mb)

    def on_signal(*_: object) -> None:
        for s in servers:
            s.server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent, on_signal), name="parent-watch",
                         daemon=True).start()

    async def serve_all() -> None:
        await asyncio.gather(*(s.server.serve() for s in servers))

    asyncio.run(serve_all())
    if not all(s.server.started for s in servers):
        log.error("the web tier could not start (is the port in use?)")
        return 1
    log.info("web process stopped")
    return 0


def _watch_parent(parent: int, stop: Any) -> None:
    stopping = threading.Event()
    while not stopping.wait(1.0):
        if os.getppid() != parent:
            log.warning("parent gateway %d is gone; stopping the web process", parent)
            stop()
            return


class WebProcess:
    """The web tier's child process of a ``run``, kept running (like the ingest workers).

    It is ``gerbang-gateway web --worker-of PID`` with the parent's config and command-line
    overrides. A child that exits (a crash, its memory limit) is started again after 2 s; the
    ingest goes on meanwhile. It stops by itself when the parent is gone.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.command = self._command(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="web-process",
                                        daemon=True)

    @staticmethod
    def _command(args: argparse.Namespace) -> list[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *(["-v"] if args.verbose else []), "web",
               "--worker-of", str(os.getpid())]
        for flag, value in (("--config", args.config), ("--db", args.db),
                            ("--http-host", args.http_host), ("--http-port", args.http_port)):
            if value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self) -> None:
        """Start the child, then watch it."""
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        env = {**os.environ}
        env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)
        self.proc = subprocess.Popen(self.command, env=env)
        self.starts += 1
        log.info("web process started (pid %d)", self.proc.pid)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                log.warning("web process pid %d exited with %s; starting it again in 2 s",
                            proc.pid, proc.returncode)
                if self._stopping.wait(2.0):
                    return
                self._spawn()

    def stop(self) -> None:
        """Stop the child (it closes its connections first), waiting up to 10 s."""
        self._stopping.set()
        stop_processes([self.proc], timeout=10)
