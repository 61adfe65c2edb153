"""The centre's processes as the rehearsal drives them: the gates, their cameras, the gateway.

How the simulated gates see people. A gate reads its camera as a replay playlist
(``camera/feed.txt``, looped, in ``realtime`` mode so frames without a face stay silent, as with
a live camera). The playlist normally names an empty-hallway picture; to show someone, the
rehearsal writes their frame and points the playlist at it, learns from inotify the moment the
gate's camera thread has read it (:class:`CameraWatch`), and points the playlist back at the
hallway. The applicant then reads the outcome off the gate (its log line for the decision), as
a person reads the screen, and acts on it. Measurements never rely on those log lines:
attendance comes from the gateway, delivery from the outboxes and the store.

Also here: the gateway process, its config and (with PostgreSQL) its throwaway database, and
the JSON API calls the manager and the proctors make.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2

from device.processes import workers_of
from gerbang.rehearsal.frames import hallway_image
from gerbang.rehearsal.scenario import CENTRE
from gerbang.simulation import wait_http, write_toml
from gerbang.stopping import stop_processes

log = logging.getLogger("rehearsal")


FEED = "feed.txt"
HALLWAY = "hallway.png"
DECISION_LINE = re.compile(
    r"device\.decide\.checkin: seq=(?P<seq>\d+) (?P<outcome>accepted|refused|no_face)"
    r"(?: applicant=(?P<applicant>\S+))?(?: card=(?P<card>\S+))?(?: reason=(?P<reason>\S+))?")


def _replace_text(path: Path, text: str) -> None:
    """Swap a small file's content in one rename, so a reader sees the old or the new whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: The check-in worker's line once it judges frames again (after a start or a restart).
CHECKIN_READY = b"matching against roster"


class GateRig:
    """One simulated gate: its folders, config, device-service process, camera feed and log.

    ``up`` is set while the service runs and its camera reads the feed; the fault injector
    clears it before killing the process, so a door waits (as an applicant would) until the gate
    is back.
    """

    def __init__(self, device_id: str, room: str, gates_dir: Path, logs_dir: Path) -> None:
        self.device_id = device_id
        self.room = room
        self.dir = gates_dir / device_id
        self.camera = self.dir / "camera"
        self.config = self.dir / "device.toml"
        self.log_path = logs_dir / f"{device_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.alive = False
        self.up = threading.Event()
        #: Set from the moment the camera took an applicant's frame until the gate's decision
        #: is read: a fault aimed "mid check-in" waits for it.
        self.deciding = threading.Event()
        self.cond = threading.Condition()
        self.captured: dict[str, float] = {}
        self.frames = 0
        self.starts: list[float] = []
        self.logged_seqs: set[int] = set()
        self._offset = 0
        self._partial = b""

    @property
    def outbox_path(self) -> Path:
        """The gate's SQLite outbox (``data_dir/outbox.sqlite``)."""
        return self.dir / "outbox.sqlite"

    def prepare(self) -> None:
        """The camera folder with the empty hallway on the feed."""
        self.camera.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self.camera / HALLWAY), hallway_image())
        _replace_text(self.camera / FEED, HALLWAY + "\n")

    def start(self, env: dict[str, str]) -> None:
        """Start the device service (``python -m device.cli run``), logging to its own file."""
        with open(self.log_path, "ab") as out:
            # Its own process group: a power cut takes the supervisor and every worker at once.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "device.cli", "run", "--config", str(self.config)],
                stdout=out, stderr=out, env=env, start_new_session=True)
        self.alive = True
        self.starts.append(time.monotonic())

    def kill(self) -> int | None:
        """Power cut: ``kill -9`` the supervisor and all its workers at once (no shutdown, no
        flush, no child told); returns the supervisor's pid."""
        self.alive = False
        self.up.clear()
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        return self.process.pid

    def workers(self) -> dict[str, int]:
        """``{worker name: pid}`` of the service's live worker processes (from /proc)."""
        return workers_of(self.process.pid) if self.process is not None else {}

    def kill_worker(self, name: str) -> int | None:
        """``kill -9`` one worker process of the service; its supervisor restarts it."""
        pid = self.workers().get(name)
        if pid is None:
            return None
        self.alive = False
        self.up.clear()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return pid

    def log_count(self, needle: bytes) -> int:
        """How many times ``needle`` appears in the gate's log so far."""
        try:
            return self.log_path.read_bytes().count(needle)
        except OSError:
            return 0

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the service closes its outbox and uplink), SIGKILL if it hangs."""
        self.alive = False
        self.up.clear()
        if stop_processes([self.process], timeout):
            log.warning("%s did not stop within %.0fs; killed it", self.device_id, timeout)

    def on_read(self, name: str) -> None:
        """The camera thread of the service closed ``name`` after reading it (inotify)."""
        if name == FEED:
            if self.alive:
                self.up.set()
            return
        if name != HALLWAY:
            with self.cond:
                self.captured[name] = time.monotonic()
                self.cond.notify_all()

    def point_feed(self, name: str) -> None:
        """What the camera sees from its next frame on."""
        _replace_text(self.camera / FEED, name + "\n")

    def wait_captured(self, name: str, timeout: float, stop: threading.Event) -> float | None:
        """When the camera took frame ``name``; None after ``timeout`` of the gate being up
        without taking it (the time the gate is down does not count: the applicant waits)."""
        waited, last = 0.0, time.monotonic()
        with self.cond:
            while name not in self.captured:
                if stop.is_set() or waited > timeout:
                    return None
                self.cond.wait(0.1)
                now = time.monotonic()
                if self.up.is_set():
                    waited += now - last
                last = now
            return self.captured[name]

    def decisions(self) -> list[dict[str, Any]]:
        """Decisions the gate logged since the last call (what its screen showed)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        found = []
        for line in lines:
            match = DECISION_LINE.search(line.decode(errors="replace"))
            if match:
                found.append(match.groupdict())
                self.logged_seqs.add(int(match["seq"]))
        return found

    def decision_ts(self, seq: int) -> str | None:
        """The ``ts`` of the event ``seq`` in the gate's outbox (read-only): the decision time
        the gateway judges present or late by. None if it cannot be read."""
        try:
            db = sqlite3.connect(f"file:{self.outbox_path}?mode=ro", uri=True, timeout=2)
            try:
                row = db.execute("SELECT payload FROM outbox WHERE seq = ?", (seq,)).fetchone()
            finally:
                db.close()
            return json.loads(row[0]).get("ts") if row else None
        except (sqlite3.Error, ValueError):
            return None

    def read_outbox(self) -> dict[str, int] | None:
        """The outbox's counters (appended = next seq, acked) and depth, read-only."""
        if not self.outbox_path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{self.outbox_path}?mode=ro", uri=True, timeout=2)
            try:
                counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
                # Acknowledged rows stay in the outbox for resends: the depth is the
                # unacknowledged counter (an outbox from before that counter: every row).
                depth = counters.get("unacked")
                if depth is None:
                    (depth,) = db.execute("SELECT count(*) FROM outbox").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return None
        return {"appended": int(counters.get("next_seq", 0)),
                "acked": int(counters.get("acked", 0)), "depth": int(depth)}


class CameraWatch:
    """inotify on every gate's camera folder: tells each rig which file its camera just read.

    Linux only (like the gates). Reading a frame file is the moment the camera 'takes' it; the
    rehearsal then points the feed back at the hallway before the camera's next frame.
    """

    IN_CLOSE_NOWRITE = 0x10

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._rigs: dict[int, GateRig] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-watch", daemon=True)

    def watch(self, rig: GateRig) -> None:
        """Follow ``rig``'s camera folder."""
        wd = self._libc.inotify_add_watch(self.fd, str(rig.camera).encode(),
                                          self.IN_CLOSE_NOWRITE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {rig.camera} failed")
        self._rigs[wd] = rig

    def start(self) -> None:
        """Start dispatching."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            offset = 0
            while offset + 16 <= len(data):
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                raw = data[offset + 16:offset + 16 + length]
                offset += 16 + length
                rig = self._rigs.get(wd)
                name = raw.split(b"\0", 1)[0].decode(errors="replace")
                if rig is not None and name:
                    rig.on_read(name)

    def close(self) -> None:
        """Stop and release the inotify descriptor."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        os.close(self.fd)


class GatewayRunner:
    """The gateway process (``python -m gateway.cli run --config gateway.toml``)."""

    def __init__(self, config: Path, log_path: Path, base_url: str) -> None:
        self.config = config
        self.log_path = log_path
        self.base_url = base_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], timeout: float = 90.0) -> None:
        """Start it and wait until its HTTP side answers."""
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                stdout=out, stderr=out, env=env)
        wait_http(f"{self.base_url}/healthz", timeout)

    def kill(self) -> int | None:
        """``kill -9``; returns the pid."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.kill()
        self.process.wait()
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hangs."""
        stop_processes([self.process], timeout=20)


def api(base_url: str, method: str, path: str, token: str | None = None,
         body: Any = None, timeout: float = 15.0) -> Any:
    """One JSON API call to the gateway; raises urllib errors (HTTPError carries the status)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base_url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def login(base_url: str, username: str, password: str) -> str:
    """Log in to the gateway's API; returns the bearer token."""
    # Argon2id on purpose costs CPU and memory; with 40 gates starting on two cores (and other
    # work on a shared machine) a login can take far longer than an ordinary call.
    return api(base_url, "POST", "/api/login", body={"username": username,
                                                    "password": password},
               timeout=90.0)["token"]


def wait_for(predicate: Any, timeout: float, stop: threading.Event) -> bool:
    """Poll ``predicate`` (an outbox drained, every check-in stored...) every 0.2 s until it
    holds, ``timeout`` passes or ``stop`` is set; whether it holds in the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def write_gateway_config(path: Path, db: str, http_port: int, broker_port: int,
                         broker: dict[str, Any] | None = None) -> None:
    """The gateway's TOML: its database, HTTP port and broker; ``broker`` adds keys to
    ``[broker]`` (the TLS files: ``CentreTLS.broker_section``)."""
    write_toml(path, "written by gerbang-demo --scenario exam-day", {
        "gateway": {"db": db, "http_host": "127.0.0.1", "http_port": http_port,
                    "centre": CENTRE, "client_id": "gerbang-gateway", "retention_days": 0},
        "broker": {"host": "127.0.0.1", "port": broker_port, "protocol": 5, **(broker or {})}})


def create_pg_database(admin_url: str) -> str:
    """A fresh PostgreSQL database for this rehearsal; returns its URL."""
    import secrets

    import psycopg

    name = f"gerbang_rehearsal_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    """Drop the rehearsal's database (``url``, made by :func:`create_pg_database`)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
