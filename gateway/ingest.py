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
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from gateway.admission import DEFAULT_CLOCK_SKEW_S, Admission
from gateway.identity import log_refused_subscriptions, watch_session
from gateway.store import Store, reject_key
from gerbang import wire
from gerbang.config import BrokerConfig
from gerbang.mqtt import connect_async, make_client

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The share group the workers of one gateway join when several are run and none is named.
DEFAULT_SHARE_GROUP = "gerbang-ingest"

#: What the gateway subscribes to under each device, and at which QoS.
_LEAVES = (("events", 1), ("status", 1), ("alarms", 1), ("telemetry", 0), ("cmd_ack", 1))
#: Leaves every worker subscribes to itself, never through the share group: a gate's birth
#: must reach the worker that judges the events published after it (gateway/admission.py),
#: and the broker keeps one client's messages in order only within one subscriber's queue.
_PLAIN_LEAVES = ("status",)
#: At most one status and one telemetry write per device per this many seconds; the latest
#: message wins and is written when the interval has passed (a gate cannot make the gateway
#: write faster than this, whatever it sends).
DEVICE_WRITE_INTERVAL_S = 1.0
#: A status that changes a gate's state (online / offline) is written at once, not after the
#: interval, up to this many times per gate per ``STATE_CHANGE_WINDOW_S``: the offline alert
#: must not wait, and a gate flapping on purpose still cannot write faster than that.
STATE_CHANGES_PER_WINDOW = 20
STATE_CHANGE_WINDOW_S = 10.0
#: A raw rejected message of one (device, leaf, kind) is kept as a sample (and logged) at most
#: this often; every one of them is counted.
REJECT_SAMPLE_EVERY_S = 10.0


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


def _cmd_ack(payload: bytes, parts: Any) -> dict[str, Any]:
    """A gate's command acknowledgement (``device/uplink/commands.py`` ``CommandResult``), checked
    enough to be recorded: a JSON object with a ``command`` name."""
    if len(payload) > wire.MAX_PAYLOAD_BYTES:
        raise wire.WireError(f"cmd_ack payload larger than {wire.MAX_PAYLOAD_BYTES} bytes")
    try:
        body = json.loads(payload or b"{}")
    except (ValueError, RecursionError) as exc:
        raise wire.WireError(f"cmd_ack payload is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("command"), str):
        raise wire.WireError("cmd_ack: command missing or not a string")
    return body


#: ``cmd_ack`` command ids of the gateway's own resend requests: ``rs-<request id>``.
RESEND_ID = re.compile(r"^rs-(\d{1,18})$")
_NOT_KEPT = re.compile(r"(\d+)[^\d;,.]{0,40}?(?:no longer|not) kept", re.IGNORECASE)


def not_kept_count(detail: str) -> int | None:
    """How many seqs of a resend range the gate says it no longer keeps, from its ``cmd_ack``
    detail (e.g. "re-queued 3; 2 no longer kept"); None when the detail does not say."""
    match = _NOT_KEPT.search(detail or "")
    if match:
        return int(match.group(1))
    if re.search(r"(?:no longer|not) kept", detail or "", re.IGNORECASE):
        return -1  # "none of them kept", without a number
    return None


@dataclass
class IngestStats:
    """Counters since start, for /api/stats and the demo summary."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    #: Events stored but refused at admission (gateway/admission.py): not in attendance.
    refused: int = 0


class Ingest:
    """Subscribes to every device of a centre and writes their events in batches.

    One writer thread owns all writes: batching many events per transaction is what lets SQLite
    keep up with a whole centre's doors opening at once. The same thread judges each event's
    admission (gateway/admission.py) in the order the broker delivered the batch, so a birth
    seen earlier in a batch counts for the events after it.
    """

    def __init__(self, store: Store, broker: BrokerConfig, client_id: str = "gerbang-gateway",
                 centre: str = "+", batch_max: int = 500, share_group: str | None = None,
                 retire: bool = False, clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.broker = broker
        self.centre = centre
        self.client_id = client_id
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
        #: Wall clock (seconds since the epoch) for receive times; tests may shift it.
        self.clock = clock
        self.admission = Admission(store, clock_skew_s, actor=f"gateway:{client_id}")
        #: When this process's current broker connection began (wall clock), None while down.
        self.connected_since: float | None = None
        #: device -> when its latest birth was received (wall clock); absent = offline/unknown.
        self._online_since: dict[str, float] = {}
        #: Status / telemetry waiting for their device's write interval: device -> (centre, doc)
        self._pending: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
            "status": {}, "telemetry": {}}
        self._last_write: dict[tuple[str, str], float] = {}
        self._written_state: dict[str, str] = {}
        self._state_writes: dict[str, list[float]] = {}
        self._sampled: dict[tuple[str, str, str], float] = {}
        self._known_streams: set[tuple[str, str]] = set()
        # SimpleQueue (C, no per-put condition variable): paho's network thread does nothing
        # else per message, and it is the busiest thread of the gateway.
        self._queue: queue.SimpleQueue[mqtt.MQTTMessage | None] = queue.SimpleQueue()
        self.client = make_client(client_id, broker, persistent_session=True)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
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
        self.connected_since = self.clock()
        filters = {leaf: wire.subscription(self.centre, leaf) for leaf, _ in _LEAVES}
        qos = dict(_LEAVES)
        if self.retire:
            groups = {DEFAULT_SHARE_GROUP, self.share_group} - {None}
            client.unsubscribe([*filters.values(), *(f"$share/{g}/{f}" for g in sorted(groups)
                                                     for f in filters.values())])
            return
        shared = [leaf for leaf in filters if leaf not in _PLAIN_LEAVES]
        # The persistent session remembers the subscriptions of a previous run. A worker that
        # ran alone before (or in the default group) must drop them, or it would also receive
        # every event (or a second share of them) besides what it asks for now.
        stale = [filters[leaf] for leaf in shared] if self.share_group else []
        groups = {DEFAULT_SHARE_GROUP} - {self.share_group}
        if self.share_group:
            groups.add(self.share_group)  # its plain-only leaves, once shared
        stale += [f"$share/{g}/{filters[leaf]}" for g in sorted(groups) for leaf in filters
                  if g != self.share_group or leaf in _PLAIN_LEAVES]
        client.unsubscribe(stale)
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        client.subscribe([((prefix if leaf in shared else "") + f, qos[leaf])
                          for leaf, f in filters.items()])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        # While away, nothing can be judged "stale": whatever arrives after the reconnect may
        # have waited in the broker for us.
        self.connected_since = None

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
        """('event', CheckinEvent) | ('alarm', AlarmEvent) | ('status' / 'telemetry' /
        'cmd_ack', (parts, dict)) | ('reject', reason). Status and telemetry are stored only
        as ``wire.parse_status`` / ``wire.parse_telemetry`` return them."""
        try:
            parts = _topic_parts(msg.topic)
            if parts.leaf == "events":
                return "event", _from_sender(wire.parse_event(msg.payload), parts, msg.payload)
            if parts.leaf == "status":
                status = wire.parse_status(msg.payload)
                if status.get("device_id", parts.device) != parts.device:
                    raise wire.WireError(f"device_id {status['device_id']} does not match "
                                         f"topic {parts.centre}/{parts.device}")
                return "status", (parts, status)
            if parts.leaf == "telemetry":
                return "telemetry", (parts, wire.parse_telemetry(msg.payload))
            if parts.leaf == "alarms":
                return "alarm", _from_sender(wire.parse_alarm(msg.payload), parts, msg.payload)
            if parts.leaf == "cmd_ack":
                return "cmd_ack", (parts, _cmd_ack(msg.payload, parts))
            raise wire.WireError(f"topic leaf {parts.leaf!r} is not something the gateway "
                                 "ingests")
        except (wire.WireError, ValueError) as exc:
            return "reject", str(exc)

    def _write_loop(self) -> None:
        get = self._queue.get
        self._between_batches()  # the admission lookups, before the first event is judged
        while True:
            try:
                # Wake up now and then without traffic: coalesced device writes fall due,
                # and the admission lookups are refreshed between batches.
                msg = get(timeout=0.5)
            except queue.Empty:
                self._between_batches()
                continue
            if msg is None:
                self._flush_device_writes(force=True)
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
            self._between_batches()
            if stopping:
                self._flush_device_writes(force=True)
                return

    def _between_batches(self) -> None:
        try:
            self._flush_device_writes()
            self.admission.refresh()
        except Exception:
            log.exception("device writes / admission refresh failed; will retry")

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

    def _saw_status(self, device: str, status: dict[str, Any], received: float) -> None:
        """Track whether a gate is connected, for admission (in delivery order)."""
        if status.get("state") == "online":
            self._online_since[device] = received
        else:
            self._online_since.pop(device, None)

    def _fills_gap(self, event: wire.CheckinEvent) -> bool:
        """Whether ``event``'s seq is in a range the gateway recorded as missing for its
        stream (a re-sent event); read from the store, as another process records gaps."""
        try:
            ranges = self.store.missing_ranges(event.device_id, event.stream or "")
        except Exception:
            log.exception("could not read the missing ranges of %s", event.device_id)
            return True  # unknown: do not refuse on a guess
        return any(r[0] <= event.seq <= r[1] for r in ranges)

    def _commit(self, batch: list[mqtt.MQTTMessage]) -> None:
        events: list[wire.CheckinEvent] = []
        verdicts: list[str | None] = []
        alarms: list[wire.AlarmEvent] = []
        acks: list[tuple[int, str, bool, str, int | None]] = []
        rejects: dict[tuple[str, str, str], list[Any]] = {}
        samples: list[tuple[str, str, float]] = []
        store = self.store
        wall, mono = self.clock(), time.monotonic()
        judge, since = self.admission.judge, self.connected_since
        online = self._online_since
        for msg in batch:
            kind, value = self._classify(msg)
            # paho stamps each message with time.monotonic() when it arrives.
            received = wall - (mono - msg.timestamp) if msg.timestamp else wall
            if kind == "event":
                events.append(value)
                verdicts.append(judge(value, received, online.get(value.device_id), since,
                                      self._fills_gap))
            elif kind == "alarm":
                alarms.append(value)
            elif kind in ("status", "telemetry"):
                parts, doc = value
                if kind == "status":
                    self._saw_status(parts.device, doc, received)
                self._pending[kind][parts.device] = (parts.centre, doc)
            elif kind == "cmd_ack":
                parts, body = value
                match = RESEND_ID.match(str(body.get("command_id") or ""))
                if body["command"] == "resend" and match:
                    detail = str(body.get("detail") or "")[:300]
                    # a structured count if the gate gives one, else what the detail says
                    gone = body.get("not_kept")
                    if isinstance(gone, bool) or not isinstance(gone, int):
                        gone = not_kept_count(detail)
                    acks.append((int(match.group(1)), parts.device, bool(body.get("ok")),
                                 detail, gone))
            else:
                self.stats.rejected += 1
                key = reject_key(msg.topic, value)
                entry = rejects.get(key)
                if entry is None:
                    rejects[key] = [1, received, received, value]
                else:
                    entry[0] += 1
                    entry[2], entry[3] = received, value
                if mono - self._sampled.get(key, -1e9) >= REJECT_SAMPLE_EVERY_S:
                    self._sampled[key] = mono
                    samples.append((msg.topic, value, received))
                    log.warning("rejected message on %s: %s (counted; the same kind from "
                                "this gate is logged at most every %.0f s)", msg.topic[:120],
                                value, REJECT_SAMPLE_EVERY_S)
        if events:
            self._register_streams((e.device_id, e.stream or "", e.centre) for e in events)
            new = self._stored(f"{len(events)} events",
                               lambda: store.insert_events(events, verdicts))
            if new < len(events):
                self._check_conflicts(events)
        else:
            new = 0
        if alarms:
            self._register_streams((a.device_id, a.stream or "", a.centre) for a in alarms)
            self._stored(f"{len(alarms)} alarms", lambda: store.record_alarms(alarms))
        if rejects:
            rows = [(d, leaf, k, n, first, last, err)
                    for (d, leaf, k), (n, first, last, err) in rejects.items()]
            self._stored("rejects", lambda: store.record_rejects(rows, samples))
        for request_id, device, ok, detail, gone in acks:
            self._stored("a resend answer", lambda r=request_id, d=device, o=ok, t=detail,
                         g=gone: store.record_resend_ack(r, d, o, t, g))
        self._flush_device_writes()
        self.messages += len(batch)
        self.stats.received += len(events)
        self.stats.stored += new
        self.stats.duplicates += len(events) - new
        self.stats.refused += sum(1 for v in verdicts if v is not None)
        for msg in batch:
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
        with self.changed:
            self.changed.notify_all()

    def _register_streams(self, streams: Iterable[tuple[str, str, str]]) -> None:
        """Tell the seq watcher about outbox streams this process has not seen yet (one small
        write the first time only)."""
        known = self._known_streams
        new = {(d, s, c) for d, s, c in streams if (d, s) not in known}
        if new:
            self._stored("new outbox streams", lambda: self.store.register_streams(new))
            known.update((d, s) for d, s, _ in new)

    def _check_conflicts(self, events: list[wire.CheckinEvent]) -> None:
        """A batch had events already stored: a redelivery has the same content; an event id
        reused with other content is kept out (the stored event stands) and alerted."""
        conflicts = self._stored("an event id check",
                                 lambda: self.store.event_conflicts_among(events))
        if conflicts:
            for event_id, device, fields in conflicts:
                log.error("gate %s sent event_id %s again with other content (%s); the stored "
                          "event is kept", device, event_id, fields)
            self._stored("event id conflicts",
                         lambda: self.store.record_event_conflicts(conflicts))

    def _state_change_due(self, device: str, doc: dict[str, Any], now: float) -> bool:
        """Whether a status changing the gate's state may be written before its interval."""
        if doc.get("state") == self._written_state.get(device):
            return False
        recent = [t for t in self._state_writes.get(device, []) if now - t < STATE_CHANGE_WINDOW_S]
        self._state_writes[device] = recent
        return len(recent) < STATE_CHANGES_PER_WINDOW

    def _flush_device_writes(self, force: bool = False) -> None:
        """Write the latest status / telemetry of each device whose write interval passed (or
        whose state changed)."""
        now = time.monotonic()
        for leaf, pending in self._pending.items():
            due = [d for d, (_, doc) in pending.items() if force or now - self._last_write.get(
                (d, leaf), -1e9) >= DEVICE_WRITE_INTERVAL_S or (
                leaf == "status" and self._state_change_due(d, doc, now))]
            for device in due:
                centre, doc = pending.pop(device)
                self._last_write[(device, leaf)] = now
                if leaf == "status":
                    self._written_state[device] = str(doc.get("state"))
                    self._state_writes.setdefault(device, []).append(now)
                    self._stored("a status", lambda d=device, c=centre, s=doc:
                                 self.store.record_status(d, c, s))
                else:
                    self._stored("telemetry", lambda d=device, c=centre, t=doc:
                                 self.store.record_telemetry(d, c, t))

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
