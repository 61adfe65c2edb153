"""The systemd notifier speaks the real datagram protocol on a real socket."""

from __future__ import annotations

import socket

from gerbang.sdnotify import SystemdNotifier


def test_ready_pet_and_rate_limit(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # 10 s: pet at most every 5 s
    notifier = SystemdNotifier()
    notifier.ready("gate g1")
    assert server.recv(256) == b"READY=1\nSTATUS=gate g1"
    notifier.pet()
    notifier.pet()  # within the interval: not sent
    notifier.stopping()
    assert server.recv(256) == b"WATCHDOG=1"
    assert server.recv(256) == b"STOPPING=1"
    server.close()


def test_without_systemd_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.active
    notifier.ready()
    notifier.pet()
