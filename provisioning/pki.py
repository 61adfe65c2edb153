"""A centre's certificate authority: broker, gateway and device certificates, revocation, expiry.

Every exam centre has its own small CA. It signs the broker's server certificate (so devices and
the gateway know they talk to their own broker), one client certificate per device with the
device id as Common Name (Mosquitto uses that CN as the MQTT username, and the ACL ties each
username to its own topics), and a client certificate for the gateway. A device makes its key
itself and sends only a certificate signing request (CSR), so its private key never leaves it.

The CA's state is one directory::

    ca.key        CA private key, mode 0600 (optionally encrypted with a passphrase)
    ca.pem        CA certificate: what brokers and clients trust
    crl.pem       certificate revocation list signed by the CA (the broker's ``crlfile``)
    revoked.json  revoked serials with time, reason and CN (the CRL is rebuilt from it)
    issued/       a copy of every certificate issued, ``<serial hex>.pem`` (no keys)

Keys are EC P-256 throughout: every OpenSSL a Raspberry Pi or Mosquitto runs accepts it for TLS
1.2 and 1.3, unlike Ed25519 certificates. Certificates start one day in the past because a Pi
has no real-time clock and may boot with a clock slightly behind (fake-hwclock).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gerbang.wire import ID_PATTERN
from provisioning.files import PRIVATE_DIR_MODE, make_dirs, write_file

#: Client identity of the gateway (its first ingest process): the broker grants this username
#: the gateway's rights, so no device may ever be issued a certificate with this CN.
GATEWAY_IDENTITY = "gateway"
#: The most ingest processes one gateway runs (``[gateway] ingest_workers``); worker n ≥ 2 has
#: its own certificate with CN ``gateway-<n>``: one client id per process, since the broker takes
#: the client id from the certificate and two connections with one id knock each other off.
MAX_GATEWAY_WORKERS = 32
#: Technicians' laptops (``roster-push``, ``config-push``, model pushes): CN ``tech-<name>``.
TECHNICIAN_PREFIX = "tech-"
RESERVED_IDENTITIES = frozenset({GATEWAY_IDENTITY})
_GATEWAY_CN = re.compile(r"^gateway(?:-([2-9]|[12][0-9]|3[0-2]))?$")

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
CLIENT_VALID_DAYS = 825
#: How long a freshly signed CRL stays valid. Mosquitto checks the CRL's next-update: once it
#: has passed, the broker refuses EVERY client certificate, so the CRL must be re-signed
#: (``refresh_crl``) and the broker restarted before then; ``expiry_warnings`` reports it.
CRL_VALID_DAYS = 180
#: Backdating of notBefore, for devices whose clock is behind after a boot without network.
CLOCK_SKEW = dt.timedelta(days=1)

CA_KEY, CA_CERT, CRL_FILE, REVOKED_FILE, ISSUED_DIR = (
    "ca.key", "ca.pem", "crl.pem", "revoked.json", "issued")
ORGANIZATION = "Gerbang"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")

#: RFC 5280 reason names accepted by ``revoke``.
REVOCATION_REASONS = {r.name: r for r in x509.ReasonFlags
                      if r not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)}


class PKIError(ValueError):
    """A request the CA refuses (bad CSR, wrong identity, missing CA state); says why."""


@dataclass(frozen=True)
class CentreCA:
    """A loaded centre CA: its directory, certificate and private key."""

    centre_id: str
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        """``ca.pem``: the trust anchor handed to the broker, the gateway and every device."""
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        """``ca.key`` (0600): never leaves the technician's machine."""
        return self.directory / CA_KEY

    @property
    def crl_path(self) -> Path:
        """``crl.pem``: the broker's ``crlfile``."""
        return self.directory / CRL_FILE

    @property
    def revoked_path(self) -> Path:
        """``revoked.json``: the revoked serials the CRL is built from."""
        return self.directory / REVOKED_FILE

    @property
    def issued_dir(self) -> Path:
        """``issued/``: a copy of every certificate this CA signed, named by serial."""
        return self.directory / ISSUED_DIR


@dataclass(frozen=True)
class IssuedCert:
    """A certificate the CA signed and where it (and its key, when made here) was written."""

    cert: x509.Certificate
    cert_path: Path | None
    key_path: Path | None = None

    @property
    def common_name(self) -> str:
        """The certificate's CN: the device id, ``gateway``, or the broker's host name."""
        return common_name_of(self.cert)

    @property
    def serial(self) -> int:
        """The certificate's serial number (what a CRL lists)."""
        return self.cert.serial_number


# ---------------------------------------------------------------------------------------------
# small helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def gateway_worker_identity(worker: int) -> str:
    """The certificate CN of gateway ingest process ``worker`` (1: gateway, n: gateway-n)."""
    if not 1 <= worker <= MAX_GATEWAY_WORKERS:
        raise PKIError(f"gateway worker must be 1..{MAX_GATEWAY_WORKERS}, got {worker}")
    return GATEWAY_IDENTITY if worker == 1 else f"{GATEWAY_IDENTITY}-{worker}"


def technician_identity(name: str) -> str:
    """The certificate CN of technician ``name``: ``tech-<name>``; PKIError for a bad name."""
    cn = f"{TECHNICIAN_PREFIX}{name}"
    if not isinstance(name, str) or not name or not ID_PATTERN.match(cn):
        raise PKIError(f"technician name {name!r} is not valid: letters, digits, '_', '.', '-', "
                       f"at most {64 - len(TECHNICIAN_PREFIX)} characters")
    return cn


def is_reserved_identity(common_name: str) -> bool:
    """Whether ``common_name`` belongs to the gateway or the technicians' namespace
    (``gateway``, ``gateway-*``, ``tech-*``, in any letter case): never a device's."""
    lowered = common_name.lower()
    return (lowered == GATEWAY_IDENTITY or lowered.startswith(f"{GATEWAY_IDENTITY}-")
            or lowered.startswith(TECHNICIAN_PREFIX))


def identity_kind(common_name: str) -> str:
    """What a client certificate's CN is in the broker: ``gateway`` (``gateway``,
    ``gateway-2`` … ``gateway-32``), ``technician`` (``tech-<name>``), ``reserved`` (any other
    name in those namespaces: no rights at all) or ``device``."""
    if _GATEWAY_CN.match(common_name):
        return "gateway"
    if common_name.startswith(TECHNICIAN_PREFIX) and ID_PATTERN.match(common_name) and \
            len(common_name) > len(TECHNICIAN_PREFIX):
        return "technician"
    return "reserved" if is_reserved_identity(common_name) else "device"


def _check_identity(what: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise PKIError(f"{what} {value!r} is not a valid id (must match {ID_PATTERN.pattern})")
    return value





def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey,
                      passphrase: bytes | None = None) -> Path:
    """Write ``key`` as PEM with mode 0600 from the first byte (never briefly world-readable).

    Refuses to overwrite an existing file: replacing a key by accident orphans its certificate.
    """
    path = Path(path)
    make_dirs(path.parent, PRIVATE_DIR_MODE)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            encryption)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PKIError(f"{path} already exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # in case the umask was stricter than needed, or looser
        fh.write(pem)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    write_file(Path(path), cert.public_bytes(serialization.Encoding.PEM))
    return Path(path)


def common_name_of(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The single Common Name of a certificate or CSR subject; PKIError if not exactly one."""
    names = cert_or_csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PKIError(f"subject {cert_or_csr.subject.rfc4514_string()!r} must have exactly "
                       f"one CN, has {len(names)}")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def _subject(common_name: str, centre_id: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, centre_id),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def load_certificate(path: Path) -> x509.Certificate:
    """Read one PEM certificate; PKIError naming the file if it is missing or not a certificate."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise PKIError(f"certificate {path} does not exist") from None
    except ValueError as exc:
        raise PKIError(f"{path} is not a PEM certificate: {exc}") from None


# ---------------------------------------------------------------------------------------------
# the CA


def create_centre_ca(centre_id: str, out_dir: Path, valid_days: int = CA_VALID_DAYS,
                     *, passphrase: bytes | None = None) -> CentreCA:
    """Create a new self-signed CA for ``centre_id`` in ``out_dir`` (which must not hold one).

    Writes ``ca.key`` (0600, encrypted if ``passphrase``), ``ca.pem``, an empty ``revoked.json``
    and an empty signed ``crl.pem``, so a broker config can point at the CRL from day one.
    The CA may sign end-entity certificates only (path length 0).
    """
    _check_identity("centre id", centre_id)
    if valid_days < 1:
        raise PKIError(f"valid_days must be ≥ 1, got {valid_days}")
    out = Path(out_dir)
    if (out / CA_KEY).exists() or (out / CA_CERT).exists():
        raise PKIError(f"{out} already holds a CA ({CA_KEY}/{CA_CERT}); refusing to replace it "
                       "(every certificate it issued would stop working)")
    make_dirs(out, PRIVATE_DIR_MODE)
    key = _new_key()
    now = _now()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, centre_id),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Gerbang centre {centre_id} CA"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(out / CA_KEY, key, passphrase)
    _write_cert(out / CA_CERT, cert)
    make_dirs(out / ISSUED_DIR)
    ca = CentreCA(centre_id=centre_id, directory=out, cert=cert, key=key)
    _save_revoked(ca, {"centre": centre_id, "crl_number": 0, "revoked": []})
    refresh_crl(ca)
    return ca


def load_centre_ca(ca_dir: Path, passphrase: bytes | None = None) -> CentreCA:
    """Load the CA kept in ``ca_dir``; PKIError if a file is missing, the key does not match the
    certificate, or the key file is readable by others than its owner."""
    directory = Path(ca_dir)
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not key_path.exists() or not cert_path.exists():
        raise PKIError(f"{directory} is not a centre CA (needs {CA_KEY} and {CA_CERT}); "
                       "create one with create_centre_ca")
    if key_path.stat().st_mode & 0o077:
        raise PKIError(f"{key_path} is readable by group/others (mode "
                       f"{key_path.stat().st_mode & 0o777:o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), passphrase)
    except TypeError as exc:  # passphrase missing or given for an unencrypted key
        raise PKIError(f"{key_path}: {exc}") from None
    except ValueError:
        raise PKIError(f"{key_path}: cannot decrypt or parse the CA key "
                       "(wrong passphrase?)") from None
    cert = load_certificate(cert_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            key.public_key().public_numbers() != cert.public_key().public_numbers()):
        raise PKIError(f"{key_path} is not the key of {cert_path}")
    centre_ids = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(centre_ids) != 1:
        raise PKIError(f"{cert_path} has no centre id (OU) in its subject")
    return CentreCA(centre_id=str(centre_ids[0].value), directory=directory, cert=cert, key=key)


def _load_revoked(ca: CentreCA) -> dict:
    try:
        return json.loads(ca.revoked_path.read_text())
    except FileNotFoundError:
        return {"centre": ca.centre_id, "crl_number": 0, "revoked": []}


def _save_revoked(ca: CentreCA, state: dict) -> None:
    write_file(ca.revoked_path, json.dumps(state, indent=1) + "\n")


def revoked_serials(ca: CentreCA) -> set[int]:
    """Serial numbers this CA has revoked."""
    return {int(entry["serial"], 16) for entry in _load_revoked(ca)["revoked"]}


def issued_certificates(ca: CentreCA) -> list[x509.Certificate]:
    """Every certificate this CA issued (revoked or not), oldest first."""
    certs = [load_certificate(p) for p in sorted(ca.issued_dir.glob("*.pem"))]
    return sorted(certs, key=lambda c: c.not_valid_before_utc)


def find_issued(ca: CentreCA, common_name: str, *, valid_only: bool = True,
                now: dt.datetime | None = None) -> list[x509.Certificate]:
    """Certificates issued to ``common_name``; by default only unexpired and unrevoked ones."""
    now = now or _now()
    revoked = revoked_serials(ca) if valid_only else set()
    found = []
    for cert in issued_certificates(ca):
        if common_name_of(cert) != common_name:
            continue
        if valid_only and (cert.serial_number in revoked or cert.not_valid_after_utc <= now):
            continue
        found.append(cert)
    return found


@dataclass(frozen=True)
class BrokerIdentities:
    """The client identities the broker gives rights to (certificate CNs), by kind.

    Built from the CA's issued, unrevoked, unexpired client certificates
    (``broker_identities``): the broker's access rules list each one, and a certificate whose
    CN is not listed can connect but do nothing at all.
    """

    devices: tuple[str, ...] = ()
    gateways: tuple[str, ...] = (GATEWAY_IDENTITY,)
    technicians: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind, names in (("device", self.devices), ("gateway", self.gateways),
                            ("technician", self.technicians)):
            for name in names:
                _check_identity(f"{kind} identity", name)
                if identity_kind(name) != kind:
                    raise PKIError(f"{name!r} is not a {kind} identity (it is "
                                   f"{identity_kind(name)})")


def broker_identities(ca: CentreCA | Path, *, now: dt.datetime | None = None
                      ) -> BrokerIdentities:
    """Every CN the broker should know: the client certificates of the CA (loaded, or its
    folder: ``issued/`` and ``revoked.json`` suffice, no key needed) that are neither revoked
    nor expired, sorted by kind. Reserved names that are no known identity are left out."""
    now = now or _now()
    directory = ca.directory if isinstance(ca, CentreCA) else Path(ca)
    try:
        state = json.loads((directory / REVOKED_FILE).read_text())
    except FileNotFoundError:
        state = {"revoked": []}
    revoked = {int(entry["serial"], 16) for entry in state["revoked"]}
    found: dict[str, set[str]] = {"device": set(), "gateway": set(), "technician": set()}
    for path in sorted((directory / ISSUED_DIR).glob("*.pem")):
        cert = load_certificate(path)
        if cert.serial_number in revoked or cert.not_valid_after_utc <= now:
            continue
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            continue  # the broker's own server certificates
        cn = common_name_of(cert)
        kind = identity_kind(cn)
        if kind in found and ID_PATTERN.match(cn):
            found[kind].add(cn)
    return BrokerIdentities(devices=tuple(sorted(found["device"])),
                            gateways=tuple(sorted(found["gateway"])),
                            technicians=tuple(sorted(found["technician"])))


# ---------------------------------------------------------------------------------------------
# issuing


def _check_valid_days(ca: CentreCA, valid_days: int) -> None:
    """Refuse a lifetime the CA cannot vouch for, before anything is revoked or written."""
    if valid_days < 1:
        raise PKIError(f"valid_days must be ≥ 1, got {valid_days}")
    if _now() + dt.timedelta(days=valid_days) > ca.cert.not_valid_after_utc:
        raise PKIError(f"valid_days={valid_days} would outlast the CA, which expires on "
                       f"{ca.cert.not_valid_after_utc:%Y-%m-%d}")


def _issue(ca: CentreCA, common_name: str, public_key: ec.EllipticCurvePublicKey,
           usage: x509.ObjectIdentifier, valid_days: int,
           san: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
    """Sign an end-entity certificate and keep a copy in ``issued/``."""
    _check_valid_days(ca, valid_days)
    now = _now()
    not_after = now + dt.timedelta(days=valid_days)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(common_name, ca.centre_id))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    _write_cert(ca.issued_dir / f"{cert.serial_number:x}.pem", cert)
    return cert


def _supersede(ca: CentreCA, common_name: str, replace: bool) -> None:
    """Refuse a second live certificate for one identity, or revoke the old one if ``replace``."""
    current = find_issued(ca, common_name)
    if current and not replace:
        serials = ", ".join(f"{c.serial_number:x}" for c in current)
        raise PKIError(f"{common_name!r} already has a valid certificate (serial {serials}); "
                       "pass replace=True to revoke it and issue a new one")
    for cert in current:
        revoke(ca, cert, reason="superseded")


def issue_server_cert(ca: CentreCA, hosts: Sequence[str], out_dir: Path, *,
                      name: str = "broker", valid_days: int = SERVER_VALID_DAYS) -> IssuedCert:
    """Key and certificate for the centre's broker, valid for every host name and IP in ``hosts``.

    Clients check the name they connect to against the SAN list, so list every way the broker
    is reached (``broker.c01.lan``, ``10.0.0.2``, ``localhost``, ``127.0.0.1`` ...). Writes
    ``{name}.pem`` and ``{name}.key`` (0600) into ``out_dir``.
    """
    if not hosts:
        raise PKIError("a server certificate needs at least one host name or IP address")
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _DNS_NAME.match(host.rstrip(".")):
                raise PKIError(f"{host!r} is neither an IP address nor a DNS name") from None
            san.append(x509.DNSName(host.rstrip(".").lower()))
    _check_identity("file name", name)
    out = Path(out_dir)
    key = _new_key()
    cert = _issue(ca, hosts[0], key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH,
                  valid_days, san)
    key_path = write_private_key(out / f"{name}.key", key)
    return IssuedCert(cert, _write_cert(out / f"{name}.pem", cert), key_path)


def issue_client_cert(ca: CentreCA, common_name: str, out_dir: Path, *,
                      valid_days: int = CLIENT_VALID_DAYS, replace: bool = False) -> IssuedCert:
    """Key and client certificate made here, for an identity whose key is delivered in a bundle
    (the gateway, CN ``gateway``). Writes ``{cn}.pem`` and ``{cn}.key`` (0600) to ``out_dir``.

    Devices should use the CSR flow instead (``make_device_key_and_csr``/``sign_device_csr``)
    so their key is never anywhere else.
    """
    _check_identity("common name", common_name)
    _check_valid_days(ca, valid_days)
    out = Path(out_dir)
    if (out / f"{common_name}.key").exists():
        raise PKIError(f"{out / (common_name + '.key')} already exists; refusing to overwrite")
    _supersede(ca, common_name, replace)
    key = _new_key()
    cert = _issue(ca, common_name, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, valid_days)
    key_path = write_private_key(out / f"{common_name}.key", key)
    return IssuedCert(cert, _write_cert(out / f"{common_name}.pem", cert), key_path)


def make_device_key_and_csr(device_id: str, centre: str, out_dir: Path | None = None,
                            ) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    """On the device: a new P-256 key and a CSR asking for CN = ``device_id``, OU = ``centre``.

    With ``out_dir``, also writes ``{device_id}.key`` (0600) and ``{device_id}.csr``; only the
    CSR is sent to the technician's CA.
    """
    _check_identity("device id", device_id)
    _check_identity("centre id", centre)
    key = _new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(_subject(device_id, centre))
           .sign(key, hashes.SHA256()))
    if out_dir is not None:
        out = Path(out_dir)
        write_private_key(out / f"{device_id}.key", key)
        write_file(out / f"{device_id}.csr", csr.public_bytes(serialization.Encoding.PEM))
    return key, csr


def _load_csr(csr: x509.CertificateSigningRequest | bytes | str | Path,
              ) -> x509.CertificateSigningRequest:
    """A CSR object from itself, PEM bytes/text, or the path of a PEM file."""
    if isinstance(csr, x509.CertificateSigningRequest):
        return csr
    if isinstance(csr, str) and csr.lstrip().startswith("-----BEGIN"):
        csr = csr.encode()
    try:
        data = Path(csr).read_bytes() if isinstance(csr, Path | str) else csr
    except OSError as exc:
        raise PKIError(f"cannot read CSR {csr}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate signing request: {exc}") from None


def sign_device_csr(ca: CentreCA, csr: x509.CertificateSigningRequest | bytes | str | Path,
                    out_dir: Path | None = None, *, expected_device_id: str | None = None,
                    valid_days: int = CLIENT_VALID_DAYS, replace: bool = False,
                    ) -> IssuedCert:
    """Check a device's CSR and sign a client certificate for it (CN = device id, clientAuth).

    Refused with PKIError when: the CSR's self-signature is invalid (altered in transit); its
    subject has not exactly one CN, or the CN is not a valid device id (``wire.ID_PATTERN``), or
    it is a reserved identity (``gateway``, ``gateway-*``, ``tech-*``); its OU names another
    centre; it differs from ``expected_device_id``; the key is not EC P-256/P-384; or the
    device already holds a valid certificate and ``replace`` is false (with ``replace``, the old
    one is revoked). Only the CN and the public key are taken from the CSR; every extension is
    the CA's choice. Writes ``{device_id}.pem`` to ``out_dir`` if given.
    """
    request = _load_csr(csr)
    if not request.is_signature_valid:
        raise PKIError("CSR signature is invalid: the request was altered or not made with "
                       "the key it carries")
    device_id = common_name_of(request)
    if not ID_PATTERN.match(device_id):
        raise PKIError(f"CSR CN {device_id!r} is not a valid device id "
                       f"(must match {ID_PATTERN.pattern})")
    if is_reserved_identity(device_id):
        raise PKIError(f"CSR CN {device_id!r} is reserved: gateway, gateway-* and tech-* are the "
                       "gateway's and the technicians' identities (a device with it would get "
                       "their rights in the broker)")
    if expected_device_id is not None and device_id != expected_device_id:
        raise PKIError(f"CSR is for {device_id!r}, expected {expected_device_id!r}")
    for centre in request.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        if centre.value != ca.centre_id:
            raise PKIError(f"CSR is for centre {centre.value!r}, this CA is {ca.centre_id!r}")
    public_key = request.public_key()
    if not (isinstance(public_key, ec.EllipticCurvePublicKey)
            and public_key.curve.name in ("secp256r1", "secp384r1")):
        raise PKIError(f"CSR key type {type(public_key).__name__} is not accepted "
                       "(EC P-256 or P-384)")
    _check_valid_days(ca, valid_days)
    _supersede(ca, device_id, replace)
    cert = _issue(ca, device_id, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, valid_days)
    path = _write_cert(Path(out_dir) / f"{device_id}.pem", cert) if out_dir else None
    return IssuedCert(cert, path)


# ---------------------------------------------------------------------------------------------
# revocation


def refresh_crl(ca: CentreCA, valid_days: int = CRL_VALID_DAYS) -> Path:
    """Re-sign ``crl.pem`` from ``revoked.json`` with a new number and next-update.

    Run it well before the next-update date (``expiry_warnings`` flags it), copy ``crl.pem``
    to the broker and restart the broker: Mosquitto reads the CRL only at start.
    """
    state = _load_revoked(ca)
    state["crl_number"] = int(state.get("crl_number", 0)) + 1
    now = _now()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now - dt.timedelta(minutes=5))
               .next_update(now + dt.timedelta(days=valid_days))
               .add_extension(x509.CRLNumber(state["crl_number"]), critical=False)
               .add_extension(
                   x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                   critical=False))
    for entry in state["revoked"]:
        revoked = (x509.RevokedCertificateBuilder()
                   .serial_number(int(entry["serial"], 16))
                   .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"])))
        if entry.get("reason"):
            revoked = revoked.add_extension(
                x509.CRLReason(REVOCATION_REASONS[entry["reason"]]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(ca.key, hashes.SHA256())
    write_file(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM))
    _save_revoked(ca, state)
    return ca.crl_path


def revoke(ca: CentreCA, cert_or_serial: x509.Certificate | Path | str | int, *,
           reason: str = "unspecified", crl_valid_days: int = CRL_VALID_DAYS) -> Path:
    """Revoke a certificate this CA issued (given as certificate, PEM path or serial) and
    rewrite ``crl.pem``; returns its path. Revoking twice is harmless.

    ``reason`` is an RFC 5280 reason name (``key_compromise``, ``superseded``,
    ``cessation_of_operation`` ...). The broker only sees it after a restart.
    """
    if reason != "unspecified" and reason not in REVOCATION_REASONS:
        raise PKIError(f"unknown revocation reason {reason!r} "
                       f"(one of: {', '.join(sorted(REVOCATION_REASONS))})")
    if isinstance(cert_or_serial, Path | str):
        cert_or_serial = load_certificate(Path(cert_or_serial))
    if isinstance(cert_or_serial, x509.Certificate):
        cert = cert_or_serial
        try:
            cert.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(f"certificate {common_name_of(cert)!r} (serial "
                           f"{cert.serial_number:x}) was not issued by this CA") from None
        serial = cert.serial_number
    else:
        serial = int(cert_or_serial)
        issued = ca.issued_dir / f"{serial:x}.pem"
        if not issued.exists():
            raise PKIError(f"serial {serial:x} was not issued by this CA (no {issued})")
        cert = load_certificate(issued)
    state = _load_revoked(ca)
    if any(int(e["serial"], 16) == serial for e in state["revoked"]):
        return ca.crl_path
    state["revoked"].append({
        "serial": f"{serial:x}", "common_name": common_name_of(cert),
        "revoked_at": _now().replace(microsecond=0).isoformat(),
        "reason": None if reason == "unspecified" else reason})
    _save_revoked(ca, state)
    return refresh_crl(ca, crl_valid_days)


# ---------------------------------------------------------------------------------------------
# expiry


def _describe(cert: x509.Certificate) -> str:
    try:
        cn = common_name_of(cert)
    except PKIError:
        cn = cert.subject.rfc4514_string()
    return f"certificate {cn!r} (serial {cert.serial_number:x})"


def _load_pem_items(path: Path) -> list[x509.Certificate | x509.CertificateRevocationList]:
    data = Path(path).read_bytes()
    if b"-----BEGIN X509 CRL-----" in data:
        return [x509.load_pem_x509_crl(data)]
    return list(x509.load_pem_x509_certificates(data))


def expiry_warnings(items: Iterable[Path | str | x509.Certificate
                                    | x509.CertificateRevocationList],
                    warn_days: int = 30, *, now: dt.datetime | None = None) -> list[str]:
    """One human message per certificate that has expired or expires within ``warn_days``,
    and per CRL whose next-update has passed or falls within ``warn_days``.

    ``items`` are certificates, CRLs, or PEM files holding either (several certificates per
    file are fine). An unreadable file is reported as a message rather than raised, so one bad
    file does not hide the others. Nothing to say → an empty list.
    """
    now = now or _now()
    horizon = now + dt.timedelta(days=warn_days)
    messages = []
    for item in items:
        where = ""
        if isinstance(item, Path | str):
            where = f"{item}: "
            try:
                loaded = _load_pem_items(Path(item))
            except (OSError, ValueError) as exc:
                messages.append(f"{where}cannot read ({exc})")
                continue
        else:
            loaded = [item]
        for obj in loaded:
            if isinstance(obj, x509.CertificateRevocationList):
                due = obj.next_update_utc
                if due is None:
                    continue
                what = "CRL"
                if due <= now:
                    messages.append(f"{where}{what} is stale since {due:%Y-%m-%d %H:%M} UTC: "
                                    "the broker refuses every client; run refresh_crl and "
                                    "reload the broker")
                elif due <= horizon:
                    days = (due - now).days
                    messages.append(f"{where}{what} next update due in {days} day(s), on "
                                    f"{due:%Y-%m-%d}: run refresh_crl and reload the broker "
                                    "before then")
                continue
            end = obj.not_valid_after_utc
            if end <= now:
                messages.append(f"{where}{_describe(obj)} EXPIRED on {end:%Y-%m-%d %H:%M} UTC")
            elif end <= horizon:
                days = (end - now).days
                messages.append(f"{where}{_describe(obj)} expires in {days} day(s), on "
                                f"{end:%Y-%m-%d}")
    return messages


def ca_expiry_warnings(ca: CentreCA, warn_days: int = 30, *,
                       now: dt.datetime | None = None) -> list[str]:
    """``expiry_warnings`` for everything a centre depends on: the CA certificate, its CRL, and
    every certificate it issued that is not revoked (revoked ones may expire in peace)."""
    revoked = revoked_serials(ca)
    live = [c for c in issued_certificates(ca) if c.serial_number not in revoked]
    return expiry_warnings([ca.cert_path, ca.crl_path, *live], warn_days, now=now)
