"""MQTT ingest: device topics → validated events → the store, acknowledged only after commit.

paho's manual acknowledgement is on: the broker gets our PUBACK for an event only once the
event's transaction has committed. If the gateway is killed between receipt and commit, the
broker (persistent session) delivers the message again; ``event_id`` makes that harmless.

The receive path is kept short because it is what limits ingest: paho's network thread only
hands each message to a queue; the writer thread validates a whole batch, stores it in one
transaction, then acknowledges it. Several workers (processes, each with its own ``Ingest``) can
share one stream through an MQTT shared subscription (``share_group``); see docs/gateway.md.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from gateway.identity import log_refused_subscriptions, watch_session
from gateway.store import Store
from gerbang import wire
from gerbang.config import BrokerConfig
from gerbang.mqtt import connect_async, make_client

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The share group the workers of one gateway join when several are run and none is named.
DEFAULT_SHARE_GROUP = "gerbang-ingest"

#: What the gateway subscribes to under each device, and at which QoS.
_LEAVES = (("events", 1), ("status", 1), ("alarms", 1), ("telemetry", 0))


@functools.lru_cache(maxsize=4096)
def _topic_parts(topic: str) -> wire.TopicParts:
    """``wire.parse_topic``, remembered: a centre has a few hundred distinct topics and every
    message names one of them. A bad topic raises every time (exceptions are not cached)."""
    return wire.parse_topic(topic)


def _nul_field(payload: bytes, parsed: Any) -> str | None:
    """The name of a text field holding a NUL character, if any.

    The wire contract allows free text in a few fields (``applicant_id``, ``frame_ref``, an
    alarm's ``detail``); PostgreSQL refuses NUL in text, so such an event could never be stored
    and would stall the ingest retrying it. JSON can only carry NUL escaped, hence the cheap
    test on the raw bytes first."""
    if b"\\u0000" not in payload:
        return None
    for name, value in vars(parsed).items():
        if isinstance(value, str) and "\x00" in value:
            return name
    return None


def _from_sender(message: Any, parts: Any, payload: bytes) -> Any:
    """``message`` if its device and centre are its topic's and no text holds a NUL; else
    WireError. A device may only speak for itself: the topic is what the broker's ACL checks
    against the device's certificate, the payload is only what the device claims."""
    if (message.device_id, message.centre) != (parts.device, parts.centre):
        raise wire.WireError(f"device_id/centre {message.device_id}/{message.centre} "
                             f"does not match topic {parts.centre}/{parts.device}")
    nul = _nul_field(payload, message)
    if nul:
        raise wire.WireError(f"{nul}: contains a NUL character")
    return message


@dataclass
class IngestStats:
    """Counters since start, for /api/stats and the demo summary."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


class Ingest:
    """Subscribes to every device of a centre and writes their events in batches.

    One writer thread owns all writes: batching many events per transaction is what lets SQLite
    keep up with a whole centre's doors opening at once.
    """

    def __init__(self, store: Store, broker: BrokerConfig, client_id: str = "gerbang-gateway",
                 centre: str = "+", batch_max: int = 500, share_group: str | None = None,
                 retire: bool = False) -> None:
        self.store = store
        self.broker = broker
        self.centre = centre
        #: With a group name, several gateway workers split the event stream between them
        #: (MQTT shared subscription ``$share/{group}/…``): each event goes to one worker.
        self.share_group = share_group
        #: Retiring: subscribe to nothing, only store what the broker still holds for this
        #: client id's session (a worker leaving a share group; see ``end_session``).
        self.retire = retire
        self.batch_max = batch_max
        self.stats = IngestStats()
        #: Messages of any kind handled so far (the writer's progress).
        self.messages = 0
        self.changed = threading.Condition()  # notified after each commit (live dashboard)
        # SimpleQueue (C, no per-put condition variable): paho's network thread does nothing
        # else per message, and it is the busiest thread of the gateway.
        self._queue: queue.SimpleQueue[mqtt.MQTTMessage | None] = queue.SimpleQueue()
        self.client = make_client(client_id, broker, persistent_session=True)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        watch_session(self.client, client_id)  # ERROR when the broker took our session away
        put = self._queue.put
        self.client.on_message = lambda client, userdata, msg: put(msg)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                        daemon=True)
        self.connected = threading.Event()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason.is_failure:
            log.error("broker refused the gateway: %s", reason)
            return
        filters = [wire.subscription(self.centre, leaf) for leaf, _ in _LEAVES]
        if self.retire:
            groups = {DEFAULT_SHARE_GROUP, self.share_group} - {None}
            client.unsubscribe([*filters, *(f"$share/{g}/{f}" for g in sorted(groups)
                                            for f in filters)])
            return
        # The persistent session remembers the subscriptions of a previous run. A worker that
        # ran alone before (or in the default group) must drop them, or it would also receive
        # every event (or a second share of them) besides what it asks for now.
        stale = filters if self.share_group else []
        if self.share_group != DEFAULT_SHARE_GROUP:
            stale = [*stale, *(f"$share/{DEFAULT_SHARE_GROUP}/{f}" for f in filters)]
        client.unsubscribe(stale)
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        client.subscribe([(prefix + f, qos) for f, (_, qos) in zip(filters, _LEAVES,
                                                                     strict=True)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any = None) -> None:
        # Ready only once the broker has confirmed the subscription: anything published
        # before that would not be routed to us.
        log_refused_subscriptions(client, reasons)
        log.info("gateway subscribed at %s:%s", self.broker.host, self.broker.port)
        self.connected.set()

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                        properties: Any = None) -> None:
        if self.retire:
            log.info("retiring worker left its subscriptions at %s:%s", self.broker.host,
                     self.broker.port)
            self.connected.set()

    def _classify(self, msg: mqtt.MQTTMessage) -> tuple[str, Any]:
        """('event', CheckinEvent) | ('status', (parts, dict)) | ('reject', reason)."""
        try:
            parts = _topic_parts(msg.topic)
            if parts.leaf == "events":
                return "event", _from_sender(wire.parse_event(msg.payload), parts, msg.payload)
            if parts.leaf in ("status", "telemetry"):
                if len(msg.payload) > wire.MAX_PAYLOAD_BYTES:
                    raise wire.WireError(f"{parts.leaf} payload larger than "
                                         f"{wire.MAX_PAYLOAD_BYTES} bytes")
                body = json.loads(msg.payload or b"{}")
                if not isinstance(body, dict):
                    raise wire.WireError(f"{parts.leaf} payload must be a JSON object")
                return parts.leaf, (parts, body)
            if parts.leaf == "alarms":
                return "alarm", _from_sender(wire.parse_alarm(msg.payload), parts, msg.payload)
            raise wire.WireError(f"topic leaf {parts.leaf!r} is not something the gateway "
                                 "ingests")
        except (wire.WireError, ValueError) as exc:
            return "reject", str(exc)

    def _write_loop(self) -> None:
        get = self._queue.get
        while True:
            msg = get()
            if msg is None:
                return
            batch = [msg]
            stopping = False
            while len(batch) < self.batch_max:
                try:
                    nxt = get(block=False)
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            try:
                self._commit(batch)
            except Exception:
                # Not expected (store errors are retried in _commit), but the writer must not
                # die quietly: the batch stays unacknowledged, so the broker redelivers it.
                log.exception("ingest batch of %d messages failed; left unacknowledged",
                              len(batch))
            if stopping:
                return

    @staticmethod
    def _stored(what: str, write: Callable[[], T]) -> T:
        """``write()``, retried until it succeeds. Nothing is acknowledged until stored, so
        waiting is safe: a locked database (another worker's transaction outlasting
        busy_timeout) or a full disk is usually transient, and if we die here the broker
        redelivers to the next gateway."""
        delay = 0.1
        while True:
            try:
                return write()
            except Exception:
                log.exception("could not store %s; retrying in %.1fs", what, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _commit(self, batch: list[mqtt.MQTTMessage]) -> None:
        events, alarms = [], []
        store = self.store
        for msg in batch:
            kind, value = self._classify(msg)
            if kind == "event":
                events.append(value)
            elif kind == "alarm":
                alarms.append(value)
            elif kind == "status":
                parts, status = value
                self._stored("a status", lambda p=parts, s=status: store.record_status(
                    p.device, p.centre, s))
            elif kind == "telemetry":
                parts, telemetry = value
                self._stored("telemetry", lambda p=parts, t=telemetry: store.record_telemetry(
                    p.device, p.centre, t))
            else:
                self.stats.rejected += 1
                log.warning("rejected message on %s: %s", msg.topic[:120], value)
                self._stored("a reject", lambda t=msg.topic, e=value: store.record_reject(t, e))
        new = self._stored(f"{len(events)} events",
                           lambda: store.insert_events(events)) if events else 0
        if alarms:
            self._stored(f"{len(alarms)} alarms", lambda: store.record_alarms(alarms))
        self.messages += len(batch)
        self.stats.received += len(events)
        self.stats.stored += new
        self.stats.duplicates += len(events) - new
        for msg in batch:
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
        with self.changed:
            self.changed.notify_all()

    def send_command(self, centre: str, device_id: str, name: str, payload: dict[str, Any],
                     command_id: str | None = None) -> mqtt.MQTTMessageInfo:
        """Publish a command to one gate (QoS 1; the broker keeps it for a gate that is
        offline, in its persistent session). The gate answers on ``cmd_ack`` with
        ``command_id``. Returns paho's message info (``wait_for_publish`` for the PUBACK)."""
        body = {"schema": wire.SCHEMA_VERSION, "command": name, **payload}
        if command_id is not None:
            body["command_id"] = command_id
        return self.client.publish(wire.device_topic(centre, device_id, f"cmd/{name}"),
                                   json.dumps(body, separators=(",", ":")), qos=1)

    def pending(self) -> bool:
        """Whether messages are waiting for the writer."""
        return not self._queue.empty()

    def start(self) -> None:
        """Start the writer and connect (reconnecting by itself after a broker restart)."""
        self._writer.start()
        connect_async(self.client, self.broker, persistent_session=True)

    def stop(self) -> None:
        """Finish the queued batch, then disconnect."""
        self._queue.put(None)
        self._writer.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()


def end_session(client_id: str, broker: BrokerConfig, timeout: float = 10.0) -> None:
    """Connect once as ``client_id`` with a clean session and leave: the broker forgets the
    session. Only for a worker that has retired (its backlog stored, its subscriptions gone):
    whatever the session still held would be dropped."""
    client = make_client(client_id, broker, persistent_session=False)
    done = threading.Event()
    refused: list[Any] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any = None) -> None:
        if reason.is_failure:
            refused.append(reason)
        done.set()

    client.on_connect = on_connect
    connect_async(client, broker, persistent_session=False)
    try:
        if not done.wait(timeout):
            raise TimeoutError(f"could not reach the broker as {client_id} within {timeout}s")
        if refused:
            raise ConnectionError(f"the broker refused {client_id}: {refused[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
