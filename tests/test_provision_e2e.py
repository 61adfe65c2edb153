"""Issue 7's first bar, end to end with the technician's own commands and a real Mosquitto.

`gerbang-provision` makes a centre, certifies two gates (one key made here, one made "on the
gate" with the openssl command the tool prints), the gateway, the broker config and both
bundles; Mosquitto runs the generated config; both gate services (replayed frames) and the
gateway ingest connect over mutual TLS and every check-in is stored. Then the real broker
refuses a gate publishing as another, a client without a certificate and a revoked gate, and
`gerbang-device selftest` passes on a provisioned gate and names the broker when it is down.

The commands run in-process (``provisioning.cli.main``), the services in threads. Tests in the
module share one centre and broker and run in file order: the last ones revoke and stop.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from test_pki_broker import MOSQUITTO, NOT_AUTHORIZED, TIMEOUT, Probe, TLSBroker, event_payload
from waiting import wait_until

from device.cli import build_parser as device_parser
from device.config import load_device_config
from device.decide.roster import Roster, RosterEntry, save_roster
from device.infer.bundle import load_bundle
from gateway.ingest import Ingest
from gateway.store import open_store
from gerbang import wire
from gerbang.broker import free_port
from gerbang.config import BrokerConfig, ConfigError
from provisioning import pki
from provisioning.bundle import install_commands
from provisioning.cli import main as provision

CENTRE = "c01"
GATES = {"c01-r01-a": "R01", "c01-r02-a": "R02"}
FRAMES = 3


def run_cli(*argv: object) -> str:
    """Run a `gerbang-provision` command in-process; its stdout, after asserting exit 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = provision([str(a) for a in argv])
    assert code == 0, (f"gerbang-provision {shlex.join(map(str, argv))} exited {code} (its "
                       "error is in the captured log)")
    return out.getvalue()


def selftest(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`gerbang-device selftest` as the technician runs it on the Pi (its own process)."""
    return subprocess.run(
        [sys.executable, "-m", "device.cli", "selftest", "--config", str(config), "--step",
         "0.01", "--timeout", "3", "--gateway-url", "off", *extra],
        capture_output=True, text=True, timeout=120)


def selftest_json(config: Path) -> tuple[int, dict]:
    done = selftest(config, "--json")
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


@dataclass
class Centre:
    root: Path
    dir: Path
    broker: TLSBroker
    etc: dict[str, Path]  # gate → its /etc/gerbang (a temporary folder standing in for the Pi)

    def tls(self, device: str) -> tuple[Path, Path]:
        """The gate's certificate and key where they are installed on its "Pi"."""
        tls = self.etc[device] / "tls"
        return tls / f"{device}.pem", tls / f"{device}.key"

    def probes_env(self) -> SimpleNamespace:
        """What test_pki_broker.Probe needs to know about the broker."""
        return SimpleNamespace(ca=SimpleNamespace(cert_path=self.dir / "ca" / "ca.pem"),
                               broker=self.broker)


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does this)")
    root = tmp_path_factory.mktemp("provision")
    cdir = root / "centre"
    port = free_port()
    run_cli("ca", "create", "--centre", CENTRE, "--centre-dir", cdir,
            "--broker-host", "127.0.0.1", "--broker-host", "localhost", "--broker-port", port)
    etc = {device: root / device / "etc" / "gerbang" for device in GATES}

    # Gate 1: key made by the tool (it travels in the bundle).
    run_cli("device", "add", "c01-r01-a", "--room", "R01", "--centre-dir", cdir)
    # Gate 2: key made "on the gate" by the printed openssl command; only the CSR comes back.
    csr = root / "c01-r02-a.csr"
    command = run_cli("device", "csr-command", "c01-r02-a", "--centre-dir", cdir,
                      "--etc-dir", etc["c01-r02-a"]).strip()
    if shutil.which("openssl"):
        assert command.startswith("sudo sh -c ")
        made = subprocess.run(["sh", "-c", command[len("sudo "):]], capture_output=True,
                              check=True)
        csr.write_bytes(made.stdout)
    else:  # same CSR shape, made with the library instead
        pki.make_device_key_and_csr("c01-r02-a", CENTRE, etc["c01-r02-a"] / "tls")
        shutil.copy(etc["c01-r02-a"] / "tls" / "c01-r02-a.csr", csr)
    run_cli("device", "add", "c01-r02-a", "--room", "R02", "--centre-dir", cdir,
            "--csr", csr)
    run_cli("gateway-cert", "--centre-dir", cdir)
    # Started as root, Mosquitto switches to `mosquitto` before reading the key: stay root here.
    user = ["--user", "root"] if os.geteuid() == 0 else []
    run_cli("broker-config", "--centre-dir", cdir, "--out", root / "broker",
            "--bind", "127.0.0.1", *user)

    embedder = load_bundle().hashes()["embedder"]
    for device, room in GATES.items():
        plain = root / f"{room}.roster.json"
        save_roster(Roster("S1", room, 1, (RosterEntry("A1", "Siti Testname",
                                                       np.eye(128, dtype=np.float32)[0]),),
                           embedder_sha256=embedder), plain)
        run_cli("roster-sign", plain, "--keys", cdir / "roster-keys")
        frames = root / device / "frames"
        frames.mkdir(parents=True)
        for i in range(FRAMES):
            cv2.imwrite(str(frames / f"{i}.png"), np.zeros((240, 320, 3), np.uint8))
        run_cli("bundle", device, "--centre-dir", cdir, "--session", "S1",
                "--roster", plain.with_suffix(".signed"), "--camera", "replay",
                "--replay-path", frames, "--pin-factory", "mock", "--model-threads", "1",
                "--etc-dir", etc[device], "--data-dir", root / device / "data", "--tar")
        # What `install --host` runs on the Pi, here into this machine's temporary "Pi".
        run_cli("install", device, "--centre-dir", cdir, "--root", "/")
    assert not (cdir / "devices" / "c01-r02-a" / "tls" / "c01-r02-a.key").exists()

    broker = TLSBroker(root / "broker" / "mosquitto.conf", port, root / "broker.log").start()
    yield Centre(root, cdir, broker, etc)
    broker.stop()


def test_two_gates_check_in_over_mutual_tls(centre):
    gateway_toml = tomllib.loads((centre.dir / "gateway" / "broker.toml").read_text())["broker"]
    gw = centre.dir / "gateway"
    broker = BrokerConfig(host=gateway_toml["host"], port=gateway_toml["port"],
                          ca_file=gw / "ca.pem", cert_file=gw / "gateway.pem",
                          key_file=gw / "gateway.key")
    store = open_store(centre.root / "gateway.sqlite")
    ingest = Ingest(store, broker)
    ingest.start()
    try:
        assert ingest.connected.wait(15), centre.broker.log()[-2000:]
        # Two gates are two processes (each owns its pins), as on two Pis.
        gates = {}
        for device in GATES:
            config = centre.etc[device] / "device.toml"
            loaded = load_device_config(config)
            assert loaded.broker.tls and loaded.keys.signed_rosters
            gates[device] = subprocess.Popen(
                [sys.executable, "-m", "device.cli", "run", "--config", str(config), "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for device, proc in gates.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{device}:\n{err[-3000:]}"
            result = json.loads(out.strip().splitlines()[-1])
            assert result["no_face"] == FRAMES, (device, result)
            assert result["published"] == FRAMES and result["outbox_depth"] == 0, result
            assert "connected to broker 127.0.0.1" in err
        wait_until(lambda: len(store.events()) == FRAMES * len(GATES), timeout=15,
                   what="every check-in stored at the gateway")
    finally:
        ingest.stop()
    stored = store.events()
    assert sorted({e["device_id"] for e in stored}) == sorted(GATES)
    assert {e["room"] for e in stored} == set(GATES.values())
    assert store.rejects() == []
    # The broker knew each client by its certificate, not by what it claimed.
    log = centre.broker.log()
    for identity in (*GATES, "gateway"):
        assert f"u'{identity}'" in log, identity
    # The signed roster from the bundle was installed (encrypted) and taken out of incoming/.
    for device in GATES:
        data = centre.root / device / "data"
        assert not list((data / "incoming").glob("*.signed"))
        assert list((data / "templates" / "S1").glob("*.tpl"))


def test_the_broker_refuses_impersonation_and_clients_without_certificate(centre):
    env = centre.probes_env()
    gw = centre.dir / "gateway"
    gateway = Probe(env, (gw / "gateway.pem", gw / "gateway.key"))
    gate_a = Probe(env, centre.tls("c01-r01-a"))
    anonymous = Probe(env, None)
    try:
        assert gateway.connect() and gate_a.connect()
        gateway.subscribe_as_ingest()
        forged = wire.events_topic(CENTRE, "c01-r02-a")
        assert gate_a.publish(forged, event_payload("c01-r02-a", 99)).value == NOT_AUTHORIZED
        marker = wire.events_topic(CENTRE, "c01-r01-a")
        assert not gate_a.publish(marker, event_payload("c01-r01-a", 100)).is_failure
        wait_until(lambda: gateway.received(marker), TIMEOUT, "the marker after the forgery")
        assert gateway.received(forged) == []
        assert not anonymous.connect()
        wait_until(lambda: "peer did not return a certificate" in centre.broker.log(),
                   TIMEOUT, "the broker to log the missing certificate")
    finally:
        for probe in (gateway, gate_a, anonymous):
            probe.close()


def test_selftest_passes_on_a_provisioned_gate(centre):
    code, report = selftest_json(centre.etc["c01-r01-a"] / "device.toml")
    checks = by_name(report)
    assert code == 0 and report["ok"], report
    assert checks["broker"]["status"] == "PASS" and "as c01-r01-a over TLS" in \
        checks["broker"]["detail"]
    assert checks["certificate"]["status"] == "PASS"
    assert checks["models"]["status"] == "PASS" and checks["camera"]["status"] == "PASS"
    assert checks["gpio"]["status"] == "PASS" and checks["roster"]["status"] == "PASS"
    assert set(checks) == {"config", "clock", "disk", "certificate", "broker", "models",
                           "camera", "gpio", "roster"}


def test_revoked_gate_cannot_connect(centre):
    out = run_cli("revoke", "c01-r02-a", "--centre-dir", centre.dir, "--reason",
                  "key_compromise")
    assert "Revoked c01-r02-a" in out and "restart the broker" in out
    # The CRL the broker reads was refreshed in the broker folder; the broker reads it at start.
    assert (centre.root / "broker" / "certs" / "crl.pem").read_bytes() == \
        (centre.dir / "ca" / "crl.pem").read_bytes()
    centre.broker.restart()
    env = centre.probes_env()
    revoked = Probe(env, centre.tls("c01-r02-a"))
    still_fine = Probe(env, centre.tls("c01-r01-a"))
    try:
        assert not revoked.connect()
        assert still_fine.connect()
    finally:
        revoked.close()
        still_fine.close()
    code, report = selftest_json(centre.etc["c01-r02-a"] / "device.toml")
    broker = by_name(report)["broker"]
    assert code == 1 and broker["status"] == "FAIL"
    assert "refused this gate's certificate" in broker["detail"], broker


def test_selftest_fails_with_a_clear_line_when_the_broker_is_down(centre):
    centre.broker.stop()
    done = selftest(centre.etc["c01-r01-a"] / "device.toml")
    table = done.stdout
    assert done.returncode == 1, done.stderr
    (line,) = [line for line in table.splitlines() if line.strip().startswith("broker")]
    assert "FAIL" in line and "connection refused" in line and "Is Mosquitto running" in line
    assert table.rstrip().endswith("RESULT: FAIL (1 of 9 checks failed: broker)"), table


# ---------------------------------------------------------------------------------------------
# the commands on their own (no broker)


@pytest.fixture
def small_centre(tmp_path):
    cdir = tmp_path / "c01"
    run_cli("ca", "create", "--centre", CENTRE, "--centre-dir", cdir,
            "--broker-host", "broker.c01.lan", "--broker-host", "10.0.0.2")
    run_cli("device", "add", "c01-r01-a", "--room", "R01", "--centre-dir", cdir)
    return cdir


def test_bundle_and_install_onto_a_mounted_sd_card(small_centre, tmp_path, capsys):
    out = run_cli("bundle", "c01-r01-a", "--centre-dir", small_centre, "--session", "S1",
                  "--tar")
    assert "archive:" in out
    folder = small_centre / "devices" / "c01-r01-a"
    toml = tomllib.loads((folder / "device.toml").read_text())
    assert toml["gate"] == {"device_id": "c01-r01-a", "centre": "c01", "room": "R01",
                            "session": "S1", "data_dir": "/var/lib/gerbang"}
    assert toml["broker"] == {"host": "broker.c01.lan", "port": 8883, "protocol": 5,
                              "ca_file": "/etc/gerbang/tls/ca.pem",
                              "cert_file": "/etc/gerbang/tls/c01-r01-a.pem",
                              "key_file": "/etc/gerbang/tls/c01-r01-a.key"}
    assert toml["capture"]["source"] == "picamera2" and toml["liveness"]["enabled"] is True
    assert toml["keys"]["storage_key"] == "/etc/gerbang/keys/storage.key"
    assert "lock relay" in (folder / "WIRING.txt").read_text()
    info = json.loads((folder / "bundle.json").read_text())
    assert "tls/c01-r01-a.key" in info["files"] and "device.toml" in info["files"]
    archive = folder.with_suffix(".tar.gz")
    assert archive.stat().st_mode & 0o777 == 0o600

    sd = tmp_path / "sd-rootfs"
    out = run_cli("install", "c01-r01-a", "--centre-dir", small_centre, "--root", sd)
    assert "files installed" in out
    etc = sd / "etc" / "gerbang"
    modes = {p.relative_to(sd).as_posix(): p.stat().st_mode & 0o777
             for p in sd.rglob("*") if p.is_file()}
    assert modes == {"etc/gerbang/device.toml": 0o644, "etc/gerbang/tls/ca.pem": 0o644,
                     "etc/gerbang/tls/c01-r01-a.pem": 0o644,
                     "etc/gerbang/tls/c01-r01-a.key": 0o600,
                     "etc/gerbang/keys/roster-signing.pub": 0o644,
                     "etc/gerbang/keys/roster-transport.key": 0o600,
                     "etc/gerbang/keys/storage.key": 0o600}
    assert (etc / "tls").stat().st_mode & 0o777 == 0o700
    assert (etc / "device.toml").read_bytes() == (folder / "device.toml").read_bytes()


def test_install_dry_run_prints_the_exact_commands(small_centre, capsys):
    run_cli("bundle", "c01-r01-a", "--centre-dir", small_centre, "--session", "S1")
    out = run_cli("install", "c01-r01-a", "--centre-dir", small_centre,
                  "--host", "pi@10.0.0.21", "--dry-run", "--selftest", "--restart")
    archive = small_centre / "devices" / "c01-r01-a.tar.gz"
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    expected = install_commands(archive, "c01-r01-a", "pi@10.0.0.21", etc_dir="/etc/gerbang",
                                selftest=True, restart=True)
    assert lines == [shlex.join(command) for command in expected]
    assert lines[0] == (f"scp -q {archive} "
                        "pi@10.0.0.21:/tmp/gerbang-bundle-c01-r01-a.tar.gz")
    assert lines[1].startswith("ssh -t pi@10.0.0.21 ") and "sudo sh" in lines[1]
    assert "gerbang-device selftest --config /etc/gerbang/device.toml" in lines[2]
    assert "systemctl restart gerbang-device" in lines[3]
    # The archive the commands copy exists, holds the gate's files, and not the CSR or record.
    import tarfile

    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert all(m.uid == 0 for m in tar.getmembers())
    assert {"c01-r01-a/install.sh", "c01-r01-a/tls/c01-r01-a.key",
            "c01-r01-a/keys/storage.key"} <= names
    assert not any(n.endswith((".csr", "device.json")) for n in names)
    # An option smuggled in as a host name is refused before anything runs.
    assert provision(["install", "c01-r01-a", "--centre-dir", str(small_centre),
                      "--host=-oProxyCommand=x", "--dry-run"]) == 2
    assert "not an SSH destination" in capsys.readouterr().err


def test_install_runs_the_commands_in_order_and_stops_at_the_first_failure(
        small_centre, tmp_path, monkeypatch, capsys):
    """Real SSH cannot run here: stand-in `scp`/`ssh` record their arguments; the self-test on
    the "Pi" fails, so the restart after it is not attempted."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("scp", "ssh"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
                          'case "$*" in *selftest*) exit 1;; esac\nexit 0\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run_cli("bundle", "c01-r01-a", "--centre-dir", small_centre, "--session", "S1")
    code = provision(["install", "c01-r01-a", "--centre-dir", str(small_centre),
                      "--host", "pi@10.0.0.21", "--selftest", "--restart"])
    assert code == 1
    assert "step 3 of 4 failed" in capsys.readouterr().err
    ran = calls.read_text().splitlines()
    assert [line.split()[0] for line in ran] == ["scp", "ssh", "ssh"]
    assert "sudo sh" in ran[1] and "selftest" in ran[2]


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
def test_key_made_on_the_gate_over_ssh(small_centre, tmp_path, monkeypatch):
    """`device add --csr-from-host`: a stand-in `ssh` runs the command here (as the Pi would,
    minus sudo); the key stays in the "Pi's" folder, only the CSR comes back and is signed."""
    pi_etc = tmp_path / "pi" / "etc" / "gerbang"
    argv = ["device", "add", "c01-r02-a", "--room", "R02", "--centre-dir", small_centre,
            "--csr-from-host", "pi@10.0.0.22", "--etc-dir", pi_etc]
    printed = run_cli(*argv, "--dry-run").strip()
    assert printed.startswith("ssh pi@10.0.0.22 'sudo sh -c '")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text('#!/bin/sh\nshift\ncmd="$*"\nexec sh -c "${cmd#sudo }"\n')
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = run_cli(*argv)
    assert "made on the gate itself" in out
    key = pi_etc / "tls" / "c01-r02-a.key"
    assert key.stat().st_mode & 0o777 == 0o600
    folder = small_centre / "devices" / "c01-r02-a"
    assert not (folder / "tls" / "c01-r02-a.key").exists()
    cert = pki.load_certificate(folder / "tls" / "c01-r02-a.pem")
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert private.public_key().public_numbers() == cert.public_key().public_numbers()
    run_cli("bundle", "c01-r02-a", "--centre-dir", small_centre, "--session", "S1")
    assert "made on the gate itself" in (folder / "device.toml").read_text()


def test_bundle_refuses_a_roster_for_another_room_and_a_bad_pin_map(small_centre, tmp_path,
                                                                   capsys):
    plain = tmp_path / "R02.roster.json"
    save_roster(Roster("S1", "R02", 1, (RosterEntry("A1", "", np.eye(128, dtype=np.float32)[0]),),
                       embedder_sha256=load_bundle().hashes()["embedder"]), plain)
    run_cli("roster-sign", plain, "--keys", small_centre / "roster-keys")
    code = provision(["bundle", "c01-r01-a", "--centre-dir", str(small_centre), "--session", "S1",
                      "--roster", str(plain.with_suffix(".signed"))])
    assert code == 2 and "(wrong_room): roster is for room 'R02', this gate is room 'R01'" \
        in capsys.readouterr().err
    pins = tmp_path / "pins.toml"
    pins.write_text("[gpio]\nrelay_pin = 22\n")  # 22 is the red LED's by default
    code = provision(["bundle", "c01-r01-a", "--centre-dir", str(small_centre), "--session", "S1",
                      "--pins", str(pins)])
    assert code == 2 and "BCM 22" in capsys.readouterr().err
    assert not (small_centre / "devices" / "c01-r01-a" / "device.toml").exists()
    run_cli("revoke", "c01-r01-a", "--centre-dir", small_centre)
    assert provision(["bundle", "c01-r01-a", "--centre-dir", str(small_centre),
                      "--session", "S1"]) == 2
    assert "is revoked" in capsys.readouterr().err


def test_ca_status_lists_certificates_and_warns_before_expiry(small_centre, capsys):
    out = run_cli("ca", "status", "--centre-dir", small_centre)
    assert "c01-r01-a" in out and "broker.c01.lan" in out and "OK: nothing expires" in out
    code = provision(["ca", "status", "--centre-dir", str(small_centre), "--warn-days", "1000",
                      "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and any("'c01-r01-a'" in w for w in report["warnings"])
    assert {row["kind"] for row in report["certificates"]} == {"broker", "gate"}


def test_device_add_twice_and_broker_config_for_another_host(small_centre, tmp_path, capsys):
    assert provision(["device", "add", "c01-r01-a", "--room", "R01",
                      "--centre-dir", str(small_centre)]) == 2
    assert "--replace" in capsys.readouterr().err
    out = run_cli("device", "add", "c01-r01-a", "--room", "R01", "--replace",
                  "--centre-dir", small_centre)
    assert "previous certificate is revoked" in out
    run_cli("gateway-cert", "--centre-dir", small_centre)
    assert provision(["gateway-cert", "--centre-dir", str(small_centre)]) == 2
    assert "--replace" in capsys.readouterr().err
    first = pki.load_certificate(small_centre / "gateway" / "gateway.pem")
    run_cli("gateway-cert", "--centre-dir", small_centre, "--replace")
    ca = pki.load_centre_ca(small_centre / "ca")
    assert first.serial_number in pki.revoked_serials(ca)
    assert [c.serial_number for c in pki.find_issued(ca, "gateway")] == \
        [pki.load_certificate(small_centre / "gateway" / "gateway.pem").serial_number]
    assert not (small_centre / "gateway" / ".new").exists()
    run_cli("broker-config", "--centre-dir", small_centre, "--out", tmp_path / "b",
            "--install-dir", "/etc/mosquitto/gerbang")
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "cafile /etc/mosquitto/gerbang/certs/ca.pem" in conf
    assert "keyfile /etc/mosquitto/gerbang/certs/broker.key" in conf
    assert "persistence_location /var/lib/mosquitto/" in conf and str(tmp_path) not in conf
    assert "plugin_opt_config_file /etc/mosquitto/gerbang/dynamic-security.json" in conf
    assert "mosquitto_dynamic_security.so" in (tmp_path / "b" / "INSTALL.txt").read_text()
    assert "ExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/gerbang/mosquitto.conf" in \
        (tmp_path / "b" / "mosquitto-override.conf").read_text()
    assert ((tmp_path / "b" / "certs" / "broker.key").stat().st_mode & 0o777) == 0o600


def test_ca_key_with_a_passphrase(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GERBANG_CA_PASSPHRASE", "correct horse")
    cdir = tmp_path / "c02"
    run_cli("ca", "create", "--centre", "c02", "--centre-dir", cdir, "--broker-host", "b",
            "--passphrase")
    assert b"ENCRYPTED" in (cdir / "ca" / "ca.key").read_bytes()
    run_cli("device", "add", "c02-r01-a", "--room", "R01", "--centre-dir", cdir)
    monkeypatch.setenv("GERBANG_CA_PASSPHRASE", "wrong")
    assert provision(["revoke", "c02-r01-a", "--centre-dir", str(cdir)]) == 2
    assert "wrong passphrase" in capsys.readouterr().err


def test_every_command_has_a_manual_page(capsys):
    for argv in (["--help"], ["ca", "create", "--help"], ["ca", "status", "--help"],
                 ["device", "add", "--help"], ["device", "csr-command", "--help"],
                 ["gateway-cert", "--help"], ["technician-cert", "--help"], ["revoke", "--help"],
                 ["broker-config", "--help"],
                 ["bundle", "--help"], ["install", "--help"]):
        with pytest.raises(SystemExit) as exited:
            provision(argv)
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert len(text) > 400, argv
    with pytest.raises(SystemExit):
        device_parser().parse_args(["selftest", "--help"])
    assert "Exit code 0 only when no check failed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# [broker] TLS fields


def test_broker_tls_fields_are_checked_at_start(tmp_path):
    ca = pki.create_centre_ca(CENTRE, tmp_path / "ca")
    client = pki.issue_client_cert(ca, "gateway", tmp_path / "gw")
    other = pki.issue_client_cert(ca, "other", tmp_path / "other")
    ok = BrokerConfig(ca_file=ca.cert_path, cert_file=client.cert_path, key_file=client.key_path,
                      port=8883)
    assert ok.tls and ok.tls_context().minimum_version >= __import__("ssl").TLSVersion.TLSv1_2
    assert BrokerConfig().tls_context() is None  # plain MQTT (demo, tests)
    cases = [
        ({"ca_file": ca.cert_path, "cert_file": client.cert_path}, "key_file: set both"),
        ({"ca_file": ca.cert_path, "key_file": client.key_path}, "cert_file: set both"),
        ({"cert_file": client.cert_path, "key_file": client.key_path}, "ca_file: required"),
        ({"tls_server_name": "broker"}, "ca_file: required with tls_server_name"),
        ({"ca_file": tmp_path / "missing.pem"}, "ca_file: .*missing.pem does not exist"),
        ({"ca_file": client.key_path}, "ca_file: .* is not a PEM CA certificate"),
        ({"ca_file": ca.cert_path, "cert_file": client.cert_path, "key_file": other.key_path},
         "key_file: .* cannot be used with"),
        ({"ca_file": ca.cert_path, "cert_file": client.key_path, "key_file": client.key_path},
         "cert_file: .* is not a PEM certificate"),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=message):
            BrokerConfig(**fields)
    # From a device config file, the message carries the section, as every other field's does.
    from device.config import parse_device_config

    with pytest.raises(ConfigError, match=r"^broker\.key_file: set both"):
        parse_device_config({"gate": {"device_id": "d", "centre": "c", "room": "r",
                                      "session": "s"},
                             "capture": {"path": "x"},
                             "broker": {"ca_file": str(ca.cert_path),
                                        "cert_file": str(client.cert_path)}})


# ---------------------------------------------------------------------------------------------
# identities and the broker's rules (issue 14), no broker


def _rules(broker_dir: Path) -> dict[str, set[str]]:
    """dynamic-security.json's clients by role kind."""
    data = json.loads((broker_dir / "dynamic-security.json").read_text())
    found: dict[str, set[str]] = {"gate": set(), "gateway": set(), "technician": set()}
    for client in data["clients"]:
        role = client["roles"][0]["rolename"]
        found["gate" if role.startswith("gate:") else role].add(client["username"])
    return found


def test_every_identity_change_rewrites_the_broker_rules(small_centre, tmp_path, capsys):
    broker_dir = tmp_path / "broker"
    out = run_cli("broker-config", "--centre-dir", small_centre, "--out", broker_dir,
                  "--share-group", "ingest-b")
    assert "dynamic-security.json" in out and "ingest-b" in out
    assert not (broker_dir / "acl").exists()
    assert _rules(broker_dir) == {"gate": {"c01-r01-a"}, "gateway": set(), "technician": set()}
    out = run_cli("device", "add", "c01-r02-a", "--room", "R02", "--centre-dir", small_centre)
    assert f"broker rules updated: {broker_dir.resolve() / 'dynamic-security.json'}" in out
    assert "restart the broker" in out
    out = run_cli("gateway-cert", "--workers", "3", "--centre-dir", small_centre)
    assert all(f"CN {cn}" in out for cn in ("gateway", "gateway-2", "gateway-3"))
    assert "ingest_workers = 3" in (small_centre / "gateway" / "broker.toml").read_text()
    out = run_cli("technician-cert", "budi", "--centre-dir", small_centre)
    assert "[broker]" in out and "--cert-file" in out and "tech-budi.pem" in out
    snippet = tomllib.loads((small_centre / "technicians" / "tech-budi.broker.toml").read_text())
    assert snippet["broker"]["cert_file"].endswith("technicians/tech-budi.pem")
    assert _rules(broker_dir) == {"gate": {"c01-r01-a", "c01-r02-a"},
                                  "gateway": {"gateway", "gateway-2", "gateway-3"},
                                  "technician": {"tech-budi"}}
    rules = json.loads((broker_dir / "dynamic-security.json").read_text())
    gateway_topics = {a["topic"] for r in rules["roles"] if r["rolename"] == "gateway"
                      for a in r["acls"]}
    assert "$share/ingest-b/gerbang/v1/c01/+/events" in gateway_topics  # the group was kept
    out = run_cli("revoke", "c01-r01-a", "--centre-dir", small_centre)
    assert "dynamic-security.json" in out
    assert _rules(broker_dir)["gate"] == {"c01-r02-a"}
    # More workers later keep the existing ones; nothing new to make is refused.
    first = pki.load_certificate(small_centre / "gateway" / "gateway.pem").serial_number
    run_cli("gateway-cert", "--workers", "4", "--centre-dir", small_centre)
    assert pki.load_certificate(small_centre / "gateway" / "gateway.pem").serial_number == first
    assert provision(["gateway-cert", "--workers", "4", "--centre-dir", str(small_centre)]) == 2
    assert "--replace" in capsys.readouterr().err
    assert provision(["technician-cert", "budi", "--centre-dir", str(small_centre)]) == 2
    assert "--replace" in capsys.readouterr().err
    out = run_cli("ca", "status", "--centre-dir", small_centre, "--json")
    kinds = {row["name"]: row["kind"] for row in json.loads(out)["certificates"]}
    assert kinds["gateway-2"] == "gateway" and kinds["tech-budi"] == "tech"


def test_device_ids_of_the_gateway_and_technicians_are_refused(small_centre, capsys):
    for device in ("gateway", "gateway-2", "tech-budi", "Gateway"):
        assert provision(["device", "add", device, "--room", "R01",
                          "--centre-dir", str(small_centre)]) == 2
        assert "reserved" in capsys.readouterr().err, device


def test_a_push_refuses_the_gateways_and_a_gates_certificate_before_connecting(
        small_centre, tmp_path, capsys):
    run_cli("gateway-cert", "--workers", "2", "--centre-dir", small_centre)
    signed = tmp_path / "R01.roster.signed"
    signed.write_bytes(b"x")
    gw, gate = small_centre / "gateway", small_centre / "devices" / "c01-r01-a" / "tls"
    port = str(free_port())  # nothing listens: a refused identity never gets that far
    for cert, key, says in ((gw / "gateway.pem", gw / "gateway.key", "CN gateway)"),
                            (gw / "gateway-2.pem", gw / "gateway-2.key", "CN gateway-2)"),
                            (gate / "c01-r01-a.pem", gate / "c01-r01-a.key", "'c01-r01-a'")):
        code = provision(["roster-push", str(signed), "--centre", CENTRE, "--device",
                          "c01-r01-a", "--broker-port", port, "--ca-file",
                          str(small_centre / "ca" / "ca.pem"), "--cert-file", str(cert),
                          "--key-file", str(key)])
        err = capsys.readouterr().err
        assert code == 2 and says in err and "technician-cert" in err, err
        assert "connection refused" not in err.lower()


def test_provisioning_writes_no_group_or_world_writable_file_under_umask_000(tmp_path):
    """Every file and folder the technician's commands write has an explicit mode: nothing is
    writable by group or others even with umask 000, and every private key is 0600."""
    cdir, broker, remote = tmp_path / "c01", tmp_path / "broker", tmp_path / "broker-remote"
    steps = [
        ["ca", "create", "--centre", CENTRE, "--broker-host", "broker.c01.lan"],
        ["device", "add", "c01-r01-a", "--room", "R01"],
        ["gateway-cert", "--workers", "2"],
        ["technician-cert", "budi"],
        ["broker-config", "--out", str(broker)],
        ["broker-config", "--out", str(remote), "--install-dir", "/etc/mosquitto/gerbang"],
        ["device", "add", "c01-r02-a", "--room", "R02"],
        ["bundle", "c01-r01-a", "--session", "S1", "--tar"],
        ["revoke", "c01-r02-a"],
        ["roster-key", "create", "--centre", CENTRE, "--keys", str(tmp_path / "keys" / "c01")],
    ]
    script = "umask 000\n" + "\n".join(
        shlex.join([sys.executable, "-m", "provisioning.cli", *step,
                    *([] if step[0] == "roster-key" else ["--centre-dir", str(cdir)])])
        + " >/dev/null || exit 1" for step in steps)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loose, keys = [], []
    for path in [tmp_path, *tmp_path.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if mode & 0o022:
            loose.append(f"{path.relative_to(tmp_path)} {mode:o}")
        if path.is_file() and path.suffix == ".key":
            keys.append((path.relative_to(tmp_path).as_posix(), mode))
    assert loose == [], loose
    assert keys and all(mode == 0o600 for _, mode in keys), keys
    assert {"c01/ca/ca.key", "c01/gateway/gateway-2.key", "c01/technicians/tech-budi.key",
            "broker/certs/broker.key"} <= {k for k, _ in keys}
    assert (cdir / "ca").stat().st_mode & 0o777 == 0o700
    assert (broker / "dynamic-security.json").stat().st_mode & 0o777 == 0o644
