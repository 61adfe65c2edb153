"""Who the centre's CA vouches for: each gate (its record, key and certificate), the gateway's
ingest processes and the technicians, and revoking a gate; with the [broker] tables they use.

Every change of who may connect rewrites the broker folder's rules (``sync_broker``); the broker
reads them at its next restart.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from provisioning import pki
from provisioning.bundle.broker_folder import sync_broker
from provisioning.bundle.centre import DEVICE_FILE, Centre
from provisioning.bundle.common import (
    DEFAULT_ETC_DIR,
    ProvisionError,
    check_id,
    copy_file,
    now_iso,
    toml_value,
    write_json,
)
from provisioning.files import PRIVATE_DIR_MODE, make_dirs, write_file


@dataclass(frozen=True)
class DeviceRecord:
    """One gate as the centre folder knows it."""

    device_id: str
    room: str
    #: True when the gate made its own key (CSR flow): the bundle then carries no key.
    key_on_device: bool
    serial: int
    folder: Path

    @property
    def cert_path(self) -> Path:
        """The gate's client certificate in its folder."""
        return self.folder / "tls" / f"{self.device_id}.pem"

    @property
    def key_path(self) -> Path:
        """The gate's key in its folder (exists only when made here)."""
        return self.folder / "tls" / f"{self.device_id}.key"


def load_device(centre: Centre, device_id: str) -> DeviceRecord:
    """The record of a device added earlier; ProvisionError if there is none."""
    folder = centre.device_dir(device_id)
    try:
        data = json.loads((folder / DEVICE_FILE).read_text())
    except FileNotFoundError:
        known = ", ".join(centre.device_ids()) or "none yet"
        raise ProvisionError(f"device {device_id} is not in centre {centre.centre_id} (known: "
                             f"{known}); add it with `gerbang-provision device add`") from None
    return DeviceRecord(device_id, data["room"], bool(data["key_on_device"]),
                        int(data["serial"], 16), folder)


def add_device(centre: Centre, ca: pki.CentreCA, device_id: str, room: str, *,
               csr: Path | bytes | None = None, replace: bool = False,
               valid_days: int = pki.CLIENT_VALID_DAYS) -> DeviceRecord:
    """Certify a gate: sign its CSR (key made on the gate) or make its key and certificate here.

    With ``replace`` (a gate re-imaged, a key feared lost) the gate's current certificate is
    revoked as superseded and a new one issued; restart the broker afterwards. Nothing is
    written unless signing succeeds.
    """
    check_id("device id", device_id)
    check_id("room", room)
    folder = centre.device_dir(device_id)
    if (folder / DEVICE_FILE).exists() and not replace:
        raise ProvisionError(f"device {device_id} was already added ({folder}); pass --replace "
                             "to revoke its certificate and issue a new one")
    if pki.is_reserved_identity(device_id):
        raise ProvisionError(f"device id {device_id!r} is reserved: gateway, gateway-* and tech-* "
                             "are the gateway's and the technicians' identities")
    key = None
    if csr is None:
        key, request = pki.make_device_key_and_csr(device_id, centre.centre_id)
        csr_pem = request.public_bytes(serialization.Encoding.PEM)
    elif isinstance(csr, bytes):
        csr_pem = csr
    else:
        try:
            csr_pem = Path(csr).read_bytes()
        except OSError as exc:
            raise ProvisionError(f"--csr: cannot read {csr}: {exc.strerror}") from None
    issued = pki.sign_device_csr(ca, csr_pem, expected_device_id=device_id,
                                 valid_days=valid_days, replace=replace)
    tls = make_dirs(folder / "tls", PRIVATE_DIR_MODE)
    key_path = tls / f"{device_id}.key"
    key_path.unlink(missing_ok=True)  # a replaced key belongs to a revoked certificate
    if key is not None:
        pki.write_private_key(key_path, key)
    write_file(tls / f"{device_id}.csr", csr_pem)
    write_file(tls / f"{device_id}.pem", issued.cert.public_bytes(serialization.Encoding.PEM))
    write_json(folder / DEVICE_FILE, {
        "device_id": device_id, "centre": centre.centre_id, "room": room,
        "key_on_device": key is None, "serial": f"{issued.serial:x}", "added": now_iso(),
        "valid_until": issued.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")})
    sync_broker(centre, ca)  # the broker's rules name every gate (read at its next restart)
    return load_device(centre, device_id)


def revoke_device(centre: Centre, ca: pki.CentreCA, device_id: str,
                  reason: str = "cessation_of_operation") -> list[int]:
    """Revoke every valid certificate of ``device_id``; returns their serials.

    The CRL is re-signed and copied into the broker folder ``broker-config`` wrote, if any;
    the broker refuses the device after its next restart.
    """
    check_id("device id", device_id)
    current = pki.find_issued(ca, device_id)
    if not current:
        issued_ever = pki.find_issued(ca, device_id, valid_only=False)
        raise ProvisionError(f"{device_id} has no valid certificate to revoke"
                             + (" (already revoked or expired)" if issued_ever else
                                f" (centre {centre.centre_id}'s CA never issued one)"))
    for cert in current:
        pki.revoke(ca, cert, reason=reason)
    sync_broker(centre, ca)
    return [c.serial_number for c in current]


def _issue_into(ca: pki.CentreCA, name: str, out: Path, replace: bool) -> pki.IssuedCert:
    """``name``.pem/.key in ``out`` (a private folder); the old pair stays until the new one
    exists (staging folder), and with ``replace`` the old certificate is revoked."""
    make_dirs(out, PRIVATE_DIR_MODE)
    staging = out / ".new"
    shutil.rmtree(staging, ignore_errors=True)
    issued = pki.issue_client_cert(ca, name, staging, replace=replace)
    for suffix in (".pem", ".key"):
        os.replace(staging / f"{name}{suffix}", out / f"{name}{suffix}")
    staging.rmdir()
    return pki.IssuedCert(issued.cert, out / f"{name}.pem", out / f"{name}.key")


def issue_gateway_cert(centre: Centre, ca: pki.CentreCA, *, replace: bool = False,
                       workers: int = 1) -> list[pki.IssuedCert]:
    """The gateway's client certificates and keys in ``gateway/``, with a copy of ``ca.pem``:
    ``gateway.pem``/``.key`` for its first ingest process and, for ``workers`` > 1,
    ``gateway-2.pem``/``.key`` … ``gateway-N``: each process connects with its own identity
    (the broker takes the client id from the certificate). Returns the certificates made.

    Identities that already have a key here are kept unless ``replace`` (then each is
    revoked, superseded, and made again); nothing new to make is refused. The broker folder's
    rules are rewritten to name the new identities (restart the broker).
    """
    if not 1 <= workers <= pki.MAX_GATEWAY_WORKERS:
        raise ProvisionError(f"--workers must be 1..{pki.MAX_GATEWAY_WORKERS}, got {workers}")
    out = centre.gateway_dir
    names = [pki.gateway_worker_identity(n) for n in range(1, workers + 1)]
    todo = [n for n in names if replace or not (out / f"{n}.key").exists()]
    if not todo:
        have = ", ".join(f"{n}.pem" for n in names)
        raise ProvisionError(f"{out} already holds {have}: the gateway has its "
                             f"certificate{'s' if workers > 1 else ''}; pass --replace to revoke "
                             "and make new ones, or --workers N for more ingest workers")
    made = [_issue_into(ca, name, out, replace) for name in todo]
    copy_file(ca.cert_path, out / pki.CA_CERT, 0o644)
    sync_broker(centre, ca)
    return made


def issue_technician_cert(centre: Centre, ca: pki.CentreCA, name: str, *,
                          replace: bool = False) -> pki.IssuedCert:
    """A technician's client certificate and key (CN ``tech-<name>``, key made here, 0600) in
    ``technicians/``, with a copy of ``ca.pem``, for ``roster-push``, ``config-push`` and model
    pushes: its own identity, so a push never takes over the gateway's session. The broker
    folder's rules are rewritten to name it (restart the broker)."""
    cn = pki.technician_identity(name)
    out = centre.technicians_dir
    if (out / f"{cn}.key").exists() and not replace:
        raise ProvisionError(f"{out / (cn + '.key')} already exists: technician {name} has a "
                             "certificate; pass --replace to revoke it and make a new one")
    issued = _issue_into(ca, cn, out, replace)
    copy_file(ca.cert_path, out / pki.CA_CERT, 0o644)
    sync_broker(centre, ca)
    return issued


def technician_broker_toml(centre: Centre, issued: pki.IssuedCert) -> str:
    """The ``[broker]`` table a technician's push tools use, with this laptop's paths."""
    assert issued.cert_path is not None and issued.key_path is not None
    tls = issued.cert_path.resolve().parent
    return "\n".join([
        f"# {issued.common_name}: the technician's identity for roster-push / config-push",
        "[broker]",
        f"host = {toml_value(centre.broker_hosts[0])}",
        f"port = {centre.broker_port}",
        f"ca_file = {toml_value(str(tls / pki.CA_CERT))}",
        f"cert_file = {toml_value(str(issued.cert_path.resolve()))}",
        f"key_file = {toml_value(str(issued.key_path.resolve()))}",
        ""])


def gateway_broker_toml(centre: Centre, etc_dir: str = DEFAULT_ETC_DIR, workers: int = 1) -> str:
    """The ``[broker]`` table for gateway.toml, with the files where ``etc_dir`` says."""
    tls = f"{etc_dir.rstrip('/')}/tls"
    lines = ["[broker]",
             f"host = {toml_value(centre.broker_hosts[0])}",
             f"port = {centre.broker_port}",
             f"ca_file = {toml_value(f'{tls}/{pki.CA_CERT}')}",
             f"cert_file = {toml_value(f'{tls}/{pki.GATEWAY_IDENTITY}.pem')}",
             f"key_file = {toml_value(f'{tls}/{pki.GATEWAY_IDENTITY}.key')}"]
    if workers > 1:
        lines.insert(0, f"# ingest_workers = {workers}: worker n uses gateway-n.pem/.key next to "
                        "cert_file")
    return "\n".join([*lines, ""])
