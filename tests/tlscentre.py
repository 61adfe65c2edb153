"""A provisioned centre with its mutual-TLS Mosquitto, made by the documented technician commands:
shared by the broker-access and gateway-identity tests (issue 14), which attack one."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_pki_broker import MOSQUITTO, TLSBroker

from gerbang.broker import free_port
from provisioning.cli import main as provision


def run_cli(*argv: object) -> str:
    """A `gerbang-provision` command in-process; its stdout, after asserting exit 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = provision([str(a) for a in argv])
    assert code == 0, f"gerbang-provision {shlex.join(map(str, argv))} exited {code}"
    return out.getvalue()


def start_tls_centre(root: Path, centre: str, devices: Sequence[str]) -> tuple[Path, TLSBroker]:
    """``ca create``, ``device add`` for each of ``devices`` (rooms R01, R02, …),
    ``gateway-cert``, ``broker-config`` and the broker it configures, started on a free port.
    Returns the centre folder and the running broker (the caller stops it)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    cdir = root / "centre"
    port = free_port()
    run_cli("ca", "create", "--centre", centre, "--centre-dir", cdir, "--broker-host",
            "127.0.0.1", "--broker-port", port)
    for n, device in enumerate(devices, 1):
        run_cli("device", "add", device, "--room", f"R0{n}", "--centre-dir", cdir)
    run_cli("gateway-cert", "--centre-dir", cdir)
    user = ["--user", "root"] if os.geteuid() == 0 else []
    run_cli("broker-config", "--centre-dir", cdir, "--out", root / "broker", "--bind",
            "127.0.0.1", *user)
    broker = TLSBroker(root / "broker" / "mosquitto.conf", port, root / "broker.log").start()
    return cdir, broker
