"""The exam-day rehearsal, small: 2 rooms × 1 gate, 12 applicants, a 36-second window, every
fault on, over mutual TLS with the centre provisioned by the project's own code. The default
centre (20 rooms × 2 gates, every face) is run by hand (docs/rehearsal.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gerbang.config import BrokerConfig
from gerbang.rehearsal import BROKER_NAME, provision_centre

FAULT_TITLES = ("check-in process killed", "broker restarted", "gate network cut",
                "gateway killed", "gate power cut")


def test_the_centre_is_provisioned_with_a_certificate_per_gate(tmp_path):
    gates = [f"rehearsal-r{n:02d}-{door}" for n in range(1, 21) for door in "ab"]
    tls = provision_centre(tmp_path, gates, 18883)
    assert sorted(tls.clients) == sorted([*gates, "gateway"])
    assert tls.provision_s < 10, f"40 gates took {tls.provision_s:.1f} s to provision"
    conf = tls.broker.config_path.read_text()
    for line in ("listener 18883 127.0.0.1", "require_certificate true", "allow_anonymous false",
                 "use_identity_as_username true", "tls_version tlsv1.2"):
        assert f"\n{line}\n" in conf, line
    assert "\ncrlfile " in conf and "\ncafile " in conf
    assert "ca.key" not in conf and not (tmp_path / "broker" / "certs" / "ca.key").exists()
    # Every client's [broker] table loads as the service loads it (files exist, key fits cert).
    for client in ("gateway", gates[0], gates[-1]):
        broker = BrokerConfig(port=18883, **tls.broker_section(client))
        assert broker.tls and broker.tls_server_name == BROKER_NAME
    # A gate's key was made in its own folder (0600); the CA only signed its CSR.
    key = tmp_path / "gates" / gates[0] / "tls" / f"{gates[0]}.key"
    assert key.stat().st_mode & 0o077 == 0 and key.with_suffix(".csr").exists()
    assert not (tmp_path / "centre" / "devices" / gates[0] / f"{gates[0]}.key").exists()
    assert tls.delete_private_keys() == len(gates) + 3  # gates, gateway, broker, CA
    assert not list(tmp_path.rglob("*.key"))


@pytest.mark.slow
@pytest.mark.faces
def test_a_small_exam_morning_under_faults_ends_with_exact_attendance(tmp_path, faces_root):
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does this)")
    workdir = tmp_path / "rehearsal"
    proc = subprocess.run(
        [sys.executable, "-m", "gerbang.demo", "--scenario", "exam-day",
         "--faces", str(faces_root / "celeba"), "--rooms", "2", "--gates-per-room", "1",
         "--applicants", "12", "--window-s", "36", "--camera-fps", "2", "--json",
         "--workdir", str(workdir)], capture_output=True, text=True, timeout=240)
    assert proc.stdout.strip(), proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["attendance_matches"] is True, (summary, proc.stderr[-4000:])
    assert summary["lost"] == summary["duplicated"] == summary["undelivered"] == 0, summary
    assert summary["proxies"] >= 1 and summary["proxies_admitted"] == 0, summary
    assert summary["strangers_admitted"] == 0, summary
    assert summary["faults"] == ["gate_kill", "broker_restart", "network_cut", "gateway_kill",
                                 "gate_power_cut"]
    assert summary["faults_survived"] == 5, summary
    assert summary["verdict"] == "PASS" and proc.returncode == 0, proc.stderr[-4000:]

    # Over mutual TLS: the broker ran the generated config, and knew every client (2 gates and
    # the gateway) by its certificate, also after the broker restart.
    transport = summary["transport"]
    assert transport["mode"] == "mutual-tls", transport
    assert transport["client_certificates"] == 3 and transport["gate_certificates"] == 2
    assert transport["clients_authenticated"] == 3, transport
    assert transport["require_certificate"] and transport["crl"], transport
    assert transport["refuses_without_certificate"] is True, transport
    run = workdir / "run"
    conf_path = Path(transport["broker_config"])
    assert conf_path == run / "broker" / "mosquitto.conf"
    conf = conf_path.read_text()
    assert "\nrequire_certificate true\n" in conf and "\nallow_anonymous false\n" in conf
    assert "\nlistener " in conf and "\ncertfile " in conf and "\ncrlfile " in conf
    log = (run / "broker" / "mosquitto.log").read_text()
    assert log.count(f"Config loaded from {conf_path}.") == 2, "not restarted from the config"
    assert "u'gateway'" in log and "u'rehearsal-r01-a'" in log
    gateway_broker = tomllib.loads((run / "gateway" / "gateway.toml").read_text())["broker"]
    gate_broker = tomllib.loads(
        (run / "gates" / "rehearsal-r02-a" / "device.toml").read_text())["broker"]
    for section in (gateway_broker, gate_broker):
        assert {"ca_file", "cert_file", "key_file", "tls_server_name"} <= set(section), section
    assert gate_broker["cert_file"].endswith("rehearsal-r02-a.pem")
    assert not list(workdir.rglob("*.key")), "the run's private keys outlived it"

    report = Path(summary["report"])
    text = report.read_text()
    assert text.startswith("# Exam-day rehearsal: PASS")
    assert "**mutual TLS**" in text and "3 client certificates" in text
    for title in FAULT_TITLES:
        assert title in text, f"the report does not name the fault {title!r}"
    for plot in ("morning.png", "latency.png", "resources.png"):
        assert (report.parent / "plots" / plot).stat().st_size > 1000
    assert (workdir / "enrollment" / "templates.json").stat().st_mode & 0o077 == 0
