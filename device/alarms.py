"""Recording alarms: one durable path for every process that raises one."""

from __future__ import annotations

from device.config import GateIdentity
from device.outbox import Outbox
from gerbang import wire


def record_alarm(outbox: Outbox, identity: GateIdentity, alarm: str,
                 detail: str | None = None) -> int:
    """Commit an alarm to the outbox (same durable queue and ``seq`` as the check-ins)."""

    def build(seq: int) -> tuple[str, bytes]:
        message = wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id=identity.device_id,
                                  centre=identity.centre, seq=seq, ts=wire.utc_now_iso(),
                                  alarm=alarm, detail=detail)
        return wire.alarms_topic(identity.centre, identity.device_id), message.to_json()

    return outbox.append(build)
