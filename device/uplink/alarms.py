"""Recording alarms: one durable path for every process that raises one."""

from __future__ import annotations

from device.config import DeviceConfig, GateIdentity
from device.uplink.outbox import Outbox
from gerbang import wire


def record_alarm(outbox: Outbox, identity: GateIdentity, alarm: str,
                 detail: str | None = None) -> int:
    """Commit an alarm to the outbox (same durable queue and ``seq`` as the check-ins)."""

    def build(seq: int) -> tuple[str, bytes]:
        message = wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id=identity.device_id,
                                  centre=identity.centre, seq=seq, ts=wire.utc_now_iso(),
                                  alarm=alarm, detail=detail, stream=outbox.stream)
        return wire.alarms_topic(identity.centre, identity.device_id), message.to_json()

    return outbox.append(build)


def open_outbox(config: DeviceConfig) -> Outbox:
    """The gate's outbox with its configured bound; the process whose append takes it to 80 %
    raises ``outbox_near_full`` (once for all the gate's processes, until it drains below half).
    """
    outbox: Outbox

    def near_full(depth: int) -> None:
        record_alarm(outbox, config.gate, "outbox_near_full",
                     f"{depth} of {config.outbox_max_events} events waiting for the broker: "
                     "check the gate's network; frames without a face are dropped at the bound")

    outbox = Outbox(config.outbox_path, max_events=config.outbox_max_events,
                    on_near_full=near_full, keep_acked_s=config.outbox_keep_acked_s)
    return outbox
