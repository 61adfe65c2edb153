"""The broker's folder: ``mosquitto.conf``, ``dynamic-security.json`` (who may do what) and
``certs/``, written once by ``broker-config`` and kept in step with the CA after every change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioning import pki
from provisioning.broker_config import (
    DYNSEC_FILE,
    default_plugin_path,
    find_dynsec_plugin,
    write_dynsec_file,
    write_mosquitto_tls_config,
)
from provisioning.bundle.centre import Centre
from provisioning.bundle.common import ProvisionError, copy_file
from provisioning.files import make_dirs, write_file


def sync_crl(centre: Centre, ca: pki.CentreCA) -> Path | None:
    """Copy the CA's ``crl.pem`` into the broker folder (if ``broker-config`` made one)."""
    if centre.broker_config_dir is None or not (centre.broker_config_dir / "certs").is_dir():
        return None
    return copy_file(ca.crl_path, centre.broker_config_dir / "certs" / pki.CRL_FILE, 0o644)


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
    copy_file(ca.cert_path, certs / pki.CA_CERT, 0o644)
    copy_file(ca.crl_path, certs / pki.CRL_FILE, 0o644)
    copy_file(server_cert, certs / "broker.pem", 0o644)
    copy_file(server_key, certs / "broker.key", 0o600)
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
