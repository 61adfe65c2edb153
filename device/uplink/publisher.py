"""The uplink: drains the outbox to the broker over MQTT QoS 1, deleting rows only after PUBACK.

Events go out in ``seq`` order with a bounded window in flight. When the connection drops, every
unacknowledged event is sent again from the oldest after reconnecting; a duplicate delivery is
harmless because the gateway stores by ``event_id``. The status topic carries a retained birth
message and a last-will ``offline`` so the gateway knows when a gate vanishes. The birth and
every telemetry message carry the outbox position (``wire.OUTBOX_FIELDS``), read fresh each
time, so the gateway can tell a loss from a gate that went quiet; the ``resend`` command
(:meth:`Uplink.resend`) publishes a range of kept rows again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from device.uplink.outbox import Outbox
from gerbang import wire
from gerbang.config import BrokerConfig
from gerbang.mqtt import connect_async, make_client

if TYPE_CHECKING:
    from device.uplink.commands import CommandResult

log = logging.getLogger(__name__)


class Uplink:
    """Background publisher of one device's outbox.

    ``window`` bounds messages awaiting PUBACK: enough to keep a LAN busy (about 1,000 events/s
    at 20 ms round trip), small enough that a reconnect re-sends little.
    """

    def __init__(self, outbox: Outbox, broker: BrokerConfig, centre: str, device_id: str,
                 birth: dict[str, Any] | None = None, window: int = 20,
                 on_command: Callable[[str, bytes], CommandResult] | None = None,
                 telemetry: Callable[[], dict[str, Any]] | None = None,
                 telemetry_interval_s: float = 30.0) -> None:
        self.outbox = outbox
        self.broker = broker
        self.window = window
        self.status_topic = wire.status_topic(centre, device_id)
        self.birth = birth or {}
        self.client = make_client(f"gerbang-dev-{device_id}", broker, persistent_session=True)
        self.client.will_set(self.status_topic, wire.status_payload(False, device_id=device_id),
                             qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.cmd_prefix = wire.device_topic(centre, device_id, "cmd/")
        self.cmd_ack_topic = wire.device_topic(centre, device_id, "cmd_ack")
        self.telemetry_topic = wire.telemetry_topic(centre, device_id)
        self.on_command = on_command
        self.telemetry = telemetry
        self.telemetry_interval_s = telemetry_interval_s
        self._commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=100)
        self._next_telemetry = 0.0
        self._lock = threading.Lock()  # guards the in-flight map shared with paho's thread
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._early_acks: dict[int, float] = {}  # mid -> when its PUBACK came
        self._acked: list[int] = []
        self._last_sent = -1
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self.published = 0  # PUBACKs received (this run)

    # paho callbacks (network thread) ------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason.is_failure:
            log.error("broker %s:%s refused connection: %s", self.broker.host, self.broker.port,
                      reason)
            return
        log.info("connected to broker %s:%s", self.broker.host, self.broker.port)
        client.publish(self.status_topic, self._birth_payload(), qos=1, retain=True)
        if self.on_command is not None:
            client.subscribe(self.cmd_prefix + "+", qos=1)
        with self._lock:
            self._inflight.clear()
            self._early_acks.clear()
            self._last_sent = -1  # re-send everything still unacknowledged, oldest first
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("lost broker connection (%s); events stay in the outbox", reason)
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            # MQTT 5 PUBACK >= 0x80 (e.g. "Not authorized": the broker's ACL refused the topic).
            # Not delivered: the event stays in the outbox and is re-sent after a reconnect;
            # outbox depth and this log line tell the technician the device is misconfigured.
            with self._lock:
                seq = self._inflight.pop(mid, None)
            log.error("broker refused event seq=%s (%s); kept in the outbox", seq, reason)
            return
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                # PUBACK can beat publish() returning its mid; _run settles it.
                self._early_acks[mid] = time.monotonic()
            else:
                self._acked.append(seq)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Commands are run on the uplink thread, not paho's: a wipe or an unlock must not stall
        # the network loop (keep-alives, PUBACKs).
        if msg.topic.startswith(self.cmd_prefix):
            try:
                self._commands.put_nowait((msg.topic[len(self.cmd_prefix):], msg.payload))
            except queue.Full:
                log.warning("command queue full; dropping %s", msg.topic[:120])
            self._wake.set()

    def _run_commands(self) -> None:
        while self.on_command is not None:
            try:
                name, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            result = self.on_command(name, payload)
            self.client.publish(self.cmd_ack_topic, result.to_json(), qos=1)

    def _send_telemetry(self) -> None:
        if self.telemetry is None or time.monotonic() < self._next_telemetry:
            return
        self._next_telemetry = time.monotonic() + self.telemetry_interval_s
        try:
            body = {"schema": wire.SCHEMA_VERSION, "ts": wire.utc_now_iso(),
                    **self.telemetry(), "outbox": self.outbox.position()}
            # QoS 0: a lost reading is replaced by the next one; never worth a queue.
            self.client.publish(self.telemetry_topic, json.dumps(body, separators=(",", ":")),
                                qos=0)
        except Exception:
            log.exception("telemetry failed")

    # uplink thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._connected.is_set():
                self._run_commands()
                self._send_telemetry()
            with self._lock:
                acked, self._acked = self._acked, []
            if acked:
                self.outbox.remove(acked)
                self.published += len(acked)
            if not self._connected.is_set():
                continue
            with self._lock:
                room = self.window - len(self._inflight)
                after = self._last_sent
            if room <= 0:
                continue
            for event in self.outbox.pending(after_seq=after, limit=room):
                # Not under self._lock: paho calls on_publish while holding its own message
                # mutex, which publish() also takes; holding both here could deadlock.
                info = self.client.publish(event.topic, event.payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # not connected after all; resume after reconnect
                with self._lock:
                    early = self._early_acks.pop(info.mid, None)
                    if early is not None and time.monotonic() - early < 10:
                        self._acked.append(event.seq)
                    else:
                        self._inflight[info.mid] = event.seq
                    self._last_sent = event.seq

    def _birth_payload(self) -> bytes:
        """The retained birth: the given details plus the outbox position as of now."""
        return wire.status_payload(True, **{**self.birth, "outbox": self.outbox.position()})

    def update_birth(self, birth: dict[str, Any]) -> None:
        """Replace the retained birth message (models or roster changed); re-published now if
        connected, else on the next connect (each time with the outbox position of then)."""
        self.birth = dict(birth)
        if self._connected.is_set():
            self.client.publish(self.status_topic, self._birth_payload(), qos=1, retain=True)

    def rewind(self, seq: int) -> None:
        """Make the next send pass start at ``seq`` again (rows re-queued by a resend)."""
        with self._lock:
            self._last_sent = min(self._last_sent, seq - 1)
        self._wake.set()

    def resend(self, body: dict[str, Any]) -> str:
        """The ``resend`` command: ``{"stream", "from_seq", "to_seq"}`` (inclusive, at most
        ``wire.RESEND_MAX_SPAN`` seqs) → the kept rows of that range are published again in
        seq order. Returns the acknowledgement; CommandError names a bad field."""
        from device.uplink.commands import CommandError
        from device.uplink.outbox import OutboxRangeError

        stream = body.get("stream")
        if not isinstance(stream, str) or not wire.STREAM_PATTERN.match(stream):
            raise CommandError("stream: required, the outbox stream id (16 lowercase hex)")
        bounds = []
        for name in ("from_seq", "to_seq"):
            value = body.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CommandError(f"{name}: required, a whole number >= 0")
            bounds.append(value)
        first, last = bounds
        if first > last:
            raise CommandError(f"to_seq: {last} is before from_seq {first}")
        if last - first + 1 > wire.RESEND_MAX_SPAN:
            raise CommandError(f"to_seq: the range {first}..{last} spans {last - first + 1} "
                               f"seqs, at most {wire.RESEND_MAX_SPAN} per request")
        try:
            done = self.outbox.requeue(stream, first, last)
        except OutboxRangeError as exc:
            raise CommandError(str(exc)) from None
        if done.count:
            self.rewind(first)
        span = f"seq {done.first}..{done.last}" if done.count else "nothing"
        log.info("resend %s..%s of stream %s: %d kept, %d no longer kept", first, last, stream,
                 done.count, done.missing)
        return (f"re-sending {done.count} of {done.asked} ({span}); {done.missing} no longer "
                "kept")

    def notify(self) -> None:
        """Tell the uplink a new event is in the outbox (publish now, not at the next poll)."""
        self._wake.set()

    def start(self) -> None:
        """Connect in the background and start draining."""
        connect_async(self.client, self.broker, persistent_session=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self._connected.is_set()

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (every event acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self.outbox.depth() == 0

    def stop(self) -> None:
        """Say offline (retained), disconnect and stop the thread; unsent events stay durable."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, wire.status_payload(False), qos=1,
                                       retain=True)
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
