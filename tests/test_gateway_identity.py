"""Issue 14, High-5: the push tools, the ingest workers and ``--retire`` each connect with their
own identity, so none of them takes over the running gateway's session.

Over mutual TLS the broker takes every client id from the certificate CN. Before: the documented
``roster-push`` / ``config-push`` with the gateway's certificate connected as ``gateway`` with a
clean session, wiping the running gateway's session (events acknowledged to the gates in the
gap were never stored); two ingest workers with one certificate knocked each other off about
once a second; ``run --retire --client-id gateway-2`` connected as ``gateway``. Now technicians
have ``tech-<name>`` certificates, the push tools refuse the gateway's, and worker n uses
``gateway-n.pem``. Real Mosquitto with the generated config, real gateway ingest (in process
and ``gerbang-gateway run``), the technician's commands.

The module fixture uses only commands the code before issue 14 had, so the tests that show the
old loss (the push with the gateway's certificate, ``--retire``) run on it as well.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_pki_broker import TIMEOUT, Probe, event_payload
from tlscentre import run_cli, start_tls_centre
from waiting import wait_until

from gateway.ingest import Ingest
from gateway.store import open_store
from gerbang import wire
from gerbang.config import BrokerConfig
from provisioning import pki
from provisioning.cli import main as provision

CENTRE = "c01"
GATE_A, GATE_B, GATE_C = "c01-r01-a", "c01-r02-a", "c01-r03-a"
GROUP = "gerbang-ingest"
TAKEOVER = "Client {cn} already connected, closing old connection."  # Mosquitto 2.0.11's log


class Centre(SimpleNamespace):
    def gate_tls(self, device: str) -> tuple[Path, Path]:
        tls = self.dir / "devices" / device / "tls"
        return tls / f"{device}.pem", tls / f"{device}.key"

    def gateway_tls(self, name: str = "gateway") -> tuple[Path, Path]:
        return self.dir / "gateway" / f"{name}.pem", self.dir / "gateway" / f"{name}.key"

    def broker_config(self, cert: tuple[Path, Path]) -> BrokerConfig:
        return BrokerConfig(host="127.0.0.1", port=self.broker.port,
                            ca_file=self.dir / "ca" / "ca.pem", cert_file=cert[0],
                            key_file=cert[1])

    def probe(self, cert: tuple[Path, Path]) -> Probe:
        env = SimpleNamespace(ca=SimpleNamespace(cert_path=self.dir / "ca" / "ca.pem"),
                              broker=self.broker)
        probe = Probe(env, cert)
        assert probe.connect(), f"could not connect with {cert}"
        self.made.append(probe)
        return probe

    def takeovers(self, since: int, cn: str = "gateway") -> int:
        return self.broker.log()[since:].count(TAKEOVER.format(cn=cn))

    def gateway_toml(self, path: Path, db: Path, **gateway: object) -> Path:
        cert, key = self.gateway_tls()
        values = {"db": str(db), "centre": CENTRE, "client_id": "gerbang-gateway",
                  "retention_days": 0, **gateway}
        lines = ["[gateway]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()), "",
                 "[broker]", 'host = "127.0.0.1"', f"port = {self.broker.port}",
                 f"ca_file = {json.dumps(str(self.dir / 'ca' / 'ca.pem'))}",
                 f"cert_file = {json.dumps(str(cert))}", f"key_file = {json.dumps(str(key))}",
                 ""]
        path.write_text("\n".join(lines))
        return path

    def regenerate_broker(self) -> None:
        """`broker-config` again (as after any change, on any version) and a broker restart."""
        user = ["--user", "root"] if os.geteuid() == 0 else []
        run_cli("broker-config", "--centre-dir", self.dir, "--out", self.root / "broker",
                "--bind", "127.0.0.1", *user)
        self.broker.restart()


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    cdir, broker = start_tls_centre(root, CENTRE, (GATE_A, GATE_B, GATE_C))
    yield Centre(root=root, dir=cdir, broker=broker, made=[])
    broker.stop()


@pytest.fixture
def clients(centre):
    yield centre
    for probe in centre.made:
        probe.close()
    centre.made.clear()


class Publisher(threading.Thread):
    """Gates B and C publish ``count`` QoS 1 events, ``every_s`` apart, each PUBACK a success
    (a gate deletes the event from its outbox then: from here on only the gateway has it).
    Gate A is left for ``answering_gate``: one connection per certificate."""

    def __init__(self, centre: Centre, count: int, every_s: float) -> None:
        super().__init__(name="gates", daemon=True)
        self.gates = [(centre.probe(centre.gate_tls(d)), d) for d in (GATE_B, GATE_C)]
        self.count, self.every_s = count, every_s
        self.acked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for seq in range(self.count):
                probe, device = self.gates[seq % 2]
                reason = probe.publish(wire.events_topic(CENTRE, device),
                                       event_payload(device, seq))
                assert not reason.is_failure, reason
                self.acked += 1
                time.sleep(self.every_s)
        except BaseException as exc:  # reported by the test
            self.error = exc


def answering_gate(centre: Centre) -> list[str]:
    """Gate A answers every command on its ``cmd_ack`` as a gate does (``ok``), so a push
    through the broker completes; returns the list of command topics it received."""
    gate = centre.probe(centre.gate_tls(GATE_A))
    seen: list[str] = []

    def on_message(client, _userdata, msg) -> None:
        seen.append(msg.topic)
        body = json.loads(msg.payload)
        client.publish(wire.device_topic(CENTRE, GATE_A, "cmd_ack"), json.dumps(
            {"schema": 1, "command_id": body.get("command_id"), "ok": True,
             "detail": "test gate: received"}), qos=1)

    gate.client.on_message = on_message
    assert not gate.subscribe(f"gerbang/v1/{CENTRE}/{GATE_A}/cmd/+")[0].is_failure
    return seen


def ingest_while_pushing(centre: Centre, db: Path, cert: tuple[Path, Path], capsys,
                         pushes: int = 4) -> SimpleNamespace:
    """The gateway ingests 200 events from two gates while the technician runs roster-push and
    config-push ``pushes`` times with ``cert``. What happened, for the tests to judge."""
    roster = centre.root / "R01.roster.signed"
    roster.write_bytes(b"signed roster bytes: the gate checks them, not the broker")
    config = centre.root / "device.toml"
    config.write_text(f'[gate]\ndevice_id = "{GATE_A}"\ncentre = "{CENTRE}"\n')
    tls = ["--broker-host", "127.0.0.1", "--broker-port", str(centre.broker.port),
           "--ca-file", str(centre.dir / "ca" / "ca.pem"), "--cert-file", str(cert[0]),
           "--key-file", str(cert[1]), "--timeout", "2"]
    store = open_store(db)
    mark = len(centre.broker.log())
    ingest = Ingest(store, centre.broker_config(centre.gateway_tls()), client_id="gateway",
                    centre=CENTRE)
    ingest.start()
    codes, errors = [], []
    try:
        assert ingest.connected.wait(15), centre.broker.log()[-2000:]
        commands = answering_gate(centre)
        publisher = Publisher(centre, 200, 0.02)
        publisher.start()
        for n in range(pushes):
            time.sleep(0.4)
            argv = (["roster-push", str(roster), "--centre", CENTRE, "--device", GATE_A]
                    if n % 2 == 0 else
                    ["config-push", "--config-file", str(config), "--version", str(n + 1),
                     "--device", GATE_A])
            with contextlib.redirect_stdout(io.StringIO()):
                codes.append(provision([*argv, *tls]))
            errors.append(capsys.readouterr().err)
        publisher.join(60)
        assert publisher.error is None, publisher.error
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(store.events()) < publisher.acked:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        ingest.stop()
    return SimpleNamespace(published=publisher.acked, stored=len(store.events()),
                           codes=codes, errors=errors, commands=commands,
                           takeovers=centre.takeovers(mark))


@pytest.mark.slow
def test_a_push_with_the_gateways_certificate_is_refused_and_nothing_is_lost(clients,
                                                                             tmp_path, capsys):
    """The documented way before issue 14 (roster-push / config-push with gateway.pem): each
    push took over the running gateway's session. Now the tool refuses it, with why and what
    to use instead, and the gateway's session is never touched."""
    run = ingest_while_pushing(clients, tmp_path / "gw.sqlite", clients.gateway_tls(), capsys)
    assert run.stored == run.published == 200, (
        f"stored {run.stored} of {run.published} acknowledged events; the broker took over the "
        f"gateway's session {run.takeovers} time(s); push exit codes {run.codes}")
    assert run.takeovers == 0
    assert run.codes == [2, 2, 2, 2], run.codes
    for err in run.errors:
        assert "gateway's certificate (CN gateway)" in err and "take over the running " \
            "gateway's session" in err and "technician-cert" in err, err
    assert run.commands == []  # refused before connecting: nothing was sent


@pytest.mark.slow
def test_pushes_with_a_technicians_certificate_lose_nothing(clients, tmp_path, capsys, caplog):
    out = run_cli("technician-cert", "alice", "--centre-dir", clients.dir)
    assert "tech-alice" in out and "restart the broker" in out and "--cert-file" in out
    cert = (clients.dir / "technicians" / "tech-alice.pem",
            clients.dir / "technicians" / "tech-alice.key")
    assert cert[1].stat().st_mode & 0o777 == 0o600
    assert pki.common_name_of(pki.load_certificate(cert[0])) == "tech-alice"
    clients.broker.restart()  # the broker reads its rules at start: now it knows tech-alice
    with caplog.at_level(logging.WARNING, logger="gateway.identity"):
        run = ingest_while_pushing(clients, tmp_path / "gw.sqlite", cert, capsys)
    assert run.stored == run.published == 200, run
    assert run.takeovers == 0, clients.broker.log()[-3000:]
    assert run.codes == [0, 0, 0, 0], (run.codes, run.errors)  # the gate confirmed each push
    assert [t.rsplit("/", 1)[1] for t in run.commands] == ["roster", "config"] * 2
    assert "Session taken over" not in caplog.text and "connection to the broker lost" not in \
        caplog.text
    assert "u'tech-alice'" in clients.broker.log()


def test_the_gateway_says_so_when_its_session_is_taken_over(clients, tmp_path, caplog):
    """Anyone still connecting with the gateway's certificate and a clean session (an old
    script, a copied key): the running ingest logs an ERROR naming the cause, not just a
    reconnect. Mosquitto 2.0.11 closes the old connection without a DISCONNECT 0x8E, so the
    sign is the reconnect finding the session gone."""
    ingest = Ingest(open_store(tmp_path / "gw.sqlite"),
                    clients.broker_config(clients.gateway_tls()), client_id="gateway",
                    centre=CENTRE)
    with caplog.at_level(logging.INFO):
        ingest.start()
        try:
            assert ingest.connected.wait(15)
            mark = len(clients.broker.log())
            intruder = clients.probe(clients.gateway_tls())  # same CN: it gets the session
            wait_until(lambda: clients.takeovers(mark) >= 1, TIMEOUT, "the take-over")
            intruder.close()
            clients.made.clear()
            wait_until(lambda: "no longer had the session of gateway" in caplog.text, 15,
                       "the ingest's ERROR about the lost session")
        finally:
            ingest.stop()
    (record,) = [r for r in caplog.records if "no longer had the session" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "technician-cert" in record.getMessage()
    assert "connection to the broker lost as gateway" in caplog.text  # the WARNING before


@pytest.mark.slow
def test_two_ingest_workers_over_tls_have_their_own_identities(clients, tmp_path):
    """`gerbang-gateway run --ingest-workers 2` over mutual TLS: the parent connects as
    `gateway`, its child with gateway-2.pem as `gateway-2`; no take-over in ~10 s of events,
    every event stored once."""
    out = run_cli("gateway-cert", "--workers", "2", "--centre-dir", clients.dir)
    assert "CN gateway-2" in out and "restart the broker" in out
    assert (clients.dir / "gateway" / "gateway-2.key").stat().st_mode & 0o777 == 0o600
    clients.broker.restart()
    db = tmp_path / "gw.sqlite"
    config = clients.gateway_toml(tmp_path / "gateway.toml", db)
    log_path = tmp_path / "gateway.log"
    mark = len(clients.broker.log())
    with open(log_path, "wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--no-http",
             "--ingest-workers", "2"], stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: log_path.read_text().count("gateway subscribed") >= 2, 60,
                   "both workers subscribed")
        publisher = Publisher(clients, 300, 0.033)  # about 10 s
        publisher.start()
        publisher.join(90)
        assert publisher.error is None, publisher.error
        wait_until(lambda: open_store(db).counts()["events"] >= 300, 30, "every event stored")
        time.sleep(0.5)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
    log = log_path.read_text()
    stored = [e["event_id"] for e in open_store(db).events()]
    assert len(stored) == len(set(stored)) == 300, log[-2000:]
    assert clients.takeovers(mark, "gateway") == clients.takeovers(mark, "gateway-2") == 0, \
        clients.broker.log()[-3000:]
    assert "MQTT client id gateway: the CN of" in log and "MQTT client id gateway-2" in log
    assert "Session taken over" not in log and "connection to the broker lost" not in log
    assert gateway.returncode == 0


def test_run_refuses_workers_without_their_own_certificate(clients, tmp_path):
    config = clients.gateway_toml(tmp_path / "gateway.toml", tmp_path / "gw.sqlite")

    def run(workers: int) -> str:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config",
                               str(config), "--no-http", "--ingest-workers", str(workers)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        return line

    _ensure_worker_cert(clients)
    line = run(3)
    assert "gateway-3.pem does not exist" in line and "gateway-cert --workers 3" in line, line
    gw = clients.dir / "gateway"
    for suffix in (".pem", ".key"):  # a copy of worker 2's identity is no identity of its own
        shutil.copy(gw / f"gateway-2{suffix}", gw / f"gateway-3{suffix}")
    try:
        line = run(3)
    finally:
        for suffix in (".pem", ".key"):
            (gw / f"gateway-3{suffix}").unlink()
    assert "has CN 'gateway-2', like" in line and "take over each other's session" in line, line


def _ensure_worker_cert(centre: Centre, n: int = 2) -> None:
    """gateway-n.pem/.key in the centre's gateway folder, and a broker that knows it."""
    name = f"gateway-{n}"
    if (centre.dir / "gateway" / f"{name}.pem").exists():
        return
    ca = pki.load_centre_ca(centre.dir / "ca")
    pki.issue_client_cert(ca, name, centre.dir / "gateway")
    centre.regenerate_broker()


@pytest.mark.slow
def test_retiring_worker_2_leaves_the_main_gateways_session_intact(clients, tmp_path):
    """`run --retire --client-id gateway-2` with the gateway's config (cert_file gateway.pem):
    it connects with gateway-2.pem, stores what worker 2's session held, ends that session, and
    the main gateway (same share group) keeps its session: every event published meanwhile is
    stored, once."""
    _ensure_worker_cert(clients)
    db = tmp_path / "gw.sqlite"
    main = Ingest(open_store(db), clients.broker_config(clients.gateway_tls()),
                  client_id="gateway", centre=CENTRE, share_group=GROUP)
    worker = Ingest(open_store(db), clients.broker_config(clients.gateway_tls("gateway-2")),
                    client_id="gateway-2", centre=CENTRE, share_group=GROUP)
    worker.start()
    assert worker.connected.wait(15)
    worker.stop()  # gone, but its session stays in the group and takes a share
    mark = len(clients.broker.log())
    main.start()
    try:
        assert main.connected.wait(15)
        publisher = Publisher(clients, 300, 0.03)
        publisher.start()
        time.sleep(2)
        retire = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--retire", "--config",
             str(clients.gateway_toml(tmp_path / "gateway.toml", db)),
             "--client-id", "gateway-2", "--share-group", GROUP],
            capture_output=True, text=True, timeout=120)
        publisher.join(60)
        assert publisher.error is None, publisher.error
        store = open_store(db)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(store.events()) < publisher.acked:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        main.stop()
    stored = [e["event_id"] for e in open_store(db).events()]
    assert len(stored) == publisher.acked == 300, (
        f"stored {len(stored)} of {publisher.acked}; main gateway taken over "
        f"{clients.takeovers(mark)} time(s); retire: {retire.stderr[-1500:]}")
    assert len(set(stored)) == len(stored)
    assert clients.takeovers(mark) == 0
    assert retire.returncode == 0, retire.stderr[-2000:]
    assert "MQTT client id gateway-2: ingest worker 2" in retire.stderr
    assert "worker gateway-2 retired" in retire.stderr


def test_retire_refuses_the_main_gateways_identity(clients, tmp_path):
    toml = clients.gateway_toml(tmp_path / "gateway.toml", tmp_path / "gw.sqlite")
    for client_id in ("gateway", "gerbang-gateway", "gateway-x"):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--retire",
                               "--config", str(toml), "--client-id", client_id],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = done.stderr.strip().splitlines()
        assert "is not an ingest worker" in line and "take over" in line, line
