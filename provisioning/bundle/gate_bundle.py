"""A centre's provisioning folder, and the bundle that turns a blank Pi into one of its gates.

The technician keeps one folder per centre on their laptop (``gerbang-provision ca create``)::

    centre.json          centre id, how devices reach the broker, where things are
    ca/                  the centre CA (provisioning.pki): ca.key never leaves this laptop
    broker/              broker.pem + broker.key: the broker's server certificate
    gateway/             gateway.pem + gateway.key + ca.pem: the gateway's client certificate
                         (gateway-2.pem/.key … for more ingest workers: one identity each)
    technicians/         tech-<name>.pem + .key: a technician's laptop (roster-push, config-push)
    roster-keys/         roster signing and transport keys (provisioning.signing)
    devices/<device>/    one folder per gate: its certificate, its key (unless the key was
                         made on the gate itself), its roster keys, and the bundle files

``devices/<device>/`` *is* the gate's bundle once ``write_bundle`` has filled it::

    device.toml          the gate's config: ids, broker with TLS paths, camera, pins, [keys]
    tls/ca.pem           the centre CA (what the gate trusts)
    tls/<device>.pem     the gate's client certificate (CN = device id)
    tls/<device>.key     its private key, when made here (absent in the CSR flow)
    keys/                roster-signing.pub, roster-transport.key, storage.key
    incoming/            signed rosters to install at first start (optional)
    WIRING.txt           the pin map for whoever wires the door
    install.sh           copies everything into place on the Pi with the right modes
    bundle.json          what the bundle is for, and the sha256 of every file

Paths inside ``device.toml`` are where the files end up on the Pi (``/etc/gerbang``,
``/var/lib/gerbang`` by default), which ``install.sh`` honours; ``install_commands`` copies the
bundle over SSH and runs it there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from device.config import GpioConfig, SwitchConfig, parse_device_config
from gerbang.config import ConfigError, load_section
from gerbang.wire import ID_PATTERN
from provisioning import pki
from provisioning.broker_config import (
    DEFAULT_TLS_PORT,
    DYNSEC_FILE,
    default_plugin_path,
    find_dynsec_plugin,
    write_dynsec_file,
    write_mosquitto_tls_config,
)
from provisioning.files import PRIVATE_DIR_MODE, make_dirs, write_file

CENTRE_FILE = "centre.json"
DEVICE_FILE = "device.json"
BUNDLE_FILE = "bundle.json"
DEFAULT_ETC_DIR = "/etc/gerbang"
DEFAULT_DATA_DIR = "/var/lib/gerbang"
DEFAULT_VENV = "/opt/gerbang/venv"
SERVICE_USER = "gerbang"
CAMERAS = ("picamera2", "v4l2", "replay")

#: Raspberry Pi 40-pin header: BCM number → physical pin, for the wiring sheet.
BCM_TO_HEADER = {2: 3, 3: 5, 4: 7, 5: 29, 6: 31, 7: 26, 8: 24, 9: 21, 10: 19, 11: 23, 12: 32,
                 13: 33, 14: 8, 15: 10, 16: 36, 17: 11, 18: 12, 19: 35, 20: 38, 21: 40, 22: 15,
                 23: 16, 24: 18, 25: 22, 26: 37, 27: 13}


class ProvisionError(ValueError):
    """A provisioning step that cannot be done as asked; the message says why and what to do."""


def _check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ProvisionError(f"{what} {value!r} is not a valid id (letters, digits, '_', '.', "
                             "'-', at most 64; it becomes part of MQTT topics)")
    return value


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    write_file(path, json.dumps(data, indent=1) + "\n", mode)


def _copy(src: Path, dst: Path, mode: int) -> Path:
    """Copy ``src`` to ``dst`` atomically with ``mode`` (a key is never briefly world-readable)."""
    return write_file(dst, Path(src).read_bytes(), mode)


# ---------------------------------------------------------------------------------------------
# the centre folder


@dataclass(frozen=True)
class Centre:
    """A centre's provisioning folder (see the module docstring) and what ``centre.json`` says."""

    directory: Path
    centre_id: str
    #: Every DNS name and IP the broker is reached by (its certificate's SAN); devices use the
    #: first unless their bundle names another.
    broker_hosts: tuple[str, ...]
    broker_port: int
    roster_keys_dir: Path
    #: Where ``broker-config`` last wrote the broker's files: its crl.pem and
    #: dynamic-security.json are rewritten after every change of who may connect.
    broker_config_dir: Path | None = None
    #: The gateway's share groups the broker admits besides the default ``gerbang-ingest``
    #: (``broker-config --share-group``), kept so a regenerated config keeps them.
    broker_share_groups: tuple[str, ...] = ()

    @property
    def ca_dir(self) -> Path:
        """The centre CA's folder."""
        return self.directory / "ca"

    @property
    def broker_cert_dir(self) -> Path:
        """Where the broker's server certificate and key are kept."""
        return self.directory / "broker"

    @property
    def gateway_dir(self) -> Path:
        """Where the gateway's client certificates and keys are written."""
        return self.directory / "gateway"

    @property
    def technicians_dir(self) -> Path:
        """Where technicians' client certificates and keys are written."""
        return self.directory / "technicians"

    def device_dir(self, device_id: str) -> Path:
        """One gate's folder, which is also its bundle."""
        return self.directory / "devices" / _check_id("device id", device_id)

    def device_ids(self) -> list[str]:
        """Every device added to this centre, sorted."""
        root = self.directory / "devices"
        return sorted(p.parent.name for p in root.glob(f"*/{DEVICE_FILE}")) if root.is_dir() \
            else []

    def save(self) -> None:
        """Write ``centre.json``."""
        _write_json(self.directory / CENTRE_FILE, {
            "centre": self.centre_id, "broker_hosts": list(self.broker_hosts),
            "broker_port": self.broker_port,
            "roster_keys": os.path.relpath(self.roster_keys_dir, self.directory)
            if self.roster_keys_dir.is_relative_to(self.directory) else str(self.roster_keys_dir),
            "broker_config_dir": str(self.broker_config_dir) if self.broker_config_dir else None,
            "broker_share_groups": list(self.broker_share_groups),
        })


def load_centre(directory: Path) -> Centre:
    """Read a centre folder; ProvisionError naming the file when it is not one."""
    directory = Path(directory)
    path = directory / CENTRE_FILE
    try:
        data = json.loads(path.read_text())
        roster_keys = Path(data["roster_keys"])
        return Centre(
            directory=directory, centre_id=_check_id("centre", data["centre"]),
            broker_hosts=tuple(data["broker_hosts"]), broker_port=int(data["broker_port"]),
            roster_keys_dir=roster_keys if roster_keys.is_absolute() else directory / roster_keys,
            broker_config_dir=Path(data["broker_config_dir"])
            if data.get("broker_config_dir") else None,
            broker_share_groups=tuple(data.get("broker_share_groups") or ()))
    except FileNotFoundError:
        raise ProvisionError(f"{directory} is not a centre folder (no {CENTRE_FILE}); make one "
                             "with `gerbang-provision ca create`, or pass --centre-dir") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"{path} is damaged ({exc!r}); restore it from your backup"
                             ) from None


def create_centre(directory: Path, centre_id: str, broker_hosts: Sequence[str],
                  broker_port: int = DEFAULT_TLS_PORT, *, roster_keys_dir: Path | None = None,
                  passphrase: bytes | None = None) -> Centre:
    """Make a centre folder: the CA, the broker's server certificate, the roster keys.

    ``broker_hosts`` lists every name and address the broker is reached by (they go into its
    certificate; gates and the gateway check them). ``roster_keys_dir`` reuses roster keys made
    earlier with ``roster-key create`` (they must be this centre's); by default new ones are
    made in ``roster-keys/``. Refuses a folder that already holds a centre.
    """
    from provisioning.signing import create_roster_keys, load_roster_keys

    directory = Path(directory)
    _check_id("centre", centre_id)
    if (directory / CENTRE_FILE).exists():
        raise ProvisionError(f"{directory} already holds centre "
                             f"{load_centre(directory).centre_id}; refusing to replace it (every "
                             "gate trusts its CA)")
    if not broker_hosts:
        raise ProvisionError("--broker-host: give at least one name or IP address the gates "
                             "use to reach the broker")
    if not 0 < broker_port < 65536:
        raise ProvisionError(f"--broker-port must be 1..65535, got {broker_port}")
    if roster_keys_dir is not None:
        keys = load_roster_keys(roster_keys_dir)
        if keys.centre != centre_id:
            raise ProvisionError(f"roster keys in {roster_keys_dir} are centre {keys.centre}'s, "
                                 f"not {centre_id}'s")
    make_dirs(directory, PRIVATE_DIR_MODE)
    ca = pki.create_centre_ca(centre_id, directory / "ca", passphrase=passphrase)
    centre = Centre(directory, centre_id, tuple(broker_hosts), broker_port,
                    Path(roster_keys_dir).resolve() if roster_keys_dir
                    else directory / "roster-keys")
    pki.issue_server_cert(ca, list(broker_hosts), centre.broker_cert_dir)
    if roster_keys_dir is None:
        create_roster_keys(centre.roster_keys_dir, centre_id)
    centre.save()
    return centre


def check_ca_matches(centre: Centre, ca: pki.CentreCA) -> pki.CentreCA:
    """Refuse a CA that is not this centre's (a folder copied from another centre)."""
    if ca.centre_id != centre.centre_id:
        raise ProvisionError(f"{centre.ca_dir} is centre {ca.centre_id}'s CA, but "
                             f"{centre.directory / CENTRE_FILE} says {centre.centre_id}")
    return ca


def replace_server_cert(centre: Centre, ca: pki.CentreCA, broker_hosts: Sequence[str]
                        ) -> tuple[Centre, pki.IssuedCert]:
    """A new broker certificate for a new list of names (the old one is revoked as superseded).

    Gates reach the broker by the first name unless their bundle says otherwise; bundles made
    before must be made again if that name changed.
    """
    old_cert = centre.broker_cert_dir / "broker.pem"
    old = pki.load_certificate(old_cert) if old_cert.exists() else None
    staging = centre.broker_cert_dir / ".new"
    shutil.rmtree(staging, ignore_errors=True)
    issued = pki.issue_server_cert(ca, list(broker_hosts), staging)
    for name in ("broker.pem", "broker.key"):
        os.replace(staging / name, centre.broker_cert_dir / name)
    staging.rmdir()
    if old is not None:
        pki.revoke(ca, old, reason="superseded")
    updated = dataclasses.replace(centre, broker_hosts=tuple(broker_hosts))
    updated.save()
    return updated, pki.IssuedCert(issued.cert, centre.broker_cert_dir / "broker.pem",
                                   centre.broker_cert_dir / "broker.key")


# ---------------------------------------------------------------------------------------------
# devices


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
    _check_id("device id", device_id)
    _check_id("room", room)
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
    _write_json(folder / DEVICE_FILE, {
        "device_id": device_id, "centre": centre.centre_id, "room": room,
        "key_on_device": key is None, "serial": f"{issued.serial:x}", "added": _now_iso(),
        "valid_until": issued.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")})
    sync_broker(centre, ca)  # the broker's rules name every gate (read at its next restart)
    return load_device(centre, device_id)


def csr_shell_command(device_id: str, centre_id: str, etc_dir: str = DEFAULT_ETC_DIR) -> str:
    """The shell command, run on the Pi, that makes the gate's key there and prints its CSR.

    Plain ``openssl`` (on every Raspberry Pi OS), so it works before Gerbang is installed. The
    key stays in ``{etc_dir}/tls`` (0600, never overwritten: run again, it prints the same CSR);
    only the printed CSR leaves the Pi.
    """
    _check_id("device id", device_id)
    _check_id("centre", centre_id)
    tls = f"{etc_dir.rstrip('/')}/tls"
    key, csr = f"{tls}/{device_id}.key", f"{tls}/{device_id}.csr"
    subject = f"/O={pki.ORGANIZATION}/OU={centre_id}/CN={device_id}"
    script = (f"set -e; umask 077; mkdir -p {tls}; chmod 700 {tls}; "
              f"if [ ! -e {key} ]; then openssl req -new -newkey ec -pkeyopt "
              f"ec_paramgen_curve:P-256 -nodes -subj {subject} -keyout {key} -out {csr} "
              f"2>/dev/null; fi; cat {csr}")
    return f"sudo sh -c {shlex.quote(script)}"


def fetch_csr_command(host: str, device_id: str, centre_id: str,
                      etc_dir: str = DEFAULT_ETC_DIR) -> list[str]:
    """``ssh HOST <csr_shell_command>``: the CSR arrives on stdout; the key stays on the Pi."""
    return ["ssh", check_ssh_host(host), csr_shell_command(device_id, centre_id, etc_dir)]


def revoke_device(centre: Centre, ca: pki.CentreCA, device_id: str,
                  reason: str = "cessation_of_operation") -> list[int]:
    """Revoke every valid certificate of ``device_id``; returns their serials.

    The CRL is re-signed and copied into the broker folder ``broker-config`` wrote, if any;
    the broker refuses the device after its next restart.
    """
    _check_id("device id", device_id)
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


def sync_crl(centre: Centre, ca: pki.CentreCA) -> Path | None:
    """Copy the CA's ``crl.pem`` into the broker folder (if ``broker-config`` made one)."""
    if centre.broker_config_dir is None or not (centre.broker_config_dir / "certs").is_dir():
        return None
    return _copy(ca.crl_path, centre.broker_config_dir / "certs" / pki.CRL_FILE, 0o644)


@dataclass(frozen=True)
class BrokerSync:
    """What ``sync_broker`` rewrote in the broker folder ``broker-config`` made (None: nothing,
    because there is no such folder yet, or it predates the access rules file)."""

    directory: Path | None
    rules: Path | None
    crl: Path | None
    #: Why the rules could not be rewritten, for the technician (empty when they were).
    problem: str = ""


def sync_broker(centre: Centre, ca: pki.CentreCA) -> BrokerSync:
    """Bring the broker folder up to date with the CA: ``crl.pem`` and the access rules
    (``dynamic-security.json``: every unrevoked identity, the recorded share groups).

    Run after anything that changes who may connect (``device add``, ``revoke``,
    ``gateway-cert``, ``technician-cert``). The broker reads both files at start only: the
    technician copies them to the broker host (when it is another machine) and restarts it.
    A folder written before the access rules existed (an ``acl_file`` config) is left alone
    and ``problem`` says to run ``broker-config`` again.
    """
    directory = centre.broker_config_dir
    if directory is None or not (directory / "mosquitto.conf").exists():
        return BrokerSync(None, None, None,
                          "no broker folder yet: run `gerbang-provision broker-config --out DIR`")
    crl = sync_crl(centre, ca)
    conf = (directory / "mosquitto.conf").read_text()
    if "plugin_opt_config_file" not in conf:
        return BrokerSync(directory, None, crl,
                          f"{directory / 'mosquitto.conf'} was written by an older "
                          "gerbang-provision (acl_file, which cannot refuse subscriptions): run "
                          "`gerbang-provision broker-config` again and install the new folder")
    rules = write_dynsec_file(directory / DYNSEC_FILE, centre.centre_id,
                              pki.broker_identities(ca), centre.broker_share_groups)
    return BrokerSync(directory, rules, crl)


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
    _copy(ca.cert_path, out / pki.CA_CERT, 0o644)
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
    _copy(ca.cert_path, out / pki.CA_CERT, 0o644)
    sync_broker(centre, ca)
    return issued


def technician_broker_toml(centre: Centre, issued: pki.IssuedCert) -> str:
    """The ``[broker]`` table a technician's push tools use, with this laptop's paths."""
    assert issued.cert_path is not None and issued.key_path is not None
    tls = issued.cert_path.resolve().parent
    return "\n".join([
        f"# {issued.common_name}: the technician's identity for roster-push / config-push",
        "[broker]",
        f"host = {_toml(centre.broker_hosts[0])}",
        f"port = {centre.broker_port}",
        f"ca_file = {_toml(str(tls / pki.CA_CERT))}",
        f"cert_file = {_toml(str(issued.cert_path.resolve()))}",
        f"key_file = {_toml(str(issued.key_path.resolve()))}",
        ""])


def gateway_broker_toml(centre: Centre, etc_dir: str = DEFAULT_ETC_DIR, workers: int = 1) -> str:
    """The ``[broker]`` table for gateway.toml, with the files where ``etc_dir`` says."""
    tls = f"{etc_dir.rstrip('/')}/tls"
    lines = ["[broker]",
             f"host = {_toml(centre.broker_hosts[0])}",
             f"port = {centre.broker_port}",
             f"ca_file = {_toml(f'{tls}/{pki.CA_CERT}')}",
             f"cert_file = {_toml(f'{tls}/{pki.GATEWAY_IDENTITY}.pem')}",
             f"key_file = {_toml(f'{tls}/{pki.GATEWAY_IDENTITY}.key')}"]
    if workers > 1:
        lines.insert(0, f"# ingest_workers = {workers}: worker n uses gateway-n.pem/.key next to "
                        "cert_file")
    return "\n".join([*lines, ""])


@dataclass(frozen=True)
class BrokerFiles:
    """What ``write_broker_config`` wrote."""

    directory: Path
    config_path: Path
    dynsec_path: Path
    certs_dir: Path
    #: Where the files are meant to live on the broker host (None: they are used in place).
    install_dir: Path | None
    plugin_path: Path


_CONF_PATH_KEYS = ("plugin_opt_config_file", "persistence_location", "cafile", "crlfile",
                   "certfile", "keyfile")


def write_broker_config(centre: Centre, ca: pki.CentreCA, out_dir: Path, *,
                        install_dir: Path | None = None, bind_address: str | None = None,
                        run_as_user: str | None = None,
                        persistence_dir: Path | None = None,
                        share_groups: Sequence[str] | None = None,
                        plugin_path: Path | None = None) -> tuple[Centre, BrokerFiles]:
    """The broker's folder: ``mosquitto.conf``, ``dynamic-security.json`` (who may do what),
    ``certs/`` (ca.pem, crl.pem, broker.pem, broker.key) and, for a broker host,
    ``INSTALL.txt`` and a systemd drop-in.

    Without ``install_dir`` the config points at the files where they are written (a broker on
    this machine, or the tests), and the dynamic-security plugin must be installed here. With
    it, the paths in ``mosquitto.conf`` are where the folder will be copied on the broker host
    (e.g. ``/etc/mosquitto/gerbang``), persistence goes to ``persistence_dir`` (default
    ``/var/lib/mosquitto``, owned by the mosquitto user), and the plugin path is ``plugin_path``
    or this machine's (INSTALL.txt checks it exists there). ``share_groups``: the gateway's
    share groups besides the default one (None: those recorded before). The folder and groups
    are recorded in ``centre.json`` so that later changes rewrite its rules and ``crl.pem``.
    """
    groups = tuple(centre.broker_share_groups if share_groups is None else share_groups)
    if install_dir is None:
        plugin = find_dynsec_plugin(plugin_path)
    else:
        plugin = Path(plugin_path) if plugin_path else default_plugin_path()
    out = Path(out_dir)
    certs = make_dirs(out / "certs")
    server_cert = centre.broker_cert_dir / "broker.pem"
    server_key = centre.broker_cert_dir / "broker.key"
    if not server_cert.exists():
        raise ProvisionError(f"{server_cert} is missing: the broker has no certificate; make "
                             "one with `gerbang-provision broker-config --broker-host NAME ...`")
    _copy(ca.cert_path, certs / pki.CA_CERT, 0o644)
    _copy(ca.crl_path, certs / pki.CRL_FILE, 0o644)
    _copy(server_cert, certs / "broker.pem", 0o644)
    _copy(server_key, certs / "broker.key", 0o600)
    written = write_mosquitto_tls_config(
        out, centre.centre_id, certs, certs / "broker.pem", certs / "broker.key",
        centre.broker_port, identities=pki.broker_identities(ca), share_groups=groups,
        plugin_path=plugin, bind_address=bind_address,
        persistence_dir=None if install_dir else (persistence_dir or out / "data"),
        run_as_user=run_as_user)
    (out / "acl").unlink(missing_ok=True)  # an older config's acl_file: no longer used
    if install_dir is not None:
        target = Path(install_dir)
        persistence = Path(persistence_dir or "/var/lib/mosquitto")
        here = str(out.resolve())
        lines = []
        for line in written.config_path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in _CONF_PATH_KEYS:
                if key == "persistence_location":
                    value = f"{persistence}/"
                elif value.startswith(here):
                    value = str(target) + value[len(here):]
                line = f"{key} {value}"
            lines.append(line)
        write_file(written.config_path, "\n".join(lines) + "\n", 0o644)
        data = out / "data"
        if data.is_dir() and not any(data.iterdir()):
            data.rmdir()
        _write_broker_install_notes(out, target, persistence, run_as_user or "mosquitto",
                                    plugin)
    updated = dataclasses.replace(centre, broker_config_dir=out.resolve(),
                                  broker_share_groups=groups)
    updated.save()
    return updated, BrokerFiles(out, written.config_path, written.dynsec_path, certs,
                                Path(install_dir) if install_dir else None, plugin)


def _write_broker_install_notes(out: Path, target: Path, persistence: Path, user: str,
                                plugin: Path) -> None:
    conf = target / "mosquitto.conf"
    write_file(out / "mosquitto-override.conf",
               "# systemd drop-in: run Debian's mosquitto.service with the Gerbang TLS config.\n"
               "# Install as /etc/systemd/system/mosquitto.service.d/gerbang-tls.conf\n"
               "[Service]\nExecStart=\n"
               f"ExecStart=/usr/sbin/mosquitto -c {conf}\n")
    write_file(out / "INSTALL.txt",
               f"Broker host: install this folder as {target} (run from inside it).\n\n"
               f"  test -f {plugin} || echo 'MISSING {plugin}: install mosquitto >= 2.0, or run "
               "broker-config again with --dynsec-plugin <its path on this host>'\n"
               f"  sudo install -d -m 0755 {target} {target}/certs\n"
               f"  sudo install -m 0644 mosquitto.conf {DYNSEC_FILE} {target}/\n"
               f"  sudo rm -f {target}/acl\n"
               f"  sudo install -m 0644 certs/ca.pem certs/crl.pem certs/broker.pem "
               f"{target}/certs/\n"
               f"  sudo install -m 0600 -o {user} certs/broker.key {target}/certs/\n"
               f"  sudo install -d -m 0700 -o {user} {persistence}\n"
               "  sudo install -D -m 0644 mosquitto-override.conf "
               "/etc/systemd/system/mosquitto.service.d/gerbang-tls.conf\n"
               "  sudo systemctl daemon-reload && sudo systemctl restart mosquitto\n"
               "  journalctl -u mosquitto -n 20    # expect: Opening ipv4 listen socket on port "
               "...\n\n"
               f"After `gerbang-provision device add`, `revoke`, `gateway-cert` or "
               "`technician-cert`: copy\n"
               f"{DYNSEC_FILE} to {target}/ and certs/crl.pem to {target}/certs/ again, then\n"
               "`sudo systemctl restart mosquitto`: the broker reads who may connect and do what\n"
               "at start only (connections already open stay open until the restart).\n")


# ---------------------------------------------------------------------------------------------
# the bundle


@dataclass(frozen=True)
class BundleOptions:
    """What a gate's bundle should say beyond what the centre folder knows."""

    session: str
    etc_dir: str = DEFAULT_ETC_DIR
    data_dir: str = DEFAULT_DATA_DIR
    camera: str = "picamera2"
    #: For ``camera = "replay"``: the folder, playlist or video the gate replays.
    replay_path: str | None = None
    #: A TOML file with a ``[gpio]`` table (the door's wiring); default: the standard wiring.
    pin_map: Path | None = None
    pin_factory: str = "auto"
    #: The name or address this gate reaches the broker by (default: the centre's first).
    broker_host: str | None = None
    #: Signed rosters (``.roster.signed``) to install at the gate's first start.
    rosters: tuple[Path, ...] = ()
    #: Liveness step on (default: on for a real camera, off for replayed stills).
    liveness: bool | None = None
    model_threads: int = 2


def _toml(value: Any) -> str:
    """One TOML value (strings as JSON strings, which are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, SwitchConfig):
        return ("{ " + ", ".join(f"{f.name} = {_toml(getattr(value, f.name))}"
                                 for f in dataclasses.fields(value)) + " }")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def load_pin_map(path: Path | None, pin_factory: str) -> GpioConfig:
    """The door's ``[gpio]`` table from ``path`` (validated, naming the bad field), or the
    standard wiring; ``pin_factory`` applied."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ProvisionError(f"--pins: {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ProvisionError(f"--pins: {path}: {exc}") from None
        data = doc.get("gpio", doc)
        if not isinstance(data, dict):
            raise ProvisionError(f"--pins: {path}: [gpio] must be a table")
    data = {**data, "pin_factory": pin_factory}
    try:
        return load_section(GpioConfig, data, "gpio")
    except ConfigError as exc:
        raise ProvisionError(f"--pins {path}: {exc}") from None


def wiring_sheet(device_id: str, room: str, gpio: GpioConfig) -> str:
    """The pin map as a sheet for the electrician: what, BCM number, header pin, polarity."""
    rows = [
        ("lock relay", gpio.relay_pin,
         f"relay board input; {'active high' if gpio.relay_active_high else 'active low'}; "
         + ("FAIL-SAFE: energised = locked, power loss releases the door" if gpio.fail_safe
            else "fail-secure: energised = released, power loss keeps the door locked")),
        ("status LED red", gpio.red_pin, "common cathode" if gpio.led_active_high
         else "common anode"),
        ("status LED green", gpio.green_pin, ""),
        ("status LED blue", gpio.blue_pin, ""),
        ("buzzer", gpio.buzzer_pin, "active high" if gpio.buzzer_active_high else "active low"),
    ]
    switches = (("door contact", gpio.door_contact, "on = door open"),
                ("exit button", gpio.exit_button, "on = pressed"),
                ("override key", gpio.override_key, "on = key turned"),
                ("tamper switch", gpio.tamper, "on = enclosure open"))
    for name, switch, meaning in switches:
        rows.append((name, switch.pin, f"pull {switch.pull}, {meaning} reads {switch.active}"))
    lines = [f"Wiring of gate {device_id} (room {room}); BCM numbering, header = physical pin "
             "on the 40-pin header. Ground: header pins 6, 9, 14, 20, 25, 30, 34, 39.", "",
             f"{'what':18s} {'BCM':>4s} {'header':>6s}  notes",
             f"{'-' * 18} {'-' * 4} {'-' * 6}  {'-' * 40}"]
    for name, pin, note in rows:
        lines.append(f"{name:18s} {pin:>4d} {BCM_TO_HEADER.get(pin, 0):>6d}  {note}")
    lines += ["", "Check after wiring: gerbang-device selftest --config "
              "/etc/gerbang/device.toml (the relay clicks, the LED shows red, green, blue, the "
              "buzzer beeps; every input is read and shown).", ""]
    return "\n".join(lines)


def device_toml(centre: Centre, record: DeviceRecord, options: BundleOptions,
                gpio: GpioConfig) -> str:
    """The gate's ``device.toml``, commented for the technician who opens it on the Pi."""
    etc = options.etc_dir.rstrip("/") or "/"
    tls, keys = f"{etc}/tls", f"{etc}/keys"
    host = options.broker_host or centre.broker_hosts[0]
    liveness = options.liveness if options.liveness is not None else options.camera != "replay"
    lines = [
        f"# Gerbang gate {record.device_id}: centre {centre.centre_id}, room {record.room}.",
        "# Written by `gerbang-provision bundle`; make the bundle again rather than editing",
        "# (the certificate, keys and ids below belong together). Every key is checked at start.",
        "",
        "[gate]",
        f"device_id = {_toml(record.device_id)}   # = the CN of its certificate",
        f"centre = {_toml(centre.centre_id)}",
        f"room = {_toml(record.room)}",
        f"session = {_toml(options.session)}          # the exam session this gate serves",
        f"data_dir = {_toml(options.data_dir)}",
        "",
        "[broker]",
        "# Mutual TLS: the gate trusts only the centre CA and proves who it is with its own",
        "# certificate; the broker refuses anything else.",
        f"host = {_toml(host)}",
        f"port = {centre.broker_port}",
        "protocol = 5",
        f"ca_file = {_toml(f'{tls}/{pki.CA_CERT}')}",
        f"cert_file = {_toml(f'{tls}/{record.device_id}.pem')}",
        f"key_file = {_toml(f'{tls}/{record.device_id}.key')}"
        + ("   # made on the gate itself" if record.key_on_device else ""),
    ]
    if host not in centre.broker_hosts:
        lines.append(f"tls_server_name = {_toml(centre.broker_hosts[0])}   # the name in the "
                     "broker's certificate")
    lines += ["", "[capture]", f"source = {_toml(options.camera)}"]
    if options.camera == "replay":
        lines.append(f"path = {_toml(options.replay_path)}")
    lines += ["", "[models]", f"threads = {options.model_threads}", "",
              "[liveness]", f"enabled = {_toml(liveness)}"
              + ("" if liveness else "   # replayed stills cannot answer a challenge"), "",
              "[gpio]", "# BCM numbering; the wiring sheet is WIRING.txt in the bundle."]
    for f in dataclasses.fields(gpio):
        lines.append(f"{f.name} = {_toml(getattr(gpio, f.name))}")
    lines += ["", "[keys]",
              "# The gate's share of the roster keys: signed, encrypted rosters only.",
              f"roster_public_key = {_toml(f'{keys}/roster-signing.pub')}",
              f"roster_transport_key = {_toml(f'{keys}/roster-transport.key')}",
              f"storage_key = {_toml(f'{keys}/storage.key')}", ""]
    return "\n".join(lines)


def _check_device_toml(text: str, bundle_dir: Path, etc_dir: str, record: DeviceRecord) -> None:
    """Validate the generated config as the gate will, with its files where the bundle has them.

    The TLS paths point at ``etc_dir`` on the Pi; for the check they are mapped into the
    bundle folder. A key made on the gate is not here, so the client pair is left out then.
    """
    data = tomllib.loads(text)
    broker = data["broker"]
    for name in ("ca_file", "cert_file", "key_file"):
        value = broker[name]
        if value.startswith(etc_dir.rstrip("/") + "/"):
            broker[name] = str(bundle_dir / value[len(etc_dir.rstrip("/")) + 1:])
    if record.key_on_device:
        del broker["cert_file"], broker["key_file"]
    try:
        parse_device_config(data)
    except ConfigError as exc:
        raise ProvisionError(f"the generated device.toml would not start: {exc}") from None


def _check_roster(path: Path, centre: Centre, record: DeviceRecord, session: str,
                  keys_dir: Path) -> None:
    """Refuse now, with the gate's own reason, a signed roster the gate would refuse at the door:
    another centre, session or room, templates from another model than the one shipped with
    this Gerbang, not signed by this centre, or not openable with the room's key."""
    from device.decide.roster import RosterError
    from device.infer.bundle import load_bundle
    from device.manage.keyfile import read_secret_key
    from device.manage.roster_file import load_roster_public_key, verify_signed_roster

    try:
        verify_signed_roster(
            Path(path).read_bytes(),
            public_key=load_roster_public_key(keys_dir / "roster-signing.pub"),
            transport_key=read_secret_key(keys_dir / "roster-transport.key",
                                          "roster transport key"),
            centre=centre.centre_id, session=session, room=record.room,
            embedder_sha256=load_bundle().hashes()["embedder"])
    except FileNotFoundError:
        raise ProvisionError(f"--roster: {path} does not exist") from None
    except RosterError as exc:
        raise ProvisionError(f"--roster {path}: gate {record.device_id} (room {record.room}, "
                             f"session {session}) would refuse it: {exc}") from None


def install_script(record: DeviceRecord, options: BundleOptions,
                   service_user: str = SERVICE_USER) -> str:
    """``install.sh``: puts the bundle's files where ``device.toml`` says, with safe modes.

    Run on the Pi as root (``sudo sh install.sh``); ``DESTDIR=/mnt/rootfs`` writes into a
    mounted SD card instead. Files are owned by the service user when it exists.
    """
    dev = record.device_id
    etc, data = options.etc_dir.rstrip("/"), options.data_dir.rstrip("/")
    key_line = (f'if [ -f "$here/tls/{dev}.key" ]; then install -m 0600 "$here/tls/{dev}.key" '
                f'"$etc/tls/{dev}.key"; fi')
    return f"""#!/bin/sh
# Install the Gerbang bundle of gate {dev} (room {record.room}, session {options.session}).
# On the Pi, from the bundle folder:      sudo sh install.sh
# Onto a mounted SD card's root instead:  sudo DESTDIR=/media/$USER/rootfs sh install.sh
# Written by `gerbang-provision bundle`; make the bundle again rather than editing this.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest="${{DESTDIR:-}}"
etc="$dest"{shlex.quote(etc)}
data="$dest"{shlex.quote(data)}
user={shlex.quote(service_user)}
install -d -m 0755 "$etc"
install -d -m 0700 "$etc/tls" "$etc/keys" "$data" "$data/incoming"
install -m 0644 "$here/device.toml" "$etc/device.toml"
install -m 0644 "$here/tls/ca.pem" "$etc/tls/ca.pem"
install -m 0644 "$here/tls/{dev}.pem" "$etc/tls/{dev}.pem"
{key_line}
install -m 0644 "$here/keys/roster-signing.pub" "$etc/keys/roster-signing.pub"
install -m 0600 "$here/keys/roster-transport.key" "$etc/keys/roster-transport.key"
install -m 0600 "$here/keys/storage.key" "$etc/keys/storage.key"
for roster in "$here"/incoming/*.roster.signed; do
    [ -e "$roster" ] || continue
    install -m 0600 "$roster" "$data/incoming/"
done
if [ ! -f "$etc/tls/{dev}.key" ]; then
    echo "WARNING: $etc/tls/{dev}.key is missing: this gate's key must be made on it (see" >&2
    echo "  gerbang-provision device csr-command {dev}) before the gate can connect." >&2
fi
if [ -z "$dest" ] && [ "$(id -u)" = 0 ] && id "$user" >/dev/null 2>&1; then
    # The service replaces device.toml itself when the gateway pushes a config: it owns the file
    # and its folder (systemd lets it write /etc/gerbang and /var/lib/gerbang, nothing else).
    chown "$user:$user" "$etc" "$etc/device.toml"
    chown -R "$user:$user" "$etc/tls" "$etc/keys" "$data"
    echo "gate {dev}: files installed under $etc and $data, owned by $user"
else
    echo "gate {dev}: files installed under $etc and $data"
    echo "NOTE: not owned by the '$user' service user yet; on the Pi run:" >&2
    echo "  sudo chown $user:$user {etc} {etc}/device.toml" >&2
    echo "  sudo chown -R $user:$user {etc}/tls {etc}/keys {data}" >&2
fi
echo "next: sudo -u $user {DEFAULT_VENV}/bin/gerbang-device selftest --config {etc}/device.toml"
"""


def write_bundle(centre: Centre, device_id: str, options: BundleOptions) -> Path:
    """Fill ``devices/<device>/`` with everything the gate needs (see the module docstring).

    Checked first: the device was added and its certificate is neither expired nor revoked,
    the session id, the camera, the pin map. Then the gate's roster keys are exported (kept if
    already there: its storage key is made once), every roster is checked with them as the
    gate will (this centre's signature, this gate's room and session), and the generated
    ``device.toml`` is validated as the gate will, before it and the rest are written.
    Returns the bundle folder.
    """
    from provisioning.signing import export_device_keys, load_roster_keys

    record = load_device(centre, device_id)
    _check_id("session", options.session)
    if options.camera not in CAMERAS:
        raise ProvisionError(f"--camera must be one of {', '.join(CAMERAS)}, got "
                             f"{options.camera!r}")
    if options.camera == "replay" and not options.replay_path:
        raise ProvisionError("--replay-path is required with --camera replay")
    for what, value in (("--etc-dir", options.etc_dir), ("--data-dir", options.data_dir)):
        if not value.startswith("/"):
            raise ProvisionError(f"{what} must be an absolute path on the Pi, got {value!r}")
    cert = pki.load_certificate(record.cert_path)
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ProvisionError(f"{record.cert_path} expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d}; `gerbang-provision device "
                             f"add {device_id} --room {record.room} --replace`")
    revoked = json.loads((centre.ca_dir / pki.REVOKED_FILE).read_text())["revoked"]
    if any(int(entry["serial"], 16) == record.serial for entry in revoked):
        raise ProvisionError(f"{device_id}'s certificate (serial {record.serial:x}) is revoked; "
                             f"`gerbang-provision device add {device_id} --room {record.room} "
                             "--replace` first")
    gpio = load_pin_map(options.pin_map, options.pin_factory)
    folder = record.folder
    keys = load_roster_keys(centre.roster_keys_dir)
    if keys.centre != centre.centre_id:
        raise ProvisionError(f"roster keys in {centre.roster_keys_dir} are centre "
                             f"{keys.centre}'s, not {centre.centre_id}'s")
    export_device_keys(keys, record.room, folder / "keys")
    for roster in options.rosters:
        _check_roster(roster, centre, record, options.session, folder / "keys")
    _copy(centre.ca_dir / pki.CA_CERT, folder / "tls" / pki.CA_CERT, 0o644)
    text = device_toml(centre, record, options, gpio)
    _check_device_toml(text, folder, options.etc_dir, record)
    write_file(folder / "device.toml", text)
    incoming = folder / "incoming"
    if incoming.is_dir():
        shutil.rmtree(incoming)  # only this bundle's rosters, never one left from before
    for roster in options.rosters:
        _copy(roster, incoming / Path(roster).name, 0o600)
    write_file(folder / "WIRING.txt", wiring_sheet(device_id, record.room, gpio))
    write_file(folder / "install.sh", install_script(record, options), 0o755)
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file() and _goes_to_the_gate(p)
             and p.name != BUNDLE_FILE}
    _write_json(folder / BUNDLE_FILE, {
        "device_id": device_id, "centre": centre.centre_id, "room": record.room,
        "session": options.session, "etc_dir": options.etc_dir, "data_dir": options.data_dir,
        "key_on_device": record.key_on_device, "certificate_serial": f"{record.serial:x}",
        "created": _now_iso(), "files": files})
    return folder


def _goes_to_the_gate(path: Path) -> bool:
    """Everything in the device folder but the CSR, the laptop's record and hidden files."""
    return not (path.name.startswith(".") or path.suffix == ".csr" or path.name == DEVICE_FILE)


def bundle_info(bundle_dir: Path) -> dict[str, Any]:
    """``bundle.json`` of a bundle folder; ProvisionError if it was never made."""
    try:
        return json.loads((Path(bundle_dir) / BUNDLE_FILE).read_text())
    except FileNotFoundError:
        raise ProvisionError(f"{bundle_dir} holds no bundle yet; make it with "
                             "`gerbang-provision bundle`") from None


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive entries owned by root, not by whoever ran the tool on the laptop."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def default_archive_path(bundle_dir: Path) -> Path:
    """``devices/<device>.tar.gz`` next to the bundle folder (ids may contain dots)."""
    return Path(bundle_dir).parent / f"{Path(bundle_dir).name}.tar.gz"


def write_bundle_archive(bundle_dir: Path, out: Path) -> Path:
    """``bundle_dir`` as a .tar.gz (mode 0600: it holds keys), top folder = the device id."""
    bundle_dir = Path(bundle_dir)
    info = bundle_info(bundle_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(bundle_dir.rglob("*")):
            if not _goes_to_the_gate(path):
                continue
            tar.add(path, arcname=f"{info['device_id']}/{path.relative_to(bundle_dir)}",
                    recursive=False, filter=_tar_filter)
    write_file(Path(out), buffer.getvalue(), 0o600)
    return Path(out)


# ---------------------------------------------------------------------------------------------
# installing


def check_ssh_host(host: str) -> str:
    """``user@host`` or ``host``; refuses what ssh would take as an option or cannot be a host."""
    if not host or host.startswith("-") or any(c.isspace() or c in "'\"`$;|&<>\\" for c in host):
        raise ProvisionError(f"--host {host!r} is not an SSH destination (like pi@10.0.0.21)")
    return host


def remote_archive_path(device_id: str) -> str:
    """Where the archive is copied on the Pi before it is unpacked."""
    return f"/tmp/gerbang-bundle-{device_id}.tar.gz"


def install_commands(archive: Path, device_id: str, host: str, *, etc_dir: str,
                     selftest: bool = False, restart: bool = False,
                     venv: str = DEFAULT_VENV) -> list[list[str]]:
    """The ssh/scp commands that install a bundle archive on the Pi at ``host``.

    1. ``scp`` the archive to ``/tmp``; 2. ``ssh -t`` unpacks it in a private temporary folder,
    runs ``install.sh`` with sudo (``-t`` so sudo can ask for the password) and deletes both;
    then optionally 3. the self-test as the service user, with the service stopped (it needs
    the camera and the pins), and 4. a service restart.
    """
    check_ssh_host(host)
    _check_id("device id", device_id)
    remote = remote_archive_path(device_id)
    unpack = (f"set -e; d=$(mktemp -d); tar -xzf {remote} -C \"$d\"; "
              f"sudo sh \"$d/{device_id}/install.sh\"; rm -rf \"$d\" {remote}")
    commands = [["scp", "-q", str(archive), f"{host}:{remote}"],
                ["ssh", "-t", host, unpack]]
    config = f"{etc_dir.rstrip('/')}/device.toml"
    if selftest:
        commands.append(["ssh", "-t", host,
                         "sudo systemctl stop gerbang-device 2>/dev/null; "
                         f"sudo -u {SERVICE_USER} {shlex.quote(venv)}/bin/gerbang-device "
                         f"selftest --config {shlex.quote(config)}"])
    if restart:
        commands.append(["ssh", "-t", host, "sudo systemctl restart gerbang-device && "
                         "systemctl --no-pager status gerbang-device | head -n 5"])
    return commands


def install_local(bundle_dir: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """Run the bundle's ``install.sh`` into ``root`` (``DESTDIR``; ``/`` = this machine).

    For an SD card mounted on the laptop, or a gate that is this machine.
    """
    bundle_info(bundle_dir)
    root = Path(root).resolve()
    env = {**os.environ, "DESTDIR": "" if root == Path("/") else str(root)}
    return subprocess.run(["sh", str(Path(bundle_dir) / "install.sh")], env=env,
                          capture_output=True, text=True, check=False)
