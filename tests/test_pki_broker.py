"""Centre PKI + generated Mosquitto TLS config, checked against a real Mosquitto 2.x broker.

Everything (CA, keys, certificates, CRL, broker config) is generated in temporary directories;
no key is ever read from or written to the repository. One broker serves the whole module; the
revocation test restarts it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from gerbang import wire
from gerbang.broker import free_port, wait_for_port
from provisioning import pki
from provisioning.broker_config import write_mosquitto_tls_config

CENTRE = "c01"
DEV_A, DEV_B, DEV_C = "c01-r01-a", "c01-r02-a", "c01-r03-a"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
NOT_AUTHORIZED = 0x87
TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------
# a real broker with the generated config


class TLSBroker:
    """Mosquitto started with ``-c`` on the generated config; logs to a file we can search."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path, self.port, self.log_path = config_path, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TLSBroker:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"mosquitto did not start:\n{self.log()[-3000:]}") from None
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its config and, in 2.0, its certificates and CRL."""
        assert self.process is not None
        mark = self.log().count("Reloading config.")
        os.kill(self.process.pid, signal.SIGHUP)
        wait_until(lambda: self.log().count("Reloading config.") > mark, TIMEOUT, "SIGHUP reload")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Env:
    ca: pki.CentreCA
    other_ca: pki.CentreCA
    broker: TLSBroker
    gateway: pki.IssuedCert
    devices: dict[str, tuple[Path, Path]]  # device id → (cert, key)
    foreign: tuple[Path, Path]  # DEV_A's id, signed by another CA
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does this)")
    root = tmp_path_factory.mktemp("pki")
    ca = pki.create_centre_ca(CENTRE, root / "ca")
    other_ca = pki.create_centre_ca(CENTRE, root / "other-ca")
    server = pki.issue_server_cert(ca, ["localhost", "127.0.0.1"], root / "broker")
    gateway = pki.issue_client_cert(ca, pki.GATEWAY_IDENTITY, root / "gateway")
    devices = {}
    for device in (DEV_A, DEV_B, DEV_C):
        # The CSR flow: the key is made "on the device" (its own folder); only the CSR travels.
        device_dir = root / "devices" / device
        _, csr = pki.make_device_key_and_csr(device, CENTRE, device_dir)
        csr_pem = (device_dir / f"{device}.csr").read_bytes()
        assert csr_pem == csr.public_bytes(serialization.Encoding.PEM)
        issued = pki.sign_device_csr(ca, csr_pem, device_dir, expected_device_id=device)
        devices[device] = (issued.cert_path, device_dir / f"{device}.key")
    _, csr = pki.make_device_key_and_csr(DEV_A, CENTRE, root / "foreign")
    foreign = pki.sign_device_csr(other_ca, csr, root / "foreign")
    port = free_port()
    # Started as root, Mosquitto 2.0 switches to the `mosquitto` user before loading the TLS
    # key, which could not read our 0600 key in a 0700 pytest folder: stay root in tests.
    config = write_mosquitto_tls_config(
        root / "broker", CENTRE, ca.directory, server.cert_path, server.key_path, port,
        bind_address="127.0.0.1", run_as_user="root" if os.geteuid() == 0 else None)
    broker = TLSBroker(config.config_path, port, root / "broker" / "mosquitto.log").start()
    yield Env(ca=ca, other_ca=other_ca, broker=broker, gateway=gateway, devices=devices,
              foreign=(foreign.cert_path, root / "foreign" / f"{DEV_A}.key"), root=root)
    broker.stop()


# --------------------------------------------------------------------------------------------
# an instrumented paho client


class Probe:
    """A paho 2.x client that records CONNACK, PUBACK and SUBACK reason codes and messages."""

    def __init__(self, env: Env, cert: tuple[Path, Path] | None, *, client_id: str = "",
                 protocol: int = mqtt.MQTTv5, ca_certs: Path | None = None,
                 plain: bool = False) -> None:
        self.env = env
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        certfile, keyfile = (str(cert[0]), str(cert[1])) if cert else (None, None)
        if not plain:  # plain: a local broker without TLS (gerbang/conf/mosquitto-local.conf)
            self.client.tls_set(ca_certs=str(ca_certs or env.ca.cert_path), certfile=certfile,
                                keyfile=keyfile)
        self.connack = None
        self.disconnected = threading.Event()
        self.done = threading.Event()
        self.pubacks: dict[int, object] = {}
        self.subacks: dict[int, list] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.done.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()
        self.done.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.pubacks[mid] = reason_code

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks[mid] = list(reason_codes)

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def connect(self) -> bool:
        """True once the broker sent a successful CONNACK; False if the TLS handshake or the
        MQTT connection was refused (with TLS 1.3 a refused client certificate surfaces only
        after ``connect()`` returned, as a disconnect without CONNACK)."""
        try:
            self.client.connect("127.0.0.1", self.env.broker.port, keepalive=30)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        self.done.wait(TIMEOUT)
        ok = (self.connack is not None and not self.connack.is_failure
              and not self.disconnected.is_set())
        if not ok:
            self.client.loop_stop()  # no automatic reconnect attempts from a refused client
        return ok

    def publish(self, topic: str, payload: bytes, qos: int = 1):
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list:
        _, mid = self.client.subscribe(topic, qos=1)
        wait_until(lambda: mid in self.subacks, TIMEOUT, f"SUBACK for {topic}")
        return self.subacks[mid]

    def subscribe_as_ingest(self, centre: str = CENTRE) -> None:
        """The gateway ingest's filters (``gateway/ingest.py``), each granted by the broker."""
        for leaf in ("events", "status", "alarms", "telemetry", "cmd_ack"):
            (reason,) = self.subscribe(wire.subscription(centre, leaf))
            assert not reason.is_failure, (leaf, reason)

    def received(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes(env):
    made: list[Probe] = []

    def make(cert, **kwargs) -> Probe:
        probe = Probe(env, cert, **kwargs)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def connected(make, cert, **kwargs) -> Probe:
    probe = make(cert, **kwargs)
    assert probe.connect(), f"could not connect with {cert}: {probe.connack}"
    return probe


def event_payload(device: str, seq: int) -> bytes:
    return wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id=device, centre=CENTRE, room="R01",
        session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
        applicant_id="A0001", score=0.7, latency_ms=50.0).to_json()


def gateway_cert(env: Env) -> tuple[Path, Path]:
    return env.gateway.cert_path, env.gateway.key_path


# --------------------------------------------------------------------------------------------
# the broker: mutual TLS and access rules (dynamic-security plugin)


def test_devices_publish_own_events_and_gateway_receives_them(env, probes):
    gateway = connected(probes, gateway_cert(env))
    gateway.subscribe_as_ingest()
    sent = {}
    for device in (DEV_A, DEV_B):
        probe = connected(probes, env.devices[device])
        sent[device] = event_payload(device, 1)
        assert not probe.publish(wire.events_topic(CENTRE, device), sent[device]).is_failure
    for device in (DEV_A, DEV_B):
        topic = wire.events_topic(CENTRE, device)
        wait_until(lambda t=topic: gateway.received(t), TIMEOUT, f"gateway to get {topic}")
        assert gateway.received(topic) == [sent[device]]
    # Every stream a gate publishes is allowed by the ACL: door alarms, telemetry, its birth
    # and its command acknowledgements too (MQTT 5 PUBACK would say "not authorized").
    probe = connected(probes, env.devices[DEV_A])
    for leaf in wire.DEVICE_PUBLISH_LEAVES:
        reason = probe.publish(wire.device_topic(CENTRE, DEV_A, leaf), b'{"schema":1}')
        assert not reason.is_failure, (leaf, reason)
    # The broker knows each device by its certificate CN (use_identity_as_username).
    log = env.broker.log()
    assert f"as {DEV_A} (p5" in log and f"u'{DEV_A}'" in log


def test_device_cannot_publish_as_another_device(env, probes):
    gateway = connected(probes, gateway_cert(env))
    gateway.subscribe_as_ingest()
    device_a = connected(probes, env.devices[DEV_A])
    device_b = connected(probes, env.devices[DEV_B])
    device_b.subscribe(f"gerbang/v1/{CENTRE}/{DEV_B}/cmd/+")
    forged_events = wire.events_topic(CENTRE, DEV_B)
    forged_unlock = wire.device_topic(CENTRE, DEV_B, "cmd/unlock")
    # MQTT 5: the QoS 1 PUBACK carries reason code 0x87 "Not authorized".
    for topic in (forged_events, forged_unlock, wire.status_topic(CENTRE, DEV_B)):
        reason = device_a.publish(topic, event_payload(DEV_B, 99))
        assert reason.value == NOT_AUTHORIZED, (topic, reason)
    # Marker on A's own topic: the broker routes A's messages in order, so once the gateway has
    # the marker, anything forged before it would have arrived too.
    marker = wire.events_topic(CENTRE, DEV_A)
    assert not device_a.publish(marker, event_payload(DEV_A, 2)).is_failure
    wait_until(lambda: gateway.received(marker), TIMEOUT, "marker")
    assert gateway.received(forged_events) == []
    time.sleep(0.2)  # B's own subscription: the forged unlock never reaches it either
    assert device_b.received(forged_unlock) == []
    assert device_a.client.is_connected()  # a denied publish does not disconnect


def test_mqtt311_device_denial_is_silent(env, probes):
    """MQTT 3.1.1 has no PUBACK reason codes: Mosquitto acks the denied message and drops it."""
    gateway = connected(probes, gateway_cert(env))
    gateway.subscribe_as_ingest()
    device_b = connected(probes, env.devices[DEV_B], protocol=mqtt.MQTTv311)
    forged = wire.events_topic(CENTRE, DEV_A)
    assert not device_b.publish(forged, event_payload(DEV_A, 7)).is_failure  # acked anyway
    marker = wire.events_topic(CENTRE, DEV_B)
    device_b.publish(marker, event_payload(DEV_B, 8))
    wait_until(lambda: gateway.received(marker), TIMEOUT, "marker")
    assert gateway.received(forged) == []


def test_device_only_receives_its_own_commands(env, probes):
    gateway = connected(probes, gateway_cert(env))
    device_a = connected(probes, env.devices[DEV_A])
    device_b = connected(probes, env.devices[DEV_B])
    own, other = (f"gerbang/v1/{CENTRE}/{d}/cmd/+" for d in (DEV_A, DEV_B))
    assert not device_a.subscribe(own)[0].is_failure
    assert not device_b.subscribe(other)[0].is_failure
    # The dynamic-security plugin checks SUBSCRIBE (Mosquitto 2.0's acl_file granted every
    # one): A may not even ask for B's commands, nor for the whole centre.
    for refused in (other, f"gerbang/v1/{CENTRE}/#", f"gerbang/v1/{CENTRE}/{DEV_A}/cmd/#"):
        suback = device_a.subscribe(refused)[0]
        assert suback.value == NOT_AUTHORIZED, (refused, suback)
    b_unlock = wire.device_topic(CENTRE, DEV_B, "cmd/unlock")
    a_unlock = wire.device_topic(CENTRE, DEV_A, "cmd/unlock")
    assert not gateway.publish(b_unlock, b'{"schema":1}').is_failure
    assert not gateway.publish(a_unlock, b'{"schema":1}').is_failure
    wait_until(lambda: device_b.received(b_unlock), TIMEOUT, "B's own command")
    wait_until(lambda: device_a.received(a_unlock), TIMEOUT, "A's own command")
    assert {t for t, _ in device_a.messages} == {a_unlock}, device_a.messages


def test_device_cannot_take_over_another_client_id(env, probes):
    """use_username_as_clientid: the client id is the certificate CN, whatever the client asks,
    so device A cannot knock device B (or the gateway) off by reusing their client id."""
    device_b = connected(probes, env.devices[DEV_B], client_id=f"gerbang-dev-{DEV_B}")
    gateway = connected(probes, gateway_cert(env), client_id="gerbang-gateway")
    connected(probes, env.devices[DEV_A], client_id=f"gerbang-dev-{DEV_B}")
    connected(probes, env.devices[DEV_A], client_id="gerbang-gateway")
    time.sleep(0.3)
    assert not device_b.disconnected.is_set() and not gateway.disconnected.is_set()


def test_client_without_certificate_is_refused(env, probes):
    probe = probes(None)
    assert not probe.connect()
    wait_until(lambda: "peer did not return a certificate" in env.broker.log(),
               TIMEOUT, "the broker to log the missing certificate")


def test_certificate_from_another_ca_is_refused(env, probes):
    mark = env.broker.log().count("certificate verify failed")
    probe = probes(env.foreign)  # same CN as device A, but signed by another centre's CA
    assert not probe.connect()
    wait_until(lambda: env.broker.log().count("certificate verify failed") > mark,
               TIMEOUT, "the broker to log the failed verification")


def test_device_refuses_a_broker_it_does_not_trust(env, probes):
    probe = probes(env.devices[DEV_A], ca_certs=env.other_ca.cert_path)
    assert not probe.connect()


def test_revoked_device_cannot_connect(env, probes):
    cert_path, _ = env.devices[DEV_C]
    pki.revoke(env.ca, cert_path, reason="key_compromise")
    crl = x509.load_pem_x509_crl(env.ca.crl_path.read_bytes())
    assert crl.is_signature_valid(env.ca.cert.public_key())
    serial = pki.load_certificate(cert_path).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30)

    # The broker has not read the new CRL yet: the revoked device still gets in.
    live = connected(probes, env.devices[DEV_C])
    # Mosquitto 2.0.11 re-reads the CRL on SIGHUP: new connections are refused from then on
    # (refused in the TLS handshake, so they do not disturb the session of the same client
    # id), but sessions already open stay open.
    env.broker.reload()
    assert not probes(env.devices[DEV_C]).connect()
    assert live.client.is_connected() and not live.disconnected.is_set()
    # A restart drops every session; the revoked device cannot come back, the others can.
    env.broker.restart()
    wait_until(live.disconnected.is_set, TIMEOUT, "the live session to drop on restart")
    assert not probes(env.devices[DEV_C]).connect()
    assert connected(probes, env.devices[DEV_B])
    assert connected(probes, gateway_cert(env))


# --------------------------------------------------------------------------------------------
# the CA on its own (no broker)


def test_expiry_warnings(tmp_path):
    ca = pki.create_centre_ca(CENTRE, tmp_path / "ca")
    short = pki.issue_client_cert(ca, "gw-short", tmp_path, valid_days=10)
    long = pki.issue_client_cert(ca, "gw-long", tmp_path, valid_days=365)
    warnings = pki.expiry_warnings([short.cert_path, long.cert_path, ca.crl_path],
                                   warn_days=30)
    assert len(warnings) == 1 and "'gw-short'" in warnings[0], warnings
    assert "expires in 9 day(s)" in warnings[0] or "expires in 10 day(s)" in warnings[0]
    assert pki.expiry_warnings([long.cert], warn_days=30) == []
    # A year on: both expired, and the CRL is stale (the broker would refuse everybody).
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    stale = pki.expiry_warnings([short.cert, long.cert_path, ca.crl_path], now=later)
    assert sum("EXPIRED" in w for w in stale) == 2 and any("CRL is stale" in w for w in stale)
    assert "cannot read" in pki.expiry_warnings([tmp_path / "missing.pem"])[0]
    # The whole CA at once: revoked certificates are not reported.
    current = pki.ca_expiry_warnings(ca)
    assert len(current) == 1 and "'gw-short'" in current[0], current
    pki.revoke(ca, short.cert)
    assert pki.ca_expiry_warnings(ca) == []
    later_all = pki.ca_expiry_warnings(ca, now=later)  # CA still fine; long expired; CRL stale
    assert len(later_all) == 2 and any("'gw-long' (serial" in w for w in later_all)
    assert any("CRL is stale" in w for w in later_all)


def test_ca_files_and_certificate_profiles(tmp_path):
    ca = pki.create_centre_ca(CENTRE, tmp_path / "ca", valid_days=3650)
    assert ca.key_path.stat().st_mode & 0o777 == 0o600
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    x509.load_pem_x509_crl(ca.crl_path.read_bytes())  # an (empty) CRL exists from the start

    server = pki.issue_server_cert(ca, ["broker.c01.lan", "10.0.0.2"], tmp_path / "srv")
    san = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.c01.lan"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.key_path.stat().st_mode & 0o777 == 0o600

    _, csr = pki.make_device_key_and_csr(DEV_A, CENTRE, tmp_path / "dev")
    assert (tmp_path / "dev" / f"{DEV_A}.key").stat().st_mode & 0o777 == 0o600
    device = pki.sign_device_csr(ca, csr)
    assert device.common_name == DEV_A and device.cert_path is None
    eku = device.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    device.cert.verify_directly_issued_by(ca.cert)
    assert (ca.issued_dir / f"{device.serial:x}.pem").exists()

    # Reloading (with a passphrase-protected key) gives the same CA back.
    protected = pki.create_centre_ca("c02", tmp_path / "ca2", passphrase=b"s3cret")
    assert b"ENCRYPTED" in protected.key_path.read_bytes()
    again = pki.load_centre_ca(tmp_path / "ca2", passphrase=b"s3cret")
    assert again.centre_id == "c02" and again.cert == protected.cert
    with pytest.raises(pki.PKIError, match="wrong passphrase"):
        pki.load_centre_ca(tmp_path / "ca2", passphrase=b"wrong")
    with pytest.raises(pki.PKIError, match="refusing to replace"):
        pki.create_centre_ca(CENTRE, tmp_path / "ca")
    ca.key_path.chmod(0o644)
    with pytest.raises(pki.PKIError, match="chmod 600"):
        pki.load_centre_ca(tmp_path / "ca")


def _csr(common_name: str, centre: str = CENTRE, key=None) -> x509.CertificateSigningRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, centre),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)


def test_sign_device_csr_refuses_bad_requests(tmp_path):
    ca = pki.create_centre_ca(CENTRE, tmp_path / "ca")
    _, good = pki.make_device_key_and_csr(DEV_A, CENTRE)
    # Altered in transit: same length, another device id, the signature no longer matches.
    der = good.public_bytes(serialization.Encoding.DER).replace(DEV_A.encode(), DEV_B.encode())
    tampered = x509.load_der_x509_csr(der)
    with pytest.raises(pki.PKIError, match="CSR signature is invalid"):
        pki.sign_device_csr(ca, tampered)
    with pytest.raises(pki.PKIError, match="not a valid device id"):
        pki.sign_device_csr(ca, _csr("c01/r01+#"))
    # The gateway's and the technicians' namespaces: a gate with one of these CNs would get
    # their rights in the broker.
    for reserved in (pki.GATEWAY_IDENTITY, "gateway-2", "gateway-x", "Gateway", "tech-alice"):
        with pytest.raises(pki.PKIError, match="reserved"):
            pki.sign_device_csr(ca, _csr(reserved))
    with pytest.raises(pki.PKIError, match="centre 'c02'"):
        pki.sign_device_csr(ca, _csr(DEV_A, centre="c02"))
    with pytest.raises(pki.PKIError, match="expected 'c01-r09-z'"):
        pki.sign_device_csr(ca, good, expected_device_id="c01-r09-z")
    with pytest.raises(pki.PKIError, match="key type"):
        pki.sign_device_csr(ca, _csr(DEV_A, key=ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(pki.PKIError, match="not a PEM certificate signing request"):
        pki.sign_device_csr(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n")
    assert pki.issued_certificates(ca) == []  # nothing was signed by any refusal

    first = pki.sign_device_csr(ca, good)
    with pytest.raises(pki.PKIError, match="already has a valid certificate"):
        pki.sign_device_csr(ca, pki.make_device_key_and_csr(DEV_A, CENTRE)[1])
    second = pki.sign_device_csr(ca, pki.make_device_key_and_csr(DEV_A, CENTRE)[1],
                                 replace=True)
    assert pki.revoked_serials(ca) == {first.serial}  # the old one is superseded
    assert [c.serial_number for c in pki.find_issued(ca, DEV_A)] == [second.serial]
    # A lifetime beyond the CA's is refused before the current certificate is revoked.
    with pytest.raises(pki.PKIError, match="outlast the CA"):
        pki.sign_device_csr(ca, pki.make_device_key_and_csr(DEV_A, CENTRE)[1], replace=True,
                            valid_days=pki.CA_VALID_DAYS + 1)
    assert pki.revoked_serials(ca) == {first.serial}


def test_revoke_is_idempotent_and_refuses_foreign_certificates(tmp_path):
    ca = pki.create_centre_ca(CENTRE, tmp_path / "ca")
    other = pki.create_centre_ca(CENTRE, tmp_path / "other")
    mine = pki.issue_client_cert(ca, "gateway", tmp_path / "mine")
    theirs = pki.issue_client_cert(other, "gateway", tmp_path / "theirs")
    pki.revoke(ca, mine.serial)
    pki.revoke(ca, mine.cert)  # again: no duplicate entry
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert [r.serial_number for r in crl] == [mine.serial]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    with pytest.raises(pki.PKIError, match="not issued by this CA"):
        pki.revoke(ca, theirs.cert)
    with pytest.raises(pki.PKIError, match="not issued by this CA"):
        pki.revoke(ca, theirs.serial)
    with pytest.raises(pki.PKIError, match="unknown revocation reason"):
        pki.revoke(ca, mine.cert, reason="lost it")


def test_dynsec_rules_and_config_checks(tmp_path):
    import json

    from provisioning.broker_config import (
        DYNSEC_FILE,
        MAX_PACKET_BYTES,
        dynsec_config,
        find_dynsec_plugin,
        gateway_filters,
    )

    identities = pki.BrokerIdentities(devices=(DEV_A,), gateways=("gateway", "gateway-2"),
                                      technicians=("tech-alice",))
    rules = dynsec_config(CENTRE, identities, share_groups=("ingest-b",))
    assert rules["defaultACLAccess"] == {"publishClientSend": False,
                                         "publishClientReceive": False, "subscribe": False,
                                         "unsubscribe": True}
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]}
             for r in rules["roles"]}
    gate = roles[f"gate:{DEV_A}"]
    assert gate == {*(("publishClientSend", f"gerbang/v1/c01/{DEV_A}/{leaf}")
                      for leaf in wire.DEVICE_PUBLISH_LEAVES),
                    ("subscribeLiteral", f"gerbang/v1/c01/{DEV_A}/cmd/+"),
                    ("publishClientReceive", f"gerbang/v1/c01/{DEV_A}/cmd/+")}
    assert ("subscribeLiteral", "$share/ingest-b/gerbang/v1/c01/+/events") in roles["gateway"]
    assert ("subscribeLiteral", "$share/gerbang-ingest/gerbang/v1/c01/+/cmd_ack") in \
        roles["gateway"]
    assert ("subscribeLiteral", "gerbang/v1/c01/#") not in roles["gateway"]
    assert {t for kind, t in roles["gateway"] if kind == "subscribeLiteral"} == \
        set(gateway_filters(CENTRE, ("ingest-b",)))
    assert ("publishClientSend", "gerbang/v1/c01/+/cmd/unlock") not in roles["technician"]
    assert {(c["username"], c["roles"][0]["rolename"]) for c in rules["clients"]} == {
        (DEV_A, f"gate:{DEV_A}"), ("gateway", "gateway"), ("gateway-2", "gateway"),
        ("tech-alice", "technician")}
    assert not any("password" in c for c in rules["clients"])  # certificate only
    assert not any("$CONTROL" in a["topic"] for r in rules["roles"] for a in r["acls"])
    with pytest.raises(pki.PKIError, match="not a valid id"):
        dynsec_config("c01/#", identities)
    with pytest.raises(pki.PKIError, match="share group"):
        dynsec_config(CENTRE, identities, share_groups=("a/b",))
    with pytest.raises(pki.PKIError, match="not a device identity"):
        pki.BrokerIdentities(devices=("gateway-3",))

    ca = pki.create_centre_ca(CENTRE, tmp_path / "ca")
    other = pki.create_centre_ca(CENTRE, tmp_path / "other")
    foreign = pki.issue_server_cert(other, ["localhost"], tmp_path / "foreign")
    with pytest.raises(pki.PKIError, match="not issued by the centre CA"):
        write_mosquitto_tls_config(tmp_path / "b", CENTRE, ca.directory, foreign.cert_path,
                                   foreign.key_path, 8883)
    mine = pki.issue_server_cert(ca, ["localhost"], tmp_path / "mine")
    with pytest.raises(pki.PKIError, match="is not the key of"):
        write_mosquitto_tls_config(tmp_path / "b", CENTRE, ca.directory, mine.cert_path,
                                   foreign.key_path, 8883)
    with pytest.raises(pki.PKIError, match=r"--dynsec-plugin: .*none\.so does not exist"):
        find_dynsec_plugin(tmp_path / "none.so")
    assert find_dynsec_plugin().name == "mosquitto_dynamic_security.so"
    # Identities come from what the CA issued and has not revoked; no acl_file any more.
    pki.issue_client_cert(ca, "gateway", tmp_path / "gw")
    gone = pki.issue_client_cert(ca, "tech-bob", tmp_path / "tech")
    pki.revoke(ca, gone.cert)
    written = write_mosquitto_tls_config(tmp_path / "b", CENTRE, ca.directory, mine.cert_path,
                                         mine.key_path, 8883)
    conf = written.config_path.read_text()
    assert "\nacl_file " not in conf and f"plugin_opt_config_file {written.dynsec_path}" in conf
    assert f"\nplugin {written.plugin_path}\n" in conf
    assert f"\nmax_packet_size {MAX_PACKET_BYTES}\n" in conf
    assert written.dynsec_path.name == DYNSEC_FILE
    users = {c["username"] for c in json.loads(written.dynsec_path.read_text())["clients"]}
    assert users == {"gateway"}
