"""A real ``gerbang-gateway run`` for tests: its config and database, its processes (the run
process and its children, found in /proc), their memory, and logins from chosen loopback
addresses (each 127.0.0.0/8 address is one client to the gateway)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from waiting import wait_until

from gateway.auth import add_user
from gateway.store import open_store
from gerbang.broker import free_port

PASSWORD = "correct-horse-battery"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


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


def vm_peak_mb(pid: int) -> float:
    """VmPeak (the largest address space so far) of one process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) / 1024
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

    def __init__(self, tmp_path: Path, broker_port: int, verify: ssl.SSLContext | bool = True,
                 **gateway: object) -> None:
        self.db = tmp_path / "gw.sqlite"
        self.port = free_port()
        self.scheme = "https" if "tls_cert_file" in gateway else "http"
        self.base = f"{self.scheme}://127.0.0.1:{self.port}"
        self.verify = verify
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
                return httpx.get(f"{self.base}/healthz", timeout=2,
                                 verify=self.verify).status_code == 200
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


def login(base: str, username: str, password: str, source: str = "127.0.0.1",
          timeout: float = 60, verify: ssl.SSLContext | bool = True) -> httpx.Response:
    """POST /api/login from the loopback address ``source`` (127.0.0.0/8: each is one
    client address to the gateway)."""
    transport = httpx.HTTPTransport(local_address=source, verify=verify)
    with httpx.Client(transport=transport, timeout=timeout) as client:
        return client.post(f"{base}/api/login", json={"username": username,
                                                      "password": password})
