"""Issue 14, High-6: no unauthenticated client can exhaust the gateway. Against the real
``gerbang-gateway run`` (SQLite, a real Mosquitto), as a centre runs it: its total RSS (every
process of it) under a flood of wrong-password logins and a 200 MB body, while ingest keeps
storing; lock-outs per username and per client address, kept across a restart of the web
process. Figures are printed (``pytest -s``) for the report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from gateway.auth import add_user
from gateway.store import open_store
from gerbang import wire
from gerbang.broker import free_port

PASSWORD = "correct-horse-battery"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
MB = 1024 * 1024
#: Two Argon2id checks at a time (64 MiB each) plus the web process's own growth.
FLOOD_RSS_BOUND_MB = 300
#: A refused body must not be buffered: far below one 200 MB copy.
BODY_RSS_BOUND_MB = 40


# ---- the gateway's processes and their memory ------------------------------------------------

def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def total_rss_mb(pid: int) -> float:
    """RSS of the gateway: the ``run`` process and all its children."""
    return sum(rss_mb(p) for p in descendants(pid))


class PeakRss:
    """Samples the gateway's total RSS every 20 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, total_rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = total_rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, total_rss_mb(self.pid))


def broker_connections(pid: int, broker_port: int) -> int:
    """TCP connections of one process to the broker's port (from /proc/PID/fd, /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].split(":")[1], 16) == broker_port:
                count += 1
    return count


class Gateway:
    """A real ``gerbang-gateway run`` with its config, database and log."""

    def __init__(self, tmp_path: Path, broker_port: int, **gateway: object) -> None:
        self.db = tmp_path / "gw.sqlite"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.broker_port = broker_port
        store = open_store(self.db)
        add_user(store, "manager1", PASSWORD, "manager")
        add_user(store, "proctor1", PASSWORD, "proctor")
        store.upsert_session({"session_id": "S1", "centre": "c1", "name": "SKD",
                              "doors_open": "2026-12-01T06:30:00+07:00",
                              "starts_at": "2099-12-01T07:30:00+07:00",
                              "doors_close": "2099-12-01T08:00:00+07:00"})
        values = {"db": str(self.db), "http_port": self.port, "retention_days": 0, **gateway}
        lines = ["[gateway]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()),
                 "[broker]", "host = \"127.0.0.1\"", f"port = {broker_port}"]
        self.config = tmp_path / "gateway.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = tmp_path / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config",
                                      str(self.config)], stdout=log, stderr=log, env=ENV)
        log.close()
        self.wait_http()
        wait_until(lambda: open_store(self.db).ingest_counters(), 30, "ingest counters")
        return self

    def wait_http(self, timeout: float = 30) -> None:
        def up() -> bool:
            try:
                return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, timeout, "the dashboard to answer")

    def web_pid(self) -> int | None:
        """The web child's pid (the process listening on the dashboard port)."""
        assert self.proc is not None
        kids = [p for p in descendants(self.proc.pid) if p != self.proc.pid]
        for pid in kids:
            try:
                if b" web " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                for pid in descendants(self.proc.pid):
                    os.kill(pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def make_gateway(tmp_path, mosquitto):
    started: list[Gateway] = []

    def make(**gateway: object) -> Gateway:
        gw = Gateway(tmp_path, mosquitto.port, **gateway).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def login(base: str, username: str, password: str, source: str = "127.0.0.1",
          timeout: float = 60) -> httpx.Response:
    """POST /api/login from the loopback address ``source`` (127.0.0.0/8: each is one
    client address to the gateway)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=timeout) as client:
        return client.post(f"{base}/api/login", json={"username": username,
                                                      "password": password})


class Publisher:
    """A gate publishing QoS 1 events at ``rate`` per second until stopped."""

    def __init__(self, port: int, rate: float = 40.0) -> None:
        self.port, self.rate, self.ids = port, rate, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        device = "c1-r01-a"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device,
                             protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        infos, seq = [], 0
        while not self._stop.wait(1 / self.rate):
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=device, centre="c1", room="R01",
                session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
                applicant_id=f"A{seq:05d}", score=0.7, latency_ms=40.0)
            infos.append(client.publish(wire.events_topic("c1", device), event.to_json(),
                                        qos=1))
            self.ids.append(event.event_id)
            seq += 1
        for info in infos:
            info.wait_for_publish(30)
        client.loop_stop()
        client.disconnect()

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# ---- the tests ------------------------------------------------------------------------------

def test_forty_parallel_wrong_logins_keep_memory_bounded_and_ingest_storing(make_gateway):
    gw = make_gateway()
    assert gw.proc is not None
    store = open_store(gw.db)
    time.sleep(1.0)
    before = total_rss_mb(gw.proc.pid)
    publisher = Publisher(gw.broker_port).start()
    wait_until(lambda: store.counts()["events"] > 10, 20, "ingest to store the first events")
    statuses: list[int] = []
    stored_during = []
    with PeakRss(gw.proc.pid) as peak, ThreadPoolExecutor(40) as pool:
        flood_started = time.monotonic()
        for wave in range(3):
            stored_at_start = store.counts()["events"]
            answers = list(pool.map(lambda i, w=wave: login(gw.base, f"ghost{w}-{i}",
                                                            "wrong password!").status_code,
                                    range(40)))
            statuses += answers
            stored_during.append(store.counts()["events"] - stored_at_start)
        flood_s = time.monotonic() - flood_started
    publisher.stop()
    after = total_rss_mb(gw.proc.pid)
    print(f"\n40 parallel wrong logins x3 in {flood_s:.1f} s: gateway RSS {before:.0f} MB "
          f"before, peak {peak.peak:.0f} MB, {after:.0f} MB after; answers "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }; events stored during "
          f"each wave {stored_during}")
    assert peak.peak - before < FLOOD_RSS_BOUND_MB, (
        f"gateway RSS grew from {before:.0f} to {peak.peak:.0f} MB under the login flood")
    assert set(statuses) <= {401, 503}, statuses
    assert statuses.count(503) > 0, "excess password checks should be refused, not queued"
    # ingest went on meanwhile, and everything published was stored
    assert sum(stored_during) > 0, "no event was stored while the logins ran"
    wait_until(lambda: store.counts()["events"] >= len(publisher.ids), 30,
               "every published event to be stored")
    assert store.counts()["events"] == len(publisher.ids)
    # and the dashboard still answers a real login
    assert login(gw.base, "manager1", PASSWORD, source="127.0.0.9").status_code == 200
    # The dashboard is served by a child process of its own, which has no broker connection
    # (commands go through the store); the ingest (the run process) has the one.
    web = gw.web_pid()
    assert web is not None, "run should serve the dashboard from a child process of its own"
    assert broker_connections(web, gw.broker_port) == 0
    assert broker_connections(gw.proc.pid, gw.broker_port) == 1


def send_body(port: int, head: str, total: int, chunked: bool,
              chunk: int = 256 * 1024) -> tuple[int | None, int, float]:
    """Send a request whose body is ``total`` bytes (with Content-Length, or chunked), reading
    the answer as soon as one comes; returns ``(status or None, bytes sent, seconds)``."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setblocking(True)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall(f"{head}\r\nHost: 127.0.0.1:{port}\r\n{framing}\r\n"
                 "Connection: close\r\n\r\n".encode())
    block = b"x" * chunk
    sent, answer = 0, b""
    try:
        while sent < total:
            ready = socket.socket.recv(sock, 65536, socket.MSG_PEEK | socket.MSG_DONTWAIT) \
                if _readable(sock) else b""
            if ready:
                break
            piece = block[:min(chunk, total - sent)]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
        if chunked and sent >= total:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    return status, sent, time.monotonic() - started


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_a_200_mb_body_is_refused_413_without_the_gateway_growing(make_gateway):
    gw = make_gateway()
    assert gw.proc is not None
    token = login(gw.base, "manager1", PASSWORD).json()["token"]
    time.sleep(1.0)
    before = total_rss_mb(gw.proc.pid)
    results = {}
    with PeakRss(gw.proc.pid) as peak:
        for name, head, chunked in (
                ("login, Content-Length", "POST /api/login HTTP/1.1\r\n"
                                          "Content-Type: application/json", False),
                ("login, chunked", "POST /api/login HTTP/1.1\r\n"
                                   "Content-Type: application/json", True),
                ("login form, chunked", "POST /login HTTP/1.1\r\n"
                                        "Content-Type: application/x-www-form-urlencoded", True),
                ("roster import, Content-Length",
                 f"POST /api/sessions/S1/roster HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
                 "Content-Type: text/csv", False),
                ("roster import, chunked",
                 f"POST /api/sessions/S1/roster HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
                 "Content-Type: text/csv", True)):
            results[name] = send_body(gw.port, head, 200 * MB, chunked)
    after = total_rss_mb(gw.proc.pid)
    print(f"\n200 MB bodies: gateway RSS {before:.0f} MB before, peak {peak.peak:.0f} MB, "
          f"{after:.0f} MB after; " + "; ".join(
              f"{name}: {status} after {sent / MB:.1f} MB sent, {s:.2f} s"
              for name, (status, sent, s) in results.items()))
    assert peak.peak - before < BODY_RSS_BOUND_MB, (
        f"gateway RSS grew from {before:.0f} to {peak.peak:.0f} MB for a refused body")
    assert {name: r[0] for name, r in results.items()} == dict.fromkeys(results, 413)
    # the roster import keeps its own, larger cap: 20 MB may be read before the refusal
    assert all(r[1] < 25 * MB for r in results.values())
    assert httpx.get(f"{gw.base}/healthz").status_code == 200


def test_the_sixth_wrong_password_locks_the_username_even_across_a_restart(make_gateway):
    gw = make_gateway(login_lockout_s=8)
    answers: dict[str, list[tuple[int, str]]] = {}
    for name, source in (("proctor1", "127.0.0.3"), ("nobody-here", "127.0.0.4")):
        got = []
        for _ in range(6):
            r = login(gw.base, name, "wrong password!", source)
            got.append((r.status_code, r.json().get("detail")))
        r = login(gw.base, name, PASSWORD, source)
        got.append((r.status_code, str(r.json().get("detail")).replace(name, "NAME")))
        answers[name] = got
    print(f"\nlock-out answers: {answers['proctor1']}")
    assert [s for s, _ in answers["proctor1"]] == [401] * 6 + [429], answers["proctor1"]
    # an invented username is answered exactly like a real one: nothing tells them apart
    assert answers["nobody-here"] == answers["proctor1"]
    locked = login(gw.base, "proctor1", PASSWORD, "127.0.0.5")  # another address too
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    # the lock-out is in the store: a restarted web process still refuses
    web = gw.web_pid()
    assert web is not None
    os.kill(web, signal.SIGKILL)
    wait_until(lambda: gw.web_pid() not in (None, web), 20, "the web process to restart")
    gw.wait_http()
    assert login(gw.base, "proctor1", PASSWORD, "127.0.0.6").status_code == 429
    # once the lock-out is over, the right password works again
    time.sleep(8.5)
    assert login(gw.base, "proctor1", PASSWORD, "127.0.0.6").status_code == 200
    audit = [a["action"] for a in open_store(gw.db).audit_log()]
    assert "login_locked" in audit


def test_a_login_flood_from_one_address_is_cut_off(make_gateway):
    gw = make_gateway()
    statuses = [login(gw.base, f"guess{i}", "wrong password!", "127.0.0.7").status_code
                for i in range(20)]
    started = time.monotonic()
    more = [login(gw.base, f"guess-more{i}", "wrong password!", "127.0.0.7").status_code
            for i in range(30)]
    refused_s = time.monotonic() - started
    right = login(gw.base, "manager1", PASSWORD, "127.0.0.7")
    print(f"\nflood from one address: first 20 {set(statuses)}, next 30 {set(more)} in "
          f"{refused_s:.2f} s; the right password from it: {right.status_code}")
    assert statuses == [401] * 20
    assert set(more) == {429}, more
    assert right.status_code == 429 and "address" in right.json()["detail"]
    # no password was checked for the refused ones (tens of ms of Argon2 each otherwise)
    assert refused_s < 3.0
    # another client is not affected
    assert login(gw.base, "manager1", PASSWORD, "127.0.0.8").status_code == 200
