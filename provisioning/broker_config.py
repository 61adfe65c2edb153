"""A centre broker's Mosquitto 2.x configuration: mutual TLS, CRL, and per-identity access rules.

The config has a single TLS listener that accepts only clients presenting a certificate from the
centre CA (``require_certificate``) that is not on the CA's revocation list (``crlfile``). The
certificate's Common Name becomes the MQTT username (``use_identity_as_username``) and the
client id (``use_username_as_clientid``, so one client cannot knock another off by reusing its
client id).

Access rules come from Mosquitto's **dynamic-security plugin** (``dynamic-security.json``), not
an ``acl_file``: Mosquitto 2.0's ``acl_file`` checks publishes and deliveries but grants every
SUBSCRIBE, so a gate could join the gateway's shared subscription (``$share/<group>/…``) and the
broker would hand it (and then drop) every other event. The plugin checks subscriptions too.
Mosquitto 2.0.11's plugin does not expand ``%u`` in its rules, so every identity gets literal
topics: one role per gate, generated from the CA's issued, unrevoked certificates
(``pki.broker_identities``). Measured on Mosquitto 2.0.11 (tests/test_broker_access.py):

==================  ==============================================  ===========================
who (CN)            topics (``C`` = ``gerbang/v1/{centre}``)          may
==================  ==============================================  ===========================
gate ``<device>``   ``C/<device>/{status,events,alarms,telemetry,     publish
                    cmd_ack}``
gate ``<device>``   ``C/<device>/cmd/+``                            subscribe (that filter
                                                                    only), receive
``gateway``,        ``gerbang/v1/{centre,+}/+/{events,status,          subscribe (exactly these
``gateway-N``       alarms,telemetry,cmd_ack}``, plain and             filters)
                    ``$share/<group>/…`` for each share group
``gateway``…        ``C/#``                                         receive
``gateway``…        ``C/+/cmd/#``                                   publish
``tech-<name>``     ``C/+/cmd/{roster,config,models,ping}``          publish
``tech-<name>``     ``C/+/cmd_ack`` (and each gate's literal          subscribe (pattern: no
                    ``C/<device>/cmd_ack``)                          ``$share``), receive
==================  ==============================================  ===========================

Everything else is denied (``defaultACLAccess``: publish, receive and subscribe off, unsubscribe
on), ``$SYS`` and the plugin's own ``$CONTROL`` API included: no identity may publish to
``$CONTROL/dynamic-security/…``, so the rules change only by regenerating the file and
restarting the broker. A certificate from the CA whose CN is not in the file (issued after the
broker started, or by hand) connects but may do nothing. The plugin reads the file at start
only: regenerate it and restart the broker after ``device add``, ``revoke``, ``gateway-cert``
and ``technician-cert`` (``gerbang-provision`` does the first part by itself).

``max_packet_size`` bounds every message a client may send: the largest legitimate one is a
command of ``device.uplink.commands.MAX_COMMAND_BYTES`` (16 MiB, e.g. a whole model bundle);
anything larger is refused by the broker (it disconnects the sender) before it reaches anyone.
Persistence settings follow ``gerbang/conf/mosquitto-local.conf`` (autosave every 10 s, queue
bounded by memory).
"""

from __future__ import annotations

import glob
import json
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from device.uplink.commands import MAX_COMMAND_BYTES
from gerbang import wire
from gerbang.wire import ID_PATTERN, TOPIC_ROOT
from provisioning.files import PRIVATE_DIR_MODE, make_dirs, write_file
from provisioning.pki import (
    CA_CERT,
    CRL_FILE,
    ISSUED_DIR,
    REVOKED_FILE,
    BrokerIdentities,
    PKIError,
    broker_identities,
    load_certificate,
)

#: What a device may publish under its own ``gerbang/v1/{centre}/{device}/``.
DEVICE_PUBLISH_LEAVES = wire.DEVICE_PUBLISH_LEAVES
#: What the gateway's ingest subscribes to under every device (``gateway/ingest.py``).
GATEWAY_SUBSCRIBE_LEAVES = ("events", "status", "alarms", "telemetry", "cmd_ack")
#: The commands a technician's laptop may send (``roster-push``, ``config-push``, models, ping);
#: not ``unlock`` or ``resend``, which belong to the gateway.
TECHNICIAN_COMMANDS = ("roster", "config", "models", "ping")
#: The share group the gateway's ingest workers join when none is configured
#: (``gateway.ingest.DEFAULT_SHARE_GROUP``; a test keeps the two equal).
DEFAULT_SHARE_GROUP = "gerbang-ingest"
DEFAULT_TLS_PORT = 8883
DYNSEC_FILE = "dynamic-security.json"
DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
#: The largest command a gate accepts (``MAX_COMMAND_BYTES``, 16 MiB) plus 64 KiB for its
#: topic, properties and headers: the broker refuses any larger packet.
MAX_PACKET_BYTES = MAX_COMMAND_BYTES + 64 * 1024


@dataclass(frozen=True)
class MosquittoTLSConfig:
    """The files ``write_mosquitto_tls_config`` wrote; start with ``mosquitto -c config_path``."""

    config_path: Path
    dynsec_path: Path
    persistence_dir: Path
    port: int
    plugin_path: Path

    @property
    def acl_path(self) -> Path:
        """The access rules file (``dynamic-security.json``; there is no ``acl_file`` any more)."""
        return self.dynsec_path


def _path_value(what: str, path: Path) -> str:
    """An absolute path for the config; Mosquitto cannot quote, so whitespace is refused."""
    text = str(Path(path).resolve())
    if any(ch.isspace() for ch in text):
        raise PKIError(f"{what} path {text!r} contains whitespace, which mosquitto.conf "
                       "cannot express; use a path without spaces")
    return text


def plugin_candidates() -> list[Path]:
    """Where Mosquitto's dynamic-security plugin is installed on this machine, most likely
    first: Debian/Ubuntu's ``/usr/lib/<triplet>/`` (package ``mosquitto`` ≥ 2.0), then other
    lib folders (source builds, other distributions)."""
    triplet = sysconfig.get_config_var("MULTIARCH") or ""
    fixed = [Path("/usr/lib") / triplet / DYNSEC_PLUGIN] if triplet else []
    fixed += [Path("/usr/lib") / DYNSEC_PLUGIN, Path("/usr/lib64") / DYNSEC_PLUGIN,
              Path("/usr/local/lib") / DYNSEC_PLUGIN,
              Path("/usr/lib/mosquitto") / DYNSEC_PLUGIN]
    found = [Path(p) for p in sorted(glob.glob(f"/usr/lib/*/{DYNSEC_PLUGIN}"))]
    ordered: list[Path] = []
    for path in [*fixed, *found]:
        if path not in ordered:
            ordered.append(path)
    return ordered


def find_dynsec_plugin(explicit: Path | str | None = None) -> Path:
    """The dynamic-security plugin's path: ``explicit`` if given (it must exist), else the
    first of ``plugin_candidates`` that exists; PKIError saying where it was looked for."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise PKIError(f"--dynsec-plugin: {path} does not exist (Mosquitto's "
                           f"dynamic-security plugin, {DYNSEC_PLUGIN})")
        return path
    for path in plugin_candidates():
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in plugin_candidates())
    raise PKIError(f"Mosquitto's dynamic-security plugin ({DYNSEC_PLUGIN}) is not installed "
                   f"here (looked in {looked}): install Mosquitto 2.0 or newer (Debian/Ubuntu: "
                   "apt-get install mosquitto), or pass --dynsec-plugin PATH")


def default_plugin_path() -> Path:
    """The plugin found here, else Debian's path for this machine's architecture: what a
    config for another host (``--install-dir``) names unless told otherwise."""
    try:
        return find_dynsec_plugin()
    except PKIError:
        triplet = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
        return Path("/usr/lib") / triplet / DYNSEC_PLUGIN


def _check_share_group(group: str) -> str:
    if not isinstance(group, str) or not group or any(c in group for c in "/+#") or \
            any(c.isspace() for c in group):
        raise PKIError(f"share group {group!r} must be a plain name (no '/', '+', '#' or "
                       "spaces), as [gateway] share_group")
    return group


def gateway_filters(centre: str, share_groups: Sequence[str] = ()) -> list[str]:
    """Every topic filter a gateway ingest process may subscribe to: for each leaf of
    ``GATEWAY_SUBSCRIBE_LEAVES``, ``gerbang/v1/{centre}/+/<leaf>`` and the same under centre
    ``+`` (a gateway configured for every centre, ``[gateway] centre = "+"``; it still
    receives only this centre's messages), each plain and as ``$share/<group>/…`` for the
    default share group and every group in ``share_groups``."""
    groups = [DEFAULT_SHARE_GROUP, *(g for g in map(_check_share_group, share_groups)
                                     if g != DEFAULT_SHARE_GROUP)]
    plain = [wire.subscription(c, leaf) for c in (centre, "+")
             for leaf in GATEWAY_SUBSCRIBE_LEAVES]
    return [*plain, *(f"$share/{g}/{f}" for g in dict.fromkeys(groups) for f in plain)]


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def gate_role(device: str) -> str:
    """The dynamic-security role name of one gate."""
    return f"gate:{device}"


def dynsec_config(centre: str, identities: BrokerIdentities,
                  share_groups: Sequence[str] = ()) -> dict[str, Any]:
    """The dynamic-security plugin's JSON for ``centre`` (see the module docstring's table):
    a role per gate with its literal topics, one ``gateway`` and one ``technician`` role, a
    client (no password: certificate only) for every identity, everything else denied."""
    if not ID_PATTERN.match(centre):
        raise PKIError(f"centre {centre!r} is not a valid id (must match {ID_PATTERN.pattern})")
    root = f"{TOPIC_ROOT}/{centre}"
    roles: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    for device in identities.devices:
        own = f"{root}/{device}"
        roles.append({"rolename": gate_role(device),
                      "textname": f"gate {device}: its own topics only",
                      "acls": [*(_acl("publishClientSend", f"{own}/{leaf}")
                                 for leaf in DEVICE_PUBLISH_LEAVES),
                               _acl("subscribeLiteral", f"{own}/cmd/+"),
                               _acl("publishClientReceive", f"{own}/cmd/+")]})
        clients.append({"username": device, "textname": f"gate {device}",
                        "roles": [{"rolename": gate_role(device)}]})
    roles.append({"rolename": "gateway",
                  "textname": "gateway ingest: reads the centre, sends commands",
                  "acls": [*(_acl("subscribeLiteral", f)
                             for f in gateway_filters(centre, share_groups)),
                           _acl("publishClientReceive", f"{root}/#"),
                           _acl("publishClientSend", f"{root}/+/cmd/#")]})
    clients += [{"username": gw, "textname": "gateway ingest process",
                 "roles": [{"rolename": "gateway"}]} for gw in identities.gateways]
    roles.append({"rolename": "technician",
                  "textname": "technician's laptop: pushes rosters, configs, models",
                  "acls": [*(_acl("publishClientSend", f"{root}/+/cmd/{command}")
                             for command in TECHNICIAN_COMMANDS),
                           _acl("subscribePattern", f"{root}/+/cmd_ack"),
                           _acl("publishClientReceive", f"{root}/+/cmd_ack")]})
    clients += [{"username": tech, "textname": "technician",
                 "roles": [{"rolename": "technician"}]} for tech in identities.technicians]
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


def dynsec_text(centre: str, identities: BrokerIdentities,
                share_groups: Sequence[str] = ()) -> str:
    """``dynsec_config`` as the file the plugin reads."""
    return json.dumps(dynsec_config(centre, identities, share_groups), indent=1) + "\n"


def write_dynsec_file(path: Path, centre: str, identities: BrokerIdentities,
                      share_groups: Sequence[str] = ()) -> Path:
    """Write ``dynamic-security.json`` (0644: names only, no secrets; never group-writable)."""
    return write_file(Path(path), dynsec_text(centre, identities, share_groups), 0o644)


def _check_server_files(ca_cert: x509.Certificate, server_cert: Path, server_key: Path) -> None:
    """Fail here, with a clear message, rather than in the broker's log at start-up."""
    cert = load_certificate(server_cert)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(f"{server_cert} was not issued by the centre CA") from None
    try:
        key = serialization.load_pem_private_key(Path(server_key).read_bytes(), None)
    except FileNotFoundError:
        raise PKIError(f"server key {server_key} does not exist") from None
    except (TypeError, ValueError) as exc:
        raise PKIError(f"server key {server_key} is unusable by Mosquitto ({exc}); it must be "
                       "an unencrypted PEM key") from None
    if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise PKIError(f"{server_key} is not the key of {server_cert}")


def _identities_from(ca_dir: Path) -> BrokerIdentities:
    """The identities of the CA kept in ``ca_dir`` (its ``issued/`` and ``revoked.json``)."""
    if not (ca_dir / ISSUED_DIR).is_dir() or not (ca_dir / REVOKED_FILE).exists():
        raise PKIError(f"{ca_dir} holds only the CA's certificate, not what it issued: pass "
                       "identities=pki.broker_identities(ca) to name the broker's clients")
    return broker_identities(ca_dir)


def write_mosquitto_tls_config(out_dir: Path, centre: str, ca_dir: Path, server_cert: Path,
                               server_key: Path, port: int = DEFAULT_TLS_PORT, *,
                               identities: BrokerIdentities | None = None,
                               share_groups: Sequence[str] = (),
                               plugin_path: Path | str | None = None,
                               bind_address: str | None = None,
                               persistence_dir: Path | None = None,
                               run_as_user: str | None = None,
                               max_packet_bytes: int = MAX_PACKET_BYTES,
                               log_dest: str = "stderr") -> MosquittoTLSConfig:
    """Write ``mosquitto.conf`` and ``dynamic-security.json`` for ``centre``'s broker.

    ``ca_dir`` needs ``ca.pem`` and ``crl.pem`` (on a broker host, copy those two from the CA
    directory; never ``ca.key``); the config points at them in place, so after ``revoke``
    (which rewrites ``crl.pem``) restarting the broker is enough. ``identities`` are the
    clients the broker gives rights to (default: what the CA in ``ca_dir`` issued and has not
    revoked, when ``ca_dir`` is the CA's own folder). ``share_groups`` are the gateway's
    configured share groups besides the default one. ``plugin_path`` is the dynamic-security
    plugin on the broker host (default: found on this machine, PKIError if it is not).
    ``bind_address`` limits the listener to one interface (all interfaces by default).
    ``run_as_user`` is the account Mosquitto switches to when started as root (its default is
    ``mosquitto``, which must be able to read the rules and write the persistence directory).
    Every file and folder gets an explicit mode whatever the umask. Returns the paths written.
    """
    if not ID_PATTERN.match(centre):
        raise PKIError(f"centre {centre!r} is not a valid id (must match {ID_PATTERN.pattern})")
    if not 0 < port < 65536:
        raise PKIError(f"port must be 1..65535, got {port}")
    if max_packet_bytes < MAX_COMMAND_BYTES:
        raise PKIError(f"max_packet_bytes {max_packet_bytes} is below the largest command a "
                       f"gate accepts ({MAX_COMMAND_BYTES} bytes)")
    ca_dir = Path(ca_dir)
    for needed in (CA_CERT, CRL_FILE):
        if not (ca_dir / needed).exists():
            raise PKIError(f"{ca_dir / needed} does not exist (ca_dir must hold {CA_CERT} and "
                           f"{CRL_FILE} from the centre CA)")
    _check_server_files(load_certificate(ca_dir / CA_CERT), Path(server_cert), Path(server_key))
    if identities is None:
        identities = _identities_from(ca_dir)
    plugin = Path(plugin_path) if plugin_path is not None else find_dynsec_plugin()
    out = make_dirs(Path(out_dir))
    persistence = Path(persistence_dir) if persistence_dir else out / "data"
    make_dirs(persistence, PRIVATE_DIR_MODE)
    dynsec_path = write_dynsec_file(out / DYNSEC_FILE, centre, identities, share_groups)
    config_path = out / "mosquitto.conf"

    listener = f"listener {port}" + (f" {bind_address}" if bind_address else "")
    lines = [
        f"# Mosquitto 2.x config for Gerbang centre {centre}; generated by",
        "# provisioning.broker_config.write_mosquitto_tls_config, do not edit by hand.",
        "# Mutual TLS only: a client needs a certificate from the centre CA that is not revoked.",
        "# crl.pem and dynamic-security.json are read at start only: restart the broker after",
        "# revoking a certificate or issuing a new one.",
        "per_listener_settings false",
        "allow_anonymous false",
        "# Who may publish, receive and SUBSCRIBE to what: one role per certificate CN",
        "# (dynamic-security plugin; acl_file would grant every subscription).",
        f"plugin {_path_value('plugin', plugin)}",
        f"plugin_opt_config_file {_path_value('dynsec', dynsec_path)}",
        *([f"user {run_as_user}"] if run_as_user else []),
        "# The largest legitimate message is a 16 MiB command; the broker drops a client that",
        "# sends anything larger.",
        f"max_packet_size {max_packet_bytes}",
        "",
        "persistence true",
        f"persistence_location {_path_value('persistence', persistence)}/",
        "# Save every 10 s and at shutdown, so a restart keeps the gateway's queued messages.",
        "autosave_interval 10",
        "# Bound queues by memory, not by Debian's default of 100 messages per offline client.",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "",
        listener,
        "protocol mqtt",
        f"cafile {_path_value('cafile', ca_dir / CA_CERT)}",
        f"crlfile {_path_value('crlfile', ca_dir / CRL_FILE)}",
        f"certfile {_path_value('certfile', Path(server_cert))}",
        f"keyfile {_path_value('keyfile', Path(server_key))}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "",
        "connection_messages true",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        f"log_dest {log_dest}",
        "",
    ]
    write_file(config_path, "\n".join(lines), 0o644)
    return MosquittoTLSConfig(config_path=config_path, dynsec_path=dynsec_path,
                              persistence_dir=persistence, port=port, plugin_path=plugin)
