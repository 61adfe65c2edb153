"""A centre's provisioning folder: what ``centre.json`` says, making the folder, its CA check, and
the broker's server certificate.

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
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioning import pki
from provisioning.broker_config import DEFAULT_TLS_PORT
from provisioning.bundle.common import ProvisionError, check_id, write_json
from provisioning.files import PRIVATE_DIR_MODE, make_dirs

CENTRE_FILE = "centre.json"
DEVICE_FILE = "device.json"


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
        return self.directory / "devices" / check_id("device id", device_id)

    def device_ids(self) -> list[str]:
        """Every device added to this centre, sorted."""
        root = self.directory / "devices"
        return sorted(p.parent.name for p in root.glob(f"*/{DEVICE_FILE}")) if root.is_dir() \
            else []

    def save(self) -> None:
        """Write ``centre.json``."""
        write_json(self.directory / CENTRE_FILE, {
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
            directory=directory, centre_id=check_id("centre", data["centre"]),
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
    check_id("centre", centre_id)
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
