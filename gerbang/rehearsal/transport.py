"""The centre's transport: mutual TLS, provisioned with the project's own code as a technician does.

By default the centre is provisioned (:func:`provision_centre`): a throwaway centre CA, the
broker's server certificate, the gateway's client certificate, one client certificate per gate
(its key made in the gate's own folder, only the CSR signed by the CA), and the generated
Mosquitto config (``provisioning.broker_config``: one mutual-TLS listener,
``require_certificate``, CRL, per-device ACL). Mosquitto runs that config (also after the fault
restarts it, :class:`CentreBroker`), and the gateway and every gate connect with their
certificate. All of it lives in the run directory, and the private keys are deleted when the
run ends. ``--plain-mqtt`` (for debugging only) keeps the project's local plain-MQTT loopback
config instead.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import shutil
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gerbang.broker import MosquittoBroker
from gerbang.rehearsal.scenario import CENTRE

#: The broker's name in its server certificate. Every client reaches the broker at 127.0.0.1 (the
#: cut gate through its relay's port) and checks this name (``[broker] tls_server_name``), as a
#: gate does that reaches its broker by an address the certificate does not list.
BROKER_NAME = f"broker.{CENTRE}.lan"
#: An MQTT 3.1.1 CONNECT (clean session, empty client id): what an anonymous client would send.
_ANONYMOUS_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
_CONNECTED = re.compile(r"New client connected from \S+ as \S+ \(.*u'(?P<user>[^']*)'\)")


@dataclass
class CentreTLS:
    """The rehearsal centre's certificates and generated broker config, and where each client's
    files are (``clients``: the gateway and every gate → its certificate and key, with the
    centre's ``ca.pem`` beside them)."""

    ca_file: Path  # the CA certificate on the technician's side (run/centre/ca/ca.pem)
    ca_subject: str
    ca_sha256: str  # SHA-256 fingerprint of the CA certificate, colon-separated hex
    broker: Any  # provisioning.broker_config.MosquittoTLSConfig
    clients: dict[str, tuple[Path, Path]]
    private_keys: list[Path]
    provision_s: float = 0.0
    negotiated: str | None = None  # TLS version seen by the anonymous probe
    refuses_anonymous: bool | None = None

    def broker_section(self, client: str) -> dict[str, Any]:
        """The TLS keys of ``client``'s ``[broker]`` table (``gerbang.config.BrokerConfig``)."""
        cert, key = self.clients[client]
        return {"ca_file": cert.parent / "ca.pem", "cert_file": cert, "key_file": key,
                "tls_server_name": BROKER_NAME}

    def delete_private_keys(self) -> int:
        """Delete every private key made for the run (CA, broker, gateway, gates); how many."""
        gone = 0
        for path in self.private_keys:
            if path.exists():
                path.unlink()
                gone += 1
        return gone


def provision_centre(run_dir: Path, gates: list[str], port: int) -> CentreTLS:
    """Provision the centre for mutual TLS with the project's own code, as a technician does
    (docs/provisioning.md), into ``run_dir``:

    - ``centre/ca/``: a new centre CA (``pki.create_centre_ca``: EC P-256, an empty CRL), the
      technician's side; ``centre/devices/<gate>/``: the certificates it signed;
    - ``broker/certs/``: the broker host's server certificate for :data:`BROKER_NAME` and
      127.0.0.1 with its key, and copies of ``ca.pem`` and ``crl.pem`` (never ``ca.key``);
      ``broker/mosquitto.conf`` and ``broker/dynamic-security.json`` from
      ``write_mosquitto_tls_config`` (one TLS listener on ``port``, ``require_certificate``, the
      CRL, identity = certificate CN, a role per device, subscriptions checked), persistence in
      ``broker/data/``;
    - ``gateway/tls/``: the gateway's certificate and key (CN ``gateway``) and ``ca.pem``;
    - ``gates/<gate>/tls/``: each gate's key, made there as on the Pi, and its CSR; the CA
      checks and signs the CSR (``pki.sign_device_csr``), and the certificate and ``ca.pem``
      are installed beside the key.

    EC keys throughout: the whole centre (40 gates) takes well under a second.
    """
    from provisioning import pki
    from provisioning.broker_config import write_mosquitto_tls_config

    began = time.monotonic()
    ca = pki.create_centre_ca(CENTRE, run_dir / "centre" / "ca")
    broker_dir = run_dir / "broker"
    certs = broker_dir / "certs"
    server = pki.issue_server_cert(ca, [BROKER_NAME, "127.0.0.1"], certs)
    for name in (pki.CA_CERT, pki.CRL_FILE):
        shutil.copy(ca.directory / name, certs / name)
    gateway_tls = run_dir / "gateway" / "tls"
    gateway = pki.issue_client_cert(ca, pki.GATEWAY_IDENTITY, gateway_tls)
    shutil.copy(ca.cert_path, gateway_tls / pki.CA_CERT)
    assert gateway.cert_path is not None and gateway.key_path is not None
    clients = {"gateway": (gateway.cert_path, gateway.key_path)}
    for device_id in gates:
        tls = run_dir / "gates" / device_id / "tls"  # the gate's /etc/gerbang/tls
        pki.make_device_key_and_csr(device_id, CENTRE, tls)  # only the CSR leaves the gate
        issued = pki.sign_device_csr(ca, tls / f"{device_id}.csr",
                                     run_dir / "centre" / "devices" / device_id,
                                     expected_device_id=device_id)
        assert issued.cert_path is not None
        shutil.copy(issued.cert_path, tls / f"{device_id}.pem")
        shutil.copy(ca.cert_path, tls / pki.CA_CERT)
        clients[device_id] = (tls / f"{device_id}.pem", tls / f"{device_id}.key")
    # Started as root, Mosquitto would switch to the `mosquitto` user before reading the key
    # in this private folder: stay the user who runs the rehearsal (as MosquittoBroker does).
    config = write_mosquitto_tls_config(broker_dir, CENTRE, certs, server.cert_path,
                                        server.key_path, port, bind_address="127.0.0.1",
                                        identities=pki.broker_identities(ca),
                                        run_as_user=getpass.getuser())
    pem = ca.cert_path.read_text()
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    keys = [p for p in (ca.key_path, server.key_path, *(k for _, k in clients.values())) if p]
    return CentreTLS(ca_file=ca.cert_path, ca_subject=ca.cert.subject.rfc4514_string(),
                     ca_sha256=":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
                     broker=config, clients=clients, private_keys=keys,
                     provision_s=time.monotonic() - began)


class CentreBroker(MosquittoBroker):
    """Mosquitto started with the centre's generated config (``broker/mosquitto.conf``), on its
    port and persistence; stopped and started again by the broker-restart fault like the local
    one. Its log is ``broker/mosquitto.log``."""

    def __init__(self, config: Any, executable: str | None = None) -> None:
        # Not MosquittoBroker.__init__: that writes the local plain-MQTT template.
        self.executable = executable or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.config_path = Path(config.config_path)
        self.data_dir = self.config_path.parent
        self.port = int(config.port)
        self.log_path = self.data_dir / "mosquitto.log"
        self.process = None


def probe_anonymous(port: int, ca_file: Path) -> tuple[bool, str | None]:
    """Connect as a client without a certificate, as anyone on the network could: whether the
    broker refused it (no CONNACK), and the TLS version the handshake reached."""
    context = ssl.create_default_context(cafile=str(ca_file))
    version = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=BROKER_NAME) as tls:
            version = tls.version()
            tls.sendall(_ANONYMOUS_CONNECT)
            answer = tls.recv(4)
    except (ssl.SSLError, OSError):
        return True, version
    return not answer.startswith(b"\x20"), version


def broker_identities(log_path: Path) -> set[str]:
    """Usernames the broker gave connected clients (with the TLS config: each certificate's CN),
    from its connection messages."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return set()
    return {m["user"] for m in _CONNECTED.finditer(text)}


def transport_summary(tls: CentreTLS | None, broker: MosquittoBroker) -> dict[str, Any]:
    """What the report's setup and ``--json`` say about the transport."""
    if tls is None:
        return {"mode": "plain", "broker_config": str(broker.config_path),
                "listener": f"127.0.0.1:{broker.port}",
                "note": "--plain-mqtt, for debugging only: no TLS, no client certificates, "
                        "no ACL"}
    conf = tls.broker.config_path.read_text()
    seen = broker_identities(broker.log_path)
    return {"mode": "mutual-tls", "broker_config": str(tls.broker.config_path),
            "listener": f"127.0.0.1:{tls.broker.port}", "server_name": BROKER_NAME,
            "require_certificate": "\nrequire_certificate true" in conf,
            "crl": "\ncrlfile " in conf, "acl": str(tls.broker.acl_path),
            "negotiated": tls.negotiated, "ca_subject": tls.ca_subject,
            "ca_sha256": tls.ca_sha256, "client_certificates": len(tls.clients),
            "gate_certificates": len(tls.clients) - 1,
            "clients_authenticated": len(seen & set(tls.clients)),
            "refuses_without_certificate": tls.refuses_anonymous,
            "provision_s": round(tls.provision_s, 2)}
