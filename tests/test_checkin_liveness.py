"""The liveness step in the check-in loop: a matching photo held up at the gate is refused with
a reason, repeated failures lock the card and alarm the gateway, and a real answer admits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.capture import Frame
from device.capture.replay import read_image
from device.config import GateIdentity, LivenessGateConfig, QualityConfig
from device.decide.checkin import CheckinLoop, MatchPolicy
from device.decide.liveness_policy import FailedAttempts, LivenessGate
from device.decide.roster import Roster, RosterEntry
from device.gate.door import DoorSignal
from device.infer.bundle import calibrated_threshold, load_bundle
from device.infer.liveness import LivenessCheck, LivenessConfig
from device.infer.pipeline import FaceReading
from device.tools.pad_sequences import attack_frames
from device.uplink.outbox import Outbox
from gerbang import wire

FRONTAL = "celeba/7205/065013.jpg"
FPS = 15.0


@pytest.fixture
def loop(tmp_path, pipeline, faces_root):
    Device.pin_factory = MockFactory()
    photo = read_image(faces_root / FRONTAL)
    template = pipeline.read(photo).embedding
    roster = Roster("S1", "R01", 1, (RosterEntry("A7205", "", template),))
    threshold = calibrated_threshold(load_bundle(), roster.gallery().score_kind, 1e-4)
    # Passive off: a rendered original photo is not a recapture; the passive model is graded
    # on real recaptures in test_liveness.py. Challenge and 3-D check are what is tested here.
    gate = LivenessGate(LivenessGateConfig(enabled=True, passive=False, max_failures=2,
                                           actions=("turn_left",)),
                        LivenessCheck(LivenessConfig(passive=False), None))
    door = DoorSignal(17, 27, 22, pulse_s=0.2)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    made = CheckinLoop(pipeline, roster, MatchPolicy(threshold), QualityConfig(), door, outbox,
                       GateIdentity("c1-r01-a", "c1", "R01", "S1", tmp_path), liveness=gate,
                       read_cards=False)
    yield made, photo, door, outbox
    door.close()
    outbox.close()


def present(loop, frames, t0):
    decisions = []
    for i, image in enumerate(frames):
        decision = loop.handle(Frame(image=image, ts=t0 + i / FPS, index=i, ref=None),
                               report_no_face=False)
        if decision is not None:
            decisions.append(decision)
    return decisions


def outbox_messages(outbox):
    return [json.loads(m.payload) for m in outbox.pending(limit=1000)]


def test_photo_attack_is_refused_then_the_card_is_locked_and_alarmed(loop):
    loop, photo, door, outbox = loop
    frames = 4 * int(4.0 * FPS + 2)
    attempts = present(loop, attack_frames(photo, "moved", frames, seed=3), t0=1000.0)
    reasons = [d.reason for d in attempts]
    assert reasons[:2] in (["challenge_timeout"] * 2, ["challenge_failed"] * 2,
                           ["challenge_timeout", "challenge_failed"],
                           ["challenge_failed", "challenge_timeout"]), reasons
    assert all(d.outcome == "refused" for d in attempts) and not door.unlocked
    # After two failures the card is locked: the next matching face is refused at once.
    assert "card_locked" in reasons[2:]
    messages = outbox_messages(outbox)
    alarms = [m for m in messages if m["kind"] == "alarm"]
    assert [a["alarm"] for a in alarms] == ["card_locked"]
    assert "A7205" in alarms[0]["detail"]
    # Events and the alarm share one gapless seq, and every message parses on the gateway side.
    assert sorted(m["seq"] for m in messages) == list(range(len(messages)))
    for m in messages:
        (wire.parse_alarm if m["kind"] == "alarm" else wire.parse_event)(json.dumps(m))


def test_a_real_turn_passes_and_the_door_opens(loop, pipeline):
    loop, photo, _door, _outbox = loop
    first = pipeline.read(photo)
    base = first.mesh.points

    def turned(yaw):
        centre = base.mean(0)
        y = np.radians(yaw)
        rot = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        return (base - centre) @ rot.T + centre

    # The match comes from the real photo; the answer is a real head turning (FaceMesh's own
    # 3-D points rotated), fed through the liveness gate as the loop's readings would be.
    assert present(loop, [photo], t0=0.0) == []
    gate = loop.liveness
    assert gate.pending is not None and gate.pending.challenge.action == "turn_left"
    rng = np.random.default_rng(0)
    verdict = None
    for i in range(1, 30):
        # turn_left: the person's own left, the nose to the image's right (negative rotation)
        points = turned(-25 * np.sin(np.pi * min(i, 9) / 18)) if i > 5 else base
        points = points + np.column_stack([rng.normal(0, 0.7, (468, 2)), np.zeros(468)])
        mesh = type(first.mesh)(points=points, presence=1.0)
        reading = FaceReading(faces=first.faces, subject=first.subject,
                              embedding=first.embedding, mesh=mesh, points=first.points,
                              crop=first.crop)
        verdict = gate.feed(reading, photo, i / FPS)
        if verdict is not None:
            break
    assert verdict is not None and verdict.live, verdict


def test_failed_attempts_window_and_lockout():
    attempts = FailedAttempts(max_failures=3, window_s=60, lockout_s=300)
    assert not attempts.failed("A1", 0) and not attempts.failed("A1", 10)
    assert not attempts.failed("A1", 100)  # the first two fell out of the window
    assert not attempts.failed("A1", 110)
    assert attempts.failed("A1", 120)  # three within 60 s
    assert attempts.is_locked("A1", 121) and not attempts.is_locked("A2", 121)
    assert not attempts.is_locked("A1", 421)  # lockout over
    attempts.failed("A3", 0)
    attempts.succeeded("A3")
    assert not attempts.failed("A3", 1) and not attempts.failed("A3", 2)


def test_liveness_config_names_bad_fields():
    from gerbang.config import ConfigError

    for bad, field in (({"actions": ["jump"]}, "actions"), ({"timeout_s": 0.1}, "timeout_s"),
                       ({"max_failures": 0}, "max_failures")):
        with pytest.raises(ConfigError, match=field):
            LivenessGateConfig(**bad)
