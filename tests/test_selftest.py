"""`gerbang-device selftest` check by check: each one passes on a healthy gate, and each failure
is one line naming what is wrong. (With a provisioned bundle and a mutual-TLS broker, end to
end: tests/test_provision_e2e.py.)"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import parse_device_config
from device.tools import selftest
from device.tools.selftest import FAIL, PASS, WARN, SelftestOptions
from gerbang.broker import free_port
from provisioning import pki

OPTIONS = SelftestOptions(gateway_url=None, timeout_s=2.0, gpio_step_s=0.0)


def gate_config(tmp_path: Path, **sections):
    frames = tmp_path / "frames"
    if not frames.exists():
        frames.mkdir()
        for i in range(3):
            cv2.imwrite(str(frames / f"{i}.png"), np.zeros((120, 160, 3), np.uint8))
    doc = {"gate": {"device_id": "c01-r01-a", "centre": "c01", "room": "R01", "session": "S1",
                    "data_dir": str(tmp_path / "data")},
           "capture": {"path": str(frames)}, "models": {"threads": 1},
           "gpio": {"pin_factory": "mock"}}
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return parse_device_config(doc)


# --------------------------------------------------------------------------------------------
# clock


class _DateServer:
    """An HTTP server whose Date header is ``offset_s`` away from this clock (a gateway)."""

    def __init__(self, offset_s: float) -> None:
        offset = offset_s

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def date_time_string(self, timestamp=None):
                return email.utils.formatdate(dt.datetime.now(dt.UTC).timestamp() + offset,
                                              usegmt=True)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/healthz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("offset", "status", "words"),
                         [(0.0, PASS, "the gateway's clock"), (3600.0, FAIL, "behind the gateway"),
                          (-120.0, FAIL, "ahead of the gateway")])
def test_clock_is_compared_with_the_gateway(tmp_path, offset, status, words):
    server = _DateServer(offset)
    try:
        options = SelftestOptions(gateway_url=server.url, timeout_s=2.0)
        result = selftest.check_clock(gate_config(tmp_path), options)
    finally:
        server.close()
    assert result.status == status and words in result.detail, result


def test_clock_before_the_ca_or_2025_fails_and_no_reference_warns(tmp_path, monkeypatch):
    config = gate_config(tmp_path)
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    result = selftest.check_clock(config, OPTIONS, now=past)
    assert result.status == FAIL and "before 2025" in result.detail and "sudo date" in \
        result.detail
    monkeypatch.setattr(selftest, "ntp_synchronized", lambda: None)
    unreachable = SelftestOptions(gateway_url=f"http://127.0.0.1:{free_port()}/healthz",
                                  timeout_s=1.0)
    result = selftest.check_clock(config, unreachable)
    assert result.status == WARN and "gateway clock not readable" in result.detail
    monkeypatch.setattr(selftest, "ntp_synchronized", lambda: True)
    assert selftest.check_clock(config, OPTIONS).status == PASS


# --------------------------------------------------------------------------------------------
# disk, camera, models, gpio, roster


def test_disk_space(tmp_path, monkeypatch):
    config = gate_config(tmp_path)
    assert selftest.check_disk(config).status == PASS
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(selftest.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 100 << 20))
    result = selftest.check_disk(config)
    assert result.status == FAIL and "100 MB free" in result.detail


def test_camera_gives_frames_or_says_why_not(tmp_path):
    result = selftest.check_camera(gate_config(tmp_path), OPTIONS)
    assert result.status == PASS and "3 frame(s) 160x120" in result.detail
    empty = tmp_path / "empty"
    empty.mkdir()
    result = selftest.check_camera(gate_config(tmp_path, capture={"path": str(empty)}), OPTIONS)
    assert result.status == FAIL and "no" in result.detail
    gone = gate_config(tmp_path, capture={"path": str(tmp_path / "gone")})
    assert "does not exist" in selftest.check_camera(gone, OPTIONS).detail


def test_models_match_their_manifest_and_run(tmp_path):
    result = selftest.check_models(gate_config(tmp_path))
    assert result.status == PASS and "match the manifest" in result.detail


def test_models_altered_fails_naming_the_file(tmp_path):
    import shutil

    from device.infer.bundle import DEFAULT_BUNDLE_DIR

    altered = tmp_path / "models"
    shutil.copytree(DEFAULT_BUNDLE_DIR, altered)
    model = altered / "yunet_320.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    config = gate_config(tmp_path, models={"bundle_dir": str(altered)})
    models = selftest._guard("models", lambda: selftest.check_models(config))
    assert models.status == FAIL and "yunet_320.tflite" in models.detail, models


def test_gpio_toggles_every_output_and_reads_every_input(tmp_path, monkeypatch):
    result = selftest.check_gpio(gate_config(tmp_path), OPTIONS)
    assert result.status == PASS, result
    for words in ("relay 17", "LED 22/27/23", "buzzer 24", "door contact shut",
                  "tamper lid closed", "MockFactory"):
        assert words in result.detail
    # Off a Pi, "auto" falls back to mock pins: that is worth a warning on a real gate.
    monkeypatch.setattr("device.gate.pins.on_raspberry_pi", lambda: False)
    auto = selftest.check_gpio(gate_config(tmp_path, gpio={"pin_factory": "auto"}), OPTIONS)
    assert auto.status == WARN and "not a Raspberry Pi" in auto.detail


def test_roster_keys_and_roster(tmp_path):
    from device.decide.roster import Roster, RosterEntry
    from provisioning.signing import create_roster_keys, export_device_keys, sign_roster

    plain = selftest.check_roster(gate_config(tmp_path))
    assert plain.status == WARN and "no [keys]" in plain.detail
    keys = create_roster_keys(tmp_path / "centre-keys", "c01")
    files = export_device_keys(keys, "R01", tmp_path / "bundle")
    config = gate_config(tmp_path, keys={"roster_public_key": str(files["public_key"]),
                                         "roster_transport_key": str(files["transport_key"]),
                                         "storage_key": str(files["storage_key"])})
    missing = selftest.check_roster(config)
    assert missing.status == WARN and "NO roster for session S1 room R01" in missing.detail
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "R01.roster.signed").write_bytes(sign_roster(
        Roster("S1", "R01", 1, (RosterEntry("A1", "", np.eye(128, dtype=np.float32)[0]),)),
        keys, "ab" * 32))
    waiting = selftest.check_roster(config)
    assert waiting.status == PASS and "waiting" in waiting.detail


# --------------------------------------------------------------------------------------------
# certificate and broker


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("selftest-pki")
    ca = pki.create_centre_ca("c01", root / "ca")
    other = pki.create_centre_ca("c01", root / "other")
    files = {"ca": ca.cert_path, "other_ca": other.cert_path}
    for name, issuer in (("c01-r01-a", ca), ("c01-r09-z", ca)):
        _, csr = pki.make_device_key_and_csr(name, "c01", root / name)
        files[name] = (pki.sign_device_csr(issuer, csr, root / name).cert_path,
                       root / name / f"{name}.key")
    _, csr = pki.make_device_key_and_csr("c01-r01-a", "c01", root / "foreign")
    files["foreign"] = (pki.sign_device_csr(other, csr, root / "foreign").cert_path,
                        root / "foreign" / "c01-r01-a.key")
    files["server"] = pki.issue_server_cert(ca, ["broker.c01.lan"], root / "server")
    files["other_server"] = pki.issue_server_cert(other, ["127.0.0.1"], root / "other-server")
    return files


def tls_config(tmp_path, files, cert="c01-r01-a", port=8883, **broker):
    cert_file, key_file = files[cert]
    return gate_config(tmp_path, broker={"host": "127.0.0.1", "port": port,
                                         "ca_file": str(files["ca"]), "cert_file": str(cert_file),
                                         "key_file": str(key_file), **broker})


def test_certificate_must_be_this_gates(tmp_path, pki_files):
    good = selftest.check_certificate(tls_config(tmp_path, pki_files))
    assert good.status == PASS and "CN c01-r01-a, centre c01" in good.detail
    other_gate = selftest.check_certificate(tls_config(tmp_path, pki_files, cert="c01-r09-z"))
    assert other_gate.status == FAIL and "device_id is 'c01-r01-a'" in other_gate.detail
    foreign = selftest.check_certificate(tls_config(tmp_path, pki_files, cert="foreign"))
    assert foreign.status == FAIL and "not issued by" in foreign.detail
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=pki.CLIENT_VALID_DAYS - 10)
    soon = selftest.check_certificate(tls_config(tmp_path, pki_files), now=later)
    assert soon.status == WARN and "renew it soon" in soon.detail
    much_later = later + dt.timedelta(days=30)
    assert "EXPIRED" in selftest.check_certificate(tls_config(tmp_path, pki_files),
                                                   now=much_later).detail
    plain = selftest.check_certificate(gate_config(tmp_path))
    assert plain.status == WARN and "no ca_file" in plain.detail


class _TLSServer:
    """Accepts TLS with ``server`` (an IssuedCert) and then says nothing: not a broker."""

    def __init__(self, server) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(server.cert_path, server.key_path)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                self.held.append(self.context.wrap_socket(conn, server_side=True))
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_broker_certificate_is_checked_against_the_ca_and_the_name(tmp_path, pki_files):
    untrusted = _TLSServer(pki_files["other_server"])  # another centre's broker at 127.0.0.1
    try:
        result = selftest.check_broker(tls_config(tmp_path, pki_files, port=untrusted.port),
                                       OPTIONS)
    finally:
        untrusted.close()
    assert result.status == FAIL and "broker's certificate is not accepted" in result.detail
    ours = _TLSServer(pki_files["server"])  # our broker's certificate names broker.c01.lan
    try:
        wrong_name = selftest.check_broker(tls_config(tmp_path, pki_files, port=ours.port),
                                           OPTIONS)
        assert wrong_name.status == FAIL and "not accepted" in wrong_name.detail
        assert "'127.0.0.1' in the broker's certificate" in wrong_name.detail
        # tls_server_name: reached by IP, checked against the name in its certificate. The
        # handshake passes; this server then never answers MQTT.
        named = selftest.check_broker(
            tls_config(tmp_path, pki_files, port=ours.port, tls_server_name="broker.c01.lan"),
            OPTIONS)
    finally:
        ours.close()
    assert named.status == FAIL and "no MQTT answer" in named.detail, named


def test_broker_without_tls_and_down(tmp_path, mosquitto):
    up = selftest.check_broker(gate_config(tmp_path, broker={"port": mosquitto.port}), OPTIONS)
    assert up.status == PASS and "WITHOUT TLS" in up.detail
    down = selftest.check_broker(gate_config(tmp_path, broker={"port": free_port()}), OPTIONS)
    assert down.status == FAIL and "connection refused" in down.detail


# --------------------------------------------------------------------------------------------
# the command


def test_command_prints_a_table_and_exits_1_on_a_bad_config(tmp_path):
    config = tmp_path / "device.toml"
    config.write_text('[gate]\ndevice_id = "c01-r01-a"\ncentre = "c01"\nroom = "R01"\n'
                      'session = "S1"\n[capture]\npath = "x"\n[broker]\n'
                      f'ca_file = "{tmp_path}/nope.pem"\n')
    done = subprocess.run([sys.executable, "-m", "device.cli", "selftest", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 1
    assert "config       FAIL    broker.ca_file:" in done.stdout and "nope.pem does not exist" \
        in done.stdout
    assert done.stdout.rstrip().endswith("RESULT: FAIL (1 of 1 checks failed: config)")


def test_json_report_and_every_check_isolated(tmp_path, monkeypatch):
    def broken(config, options):
        raise RuntimeError("camera driver crashed")

    monkeypatch.setattr(selftest, "check_camera", broken)
    config_path = tmp_path / "device.toml"
    frames = tmp_path / "frames"
    gate_config(tmp_path)  # writes the frames
    config_path.write_text(f'[gate]\ndevice_id = "c01-r01-a"\ncentre = "c01"\nroom = "R01"\n'
                           f'session = "S1"\ndata_dir = "{tmp_path}/data"\n[capture]\n'
                           f'path = "{frames}"\n[broker]\nport = {free_port()}\n[gpio]\n'
                           'pin_factory = "mock"\n[models]\nthreads = 1\n')
    config, results = selftest.run_selftest(config_path, OPTIONS)
    statuses = {r.name: r.status for r in results}
    assert statuses["camera"] == FAIL and statuses["broker"] == FAIL
    assert statuses["gpio"] == PASS and statuses["models"] == PASS  # the rest still ran
    report = json.loads(selftest.as_json(config, results))
    assert report["ok"] is False and report["device_id"] == "c01-r01-a"
    camera = next(c for c in report["checks"] if c["name"] == "camera")
    assert camera["detail"] == "RuntimeError: camera driver crashed"
    table = selftest.format_table(config_path, config, results)
    assert "RESULT: FAIL (2 of 9 checks failed: broker, camera)" in table
