"""The gateway's MQTT identity over mutual TLS: one certificate, one client id, per process.

A centre's broker takes every client's id from its certificate CN
(``use_username_as_clientid``), and two connections with one client id knock each other off:
the newer one takes over the session ("Session taken over", MQTT 5 reason code 0x8E). So:

- with ``[broker] cert_file`` set, the ingest's client id *is* that certificate's CN
  (``gateway``), whatever ``[gateway] client_id`` says (it is logged once at start);
- with ``ingest_workers`` = N > 1, worker n (2..N) uses its own certificate next to
  ``cert_file``, named ``<stem>-<n><suffix>`` (``gateway.pem`` → ``gateway-2.pem``,
  ``gateway.key`` → ``gateway-2.key``; ``gerbang-provision gateway-cert --workers N`` makes
  them), and its client id is that certificate's CN (``gateway-2``);
- ``run`` refuses to start (exit 2, one line) when a worker's certificate is missing or has the
  CN of another worker; ``run --retire --client-id gateway-2`` connects with worker 2's
  certificate and refuses anything that would connect as the main gateway's identity (it would
  take over, then end, the running gateway's session).

Without a client certificate (plain MQTT: the demo, the tests, a bench) nothing changes: the
configured client ids are used as they are.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gerbang.config import BrokerConfig, ConfigError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.identity")

#: MQTT 5 DISCONNECT reason code "Session taken over": another connection with our client id.
SESSION_TAKEN_OVER = 0x8E


def certificate_cn(path: Path) -> str:
    """The Common Name of the PEM certificate at ``path``; ConfigError naming the file."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"broker.cert_file: cannot read the certificate {path} ({exc})"
                          ) from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ConfigError(f"broker.cert_file: {path} must have exactly one CN, has {len(names)}")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def worker_files(cert_file: Path, key_file: Path, worker: int) -> tuple[Path, Path]:
    """Worker ``worker``'s certificate and key next to the main ones: ``<stem>-<n><suffix>``."""
    return (cert_file.with_name(f"{cert_file.stem}-{worker}{cert_file.suffix}"),
            key_file.with_name(f"{key_file.stem}-{worker}{key_file.suffix}"))


def _make_command(workers: int) -> str:
    return (f"`gerbang-provision gateway-cert --workers {workers}` (copy gateway-N.pem and "
            "gateway-N.key next to cert_file, keys owned by the service user, mode 0600)")


def _worker_broker(broker: BrokerConfig, worker: int, workers: int) -> BrokerConfig:
    """``broker`` with worker ``worker``'s certificate and key (both must exist and match)."""
    assert broker.cert_file is not None and broker.key_file is not None
    cert, key = worker_files(broker.cert_file, broker.key_file, worker)
    for field, path in (("cert_file", cert), ("key_file", key)):
        if not path.is_file():
            raise ConfigError(f"broker.{field}: ingest worker {worker} needs its own "
                              f"certificate, and {path} does not exist; make it with "
                              f"{_make_command(max(workers, worker))}")
    return dataclasses.replace(broker, cert_file=cert, key_file=key)  # validates the pair


def _requested_worker(requested: str, main_cn: str) -> int | None:
    """n when ``requested`` is ``<main CN>-<n>`` (how ``run`` names worker n), else None."""
    match = re.fullmatch(re.escape(main_cn) + r"-([0-9]{1,2})", requested)
    return int(match.group(1)) if match and int(match.group(1)) >= 2 else None


def resolve_mqtt_identity(config: GatewayConfig, *, workers: int, worker: bool,
                          ) -> GatewayConfig:
    """``config`` with the client id (and, for a worker, the certificate) this process must use.

    ``workers`` is how many ingest processes this ``run`` starts (itself and its children);
    ``worker`` is true for a worker child (``--worker-of``) and for ``--retire``, whose
    ``[gateway] client_id`` (``--client-id``) names the worker. ConfigError (exit 2) when a
    worker's certificate is missing, two workers would share a CN, or a worker would connect
    as the main gateway's identity.
    """
    broker, gw = config.broker, config.gateway
    if broker.cert_file is None or broker.key_file is None:
        return config  # plain MQTT or server-only TLS: the configured client ids stand
    main_cn = certificate_cn(broker.cert_file)
    if not worker:
        seen = {main_cn: broker.cert_file}
        for n in range(2, workers + 1):
            other = _worker_broker(broker, n, workers)
            assert other.cert_file is not None
            cn = certificate_cn(other.cert_file)
            if cn in seen:
                raise ConfigError(f"broker.cert_file: ingest worker {n}'s certificate "
                                  f"{other.cert_file} has CN {cn!r}, like {seen[cn]}: each "
                                  "worker needs its own identity or they take over each "
                                  f"other's session; make them with {_make_command(workers)}")
            seen[cn] = other.cert_file
        if gw.client_id != main_cn:
            log.info("MQTT client id %s: the CN of %s ([gateway] client_id %r is not used: over "
                     "mutual TLS the broker takes the client id from the certificate)", main_cn,
                     broker.cert_file, gw.client_id)
        return dataclasses.replace(config, gateway=dataclasses.replace(gw, client_id=main_cn))
    n = _requested_worker(gw.client_id, main_cn)
    if n is None:
        raise ConfigError(f"gateway.client_id: {gw.client_id!r} is not an ingest worker of this "
                          f"gateway: over mutual TLS worker n connects as {main_cn}-n with its own "
                          f"certificate (e.g. --client-id {main_cn}-2 uses "
                          f"{worker_files(broker.cert_file, broker.key_file, 2)[0]}); "
                          f"{main_cn!r} itself is the running gateway, whose session this would "
                          "take over")
    other = _worker_broker(broker, n, n)
    assert other.cert_file is not None
    cn = certificate_cn(other.cert_file)
    if cn == main_cn:
        raise ConfigError(f"broker.cert_file: worker {n}'s certificate {other.cert_file} has "
                          f"the main gateway's CN {main_cn!r}: connecting with it would take "
                          "over the running gateway's session; make its own with "
                          f"{_make_command(n)}")
    log.info("MQTT client id %s: ingest worker %d, certificate %s", cn, n, other.cert_file)
    return dataclasses.replace(config, broker=other,
                               gateway=dataclasses.replace(gw, client_id=cn))


def watch_session(client: mqtt.Client, client_id: str) -> None:
    """Make ``client`` (the ingest's) say when the broker took its session away, and why.

    Call after ``client.on_connect`` and ``client.on_disconnect`` are set (both are wrapped).
    Logs an ERROR when the broker disconnects it with "Session taken over" (MQTT 5 reason code
    0x8E: another connection with the same client id, i.e. the same certificate), and when a
    reconnect finds the broker no longer holds the session this process had (CONNACK session-
    present false): someone connected with the same identity and a clean session, so what the
    broker queued for the gateway meanwhile is gone. Mosquitto 2.0.11 sends no 0x8E (measured:
    it closes the socket), so on it the second ERROR is the one that names the cause. Any other
    unexpected loss is a WARNING (paho reconnects by itself).
    """
    had_session = threading.Event()
    inner_connect = client.on_connect
    inner_disconnect = client.on_disconnect

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any = None) -> None:
        if not reason.is_failure:
            if had_session.is_set() and not getattr(flags, "session_present", True):
                log.error("the broker no longer had the session of %s when it reconnected: "
                          "another client connected with this client id, i.e. this "
                          "certificate, and a clean session (roster-push or config-push with "
                          "the gateway's certificate, a second ingest worker with it). What "
                          "the broker queued for the gateway meanwhile is lost; check the "
                          "gates' outbox positions. Only this process may use the "
                          "certificate: technicians have their own (`gerbang-provision "
                          "technician-cert`), each ingest worker too (`gateway-cert --workers "
                          "N`)", client_id)
            had_session.set()
        if inner_connect is not None:
            inner_connect(client, userdata, flags, reason, properties)

    def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any = None) -> None:
        value = getattr(reason, "value", reason)
        if value == SESSION_TAKEN_OVER:
            log.error("broker disconnected %s: Session taken over (0x8E): another client "
                      "connected with the same client id, i.e. the same certificate. Only this "
                      "process may use it: push tools need a technician certificate "
                      "(`gerbang-provision technician-cert`), each ingest worker its own "
                      "(`gateway-cert --workers N`)", client_id)
        elif value not in (0, None):
            log.warning("connection to the broker lost as %s (%s); reconnecting. If this "
                        "repeats every few seconds, another process connects with the same "
                        "certificate and the broker hands it this session", client_id, reason)
        if inner_disconnect is not None:
            inner_disconnect(client, userdata, flags, reason, properties)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect


def log_refused_subscriptions(client: mqtt.Client, reasons: Any) -> None:
    """ERROR when the broker refused a subscription (SUBACK ≥ 0x80): this identity, or its
    share group, is not in the broker's rules, and whatever the filter covers never arrives."""
    refused = [r for r in (reasons or []) if getattr(r, "value", r) >= 0x80]
    if refused:
        client_id = getattr(client, "_client_id", b"").decode(errors="replace")  # paho's own
        log.error("the broker refused %d of %d subscriptions of %s (%s): its certificate or "
                  "share group is not in the broker's rules; run `gerbang-provision "
                  "broker-config` (with --share-group for a configured share_group), install "
                  "it and restart the broker", len(refused), len(reasons), client_id,
                  ", ".join(sorted({str(r) for r in refused})))
