"""One way to build a paho-mqtt client for Gerbang, so device and gateway speak the same dialect.

TLS comes from the broker config: with ``[broker] ca_file`` (and ``cert_file``/``key_file`` for
mutual TLS) every client made here connects over TLS 1.2+ and checks the broker's certificate
against the centre CA and the broker's name, so the device uplink and the gateway ingest need no
TLS code of their own.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gerbang.config import BrokerConfig

log = logging.getLogger(__name__)


def make_client(client_id: str, broker: BrokerConfig, *, persistent_session: bool) -> mqtt.Client:
    """A paho client configured for ``broker`` (MQTT 5 or 3.1.1), not yet connected.

    ``persistent_session`` asks the broker to keep subscriptions and QoS 1 messages across
    reconnects (clean-start false), which the gateway wants so nothing published while it
    restarts is lost in the broker. With ``broker.ca_file`` set the client connects over TLS
    (``BrokerConfig.tls_context``: TLS 1.2+, the centre CA only, the broker's name checked,
    the client certificate when configured).
    """
    if broker.protocol == 5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=not persistent_session)
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    context = broker.tls_context()
    if context is not None:
        client.tls_set_context(context)
    # Back off 1..30 s between reconnect attempts: fast after a broker restart, gentle when down.
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.enable_logger(logging.getLogger(f"paho.{client_id}"))
    return client


def connect_async(client: mqtt.Client, broker: BrokerConfig, *, persistent_session: bool) -> None:
    """Start connecting in the background; paho's network thread reconnects by itself after loss."""
    if broker.protocol == 5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        if persistent_session:
            props.SessionExpiryInterval = 24 * 3600  # keep the session a whole exam day
        client.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s,
                             clean_start=not persistent_session, properties=props)
    else:
        client.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s)
    client.loop_start()
