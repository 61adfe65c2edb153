"""Camera back-ends: the picamera2 call sequence, and recovery from frozen or vanished cameras."""

from __future__ import annotations

import itertools
from typing import ClassVar

import cv2
import numpy as np
import pytest

from device.capture.live import PiCameraSource, V4L2Source
from device.capture.replay import ReplaySource


class FakePicamera2:
    """Stands in for picamera2.Picamera2 (which only imports on Raspberry Pi OS) and follows
    its real call sequence; ``script`` decides what each capture returns."""

    instances: ClassVar[list[FakePicamera2]] = []

    def __init__(self, camera_num=0, script=None):
        self.calls = [("__init__", camera_num)]
        self.script = script
        self.started = False
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main=None, controls=None):
        self.calls.append(("create_video_configuration", main, controls))
        return {"main": main, "controls": controls}

    def configure(self, config):
        assert not self.started, "configure() after start()"
        self.calls.append(("configure", config))

    def start(self):
        self.calls.append(("start",))
        self.started = True

    def capture_array(self, name="main"):
        assert self.started, "capture_array() before start()"
        return next(self.script)

    def stop(self):
        self.calls.append(("stop",))
        self.started = False

    def close(self):
        self.calls.append(("close",))


def noisy(seed):
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_picamera2_call_sequence_and_bgr_frames():
    FakePicamera2.instances.clear()
    frames = (noisy(i) for i in itertools.count())
    source = PiCameraSource(size=(64, 48), fps=15,
                            camera_factory=lambda n: FakePicamera2(n, frames))
    got = list(itertools.islice(source.frames(), 5))
    source.close()
    cam = FakePicamera2.instances[0]
    assert [c[0] for c in cam.calls] == ["__init__", "create_video_configuration", "configure",
                                         "start", "stop", "close"]
    assert cam.calls[1][1] == {"size": (64, 48), "format": "RGB888"}
    assert cam.calls[1][2] == {"FrameRate": 15.0}
    assert [f.index for f in got] == [0, 1, 2, 3, 4] and got[0].image.shape == (48, 64, 3)
    assert not source.one_frame_per_visit


def test_frozen_camera_is_reported_and_reopened():
    FakePicamera2.instances.clear()
    stuck = noisy(1)
    # First camera: two live frames, then the same buffer forever (a hung driver).
    first = itertools.chain([noisy(0), stuck], itertools.repeat(stuck))
    second = (noisy(100 + i) for i in itertools.count())
    scripts = iter([first, second])
    faults = []
    source = PiCameraSource(size=(64, 48), freeze_s=0.2, on_fault=faults.append,
                            camera_factory=lambda n: FakePicamera2(n, next(scripts)))
    seen = 0
    for frame in source.frames():
        seen += 1
        if len(FakePicamera2.instances) == 2 and frame.image.tobytes() != stuck.tobytes():
            break
    source.close()
    assert len(faults) == 1 and faults[0].startswith("frozen")
    assert FakePicamera2.instances[0].calls[-2:] == [("stop",), ("close",)]
    assert seen > 2


def test_camera_that_vanishes_is_reopened_when_it_returns():
    FakePicamera2.instances.clear()

    def unplugged():
        yield noisy(0)
        raise RuntimeError("Camera frontend has timed out!")

    attempts = iter([unplugged(), None, (noisy(50 + i) for i in itertools.count())])

    def factory(n):
        script = next(attempts)
        if script is None:
            raise RuntimeError("no cameras available")
        return FakePicamera2(n, script)

    faults = []
    source = PiCameraSource(size=(64, 48), on_fault=faults.append, camera_factory=factory)
    got = list(itertools.islice(source.frames(), 3))
    source.close()
    assert len(got) == 3
    assert faults[0].startswith("read failed") and faults[1].startswith("open failed")


def test_one_camera_lost_alarm_per_outage_and_again_after_the_camera_came_back():
    """Two faults in one outage (read failed, then reopening failed) are one alarm; a frame
    ends the outage, so the next failure is a new alarm."""
    from device.capture.cameras import CameraAlarm

    FakePicamera2.instances.clear()

    def fails_after(n, seed):
        for i in range(n):
            yield noisy(seed + i)
        raise RuntimeError("Camera frontend has timed out!")

    attempts = iter([fails_after(1, 0), None, fails_after(2, 10),
                     (noisy(50 + i) for i in itertools.count())])

    def factory(n):
        script = next(attempts)
        if script is None:
            raise RuntimeError("no cameras available")
        return FakePicamera2(n, script)

    raised = []
    alarm = CameraAlarm(raised.append)
    source = alarm.watch(PiCameraSource(size=(64, 48), on_fault=alarm.fault,
                                        camera_factory=factory))
    got = list(itertools.islice(source.frames(), 5))
    source.close()
    assert len(got) == 5
    assert [r.split(":")[0] for r in raised] == ["read failed", "read failed"]
    assert alarm.alarms == 2 and not alarm.down


def test_v4l2_source_reads_through_opencv_and_reports_a_missing_device(tmp_path):
    video = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (64, 48))
    for i in range(20):
        writer.write(noisy(i))
    writer.release()
    source = V4L2Source(str(video), size=(64, 48), api=cv2.CAP_ANY)
    frames = list(itertools.islice(source.frames(), 10))
    source.close()
    assert len(frames) == 10 and frames[0].image.shape == (48, 64, 3)

    faults = []
    missing = V4L2Source(str(tmp_path / "video9"), api=cv2.CAP_ANY, on_fault=faults.append)
    gen = missing.frames()
    import threading

    threading.Timer(1.0, missing.close).start()
    assert list(gen) == []
    assert faults and faults[0].startswith("open failed")


def test_replay_paces_frames_in_real_time(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), noisy(i))
    import time

    start = time.monotonic()
    frames = list(ReplaySource(tmp_path, fps=10).frames())
    assert len(frames) == 4 and time.monotonic() - start >= 0.25
    assert [f.ref for f in frames] == ["0.png", "1.png", "2.png", "3.png"]


@pytest.mark.parametrize("source", ["picamera2", "v4l2"])
def test_service_picks_the_configured_camera(source):
    from device.config import CaptureConfig
    from device.processes.assembly import open_source

    chosen = open_source(CaptureConfig(source=source, fps=10))
    # Live cameras are read on their own thread, newest frame wins (no queue behind the gate).
    assert type(chosen).__name__ == "NewestFrameSource"
    assert type(chosen.source).__name__ == {"picamera2": "PiCameraSource",
                                            "v4l2": "V4L2Source"}[source]


def _stills(folder, n):
    import cv2

    folder.mkdir(exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((48, 64, 3), i, np.uint8))
    return folder


def test_a_slow_gate_judges_the_newest_frame_and_latency_stays_bounded(tmp_path):
    """A 30 fps camera and a gate needing 100 ms per frame: without newest-wins the lag grows
    by ~67 ms a frame; with it, every judged frame is at most ~one inference old."""
    import time

    from device.capture.newest import NewestFrameSource
    from device.capture.replay import ReplaySource

    folder = _stills(tmp_path / "cam", 60)  # 2 s of camera at 30 fps
    camera = NewestFrameSource(ReplaySource(folder, fps=30))
    ages = []
    for frame in camera.frames():
        ages.append(time.time() - frame.ts)  # how old the frame is when the gate starts on it
        time.sleep(0.1)  # inference
    camera.close()
    assert max(ages) < 0.1 + 0.05, ages
    assert camera.dropped > 30 and camera.captured == 60
    assert len(ages) + camera.dropped == 60

    queued = ReplaySource(folder, fps=30)  # the same camera read in order, for comparison
    lag, start = [], time.monotonic()
    for i, _ in enumerate(queued.frames()):
        lag.append(time.monotonic() - start - i / 30)  # behind the camera's own schedule
        time.sleep(0.1)
        if i == 20:
            break
    assert lag[-1] > 1.0  # 20 frames in, an in-order reader is already a second behind


def test_a_failing_camera_reaches_the_consumer(tmp_path):
    from device.capture.newest import NewestFrameSource

    class Broken:
        one_frame_per_visit = False

        def frames(self):
            yield from ()
            raise OSError("camera unplugged")

        def close(self):
            pass

    with pytest.raises(OSError, match="unplugged"):
        list(NewestFrameSource(Broken()).frames())


def _missing_camera_config(tmp_path, extra: str = ""):
    """A gate config whose Pi camera is missing (picamera2 cannot even be imported here)."""
    data = tmp_path / "gate"
    config = tmp_path / "device.toml"
    config.write_text(f"""
[gate]
device_id = "c1-r01-cam"
centre = "c1"
room = "R01"
session = "S1"
data_dir = "{data}"
[capture]
source = "picamera2"
[gpio]
pin_factory = "mock"
{extra}""")
    return config, data


def _run_until_camera_alarm_then_sigterm(args, data):
    """Start ``python -m device.cli ARGS``, wait for its first queued alarm, give it 2 s of
    further reopen attempts, SIGTERM it; return (exit code, seconds to stop, stderr)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from waiting import wait_until

    from device.uplink.outbox import Outbox

    proc = subprocess.Popen([sys.executable, "-m", "device.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: (data / "outbox.sqlite").exists()
                   and Outbox(data / "outbox.sqlite").depth() >= 1, 60, "the camera alarm")
        time.sleep(2.0)  # more reopen attempts (after 0.5 s, 1 s, ...): no further alarm
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=20)
        return proc.returncode, time.monotonic() - started, stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_one_camera_lost_alarm(data):
    import json

    from device.uplink.outbox import Outbox

    pending = Outbox(data / "outbox.sqlite").pending()
    assert len(pending) == 1 and pending[0].topic.endswith("/alarms")
    alarm = json.loads(pending[0].payload)
    assert alarm["alarm"] == "camera_lost" and "open failed" in alarm["detail"]


def test_a_camera_that_cannot_be_opened_raises_one_camera_lost_alarm(tmp_path):
    """The capture worker on a gate whose Pi camera is missing: the gateway hears
    ``camera_lost`` once, with the reason, while the worker keeps trying to reopen it; SIGTERM
    still stops it at once, mid back-off."""
    config, data = _missing_camera_config(tmp_path)
    code, stopped_in, stderr = _run_until_camera_alarm_then_sigterm(
        ["worker", "capture", "--config", str(config)], data)
    # Not the back-off's next 2 s, nor the supervisor's 10 s before SIGKILL.
    assert code == 0 and stopped_in < 5.0, (stopped_in, stderr[-2000:])
    assert stderr.count("camera cannot be opened") >= 2
    _assert_one_camera_lost_alarm(data)


def test_single_process_service_alarms_once_for_a_missing_camera_and_stops_on_sigterm(tmp_path):
    """``run --single-process`` on the same gate: the same one ``camera_lost`` alarm as the
    supervised capture worker, and SIGTERM ends the run although no frame ever arrived (the
    loop was waiting for one)."""
    from device.decide.roster import Roster, save_roster
    from gerbang.broker import free_port

    config, data = _missing_camera_config(
        tmp_path, f"[broker]\nport = {free_port()}\n[models]\nthreads = 1\n")
    save_roster(Roster("S1", "R01", 1, ()), data / "roster.json")
    code, stopped_in, stderr = _run_until_camera_alarm_then_sigterm(
        ["run", "--single-process", "--config", str(config), "--json"], data)
    assert code == 0 and stopped_in < 5.0, (stopped_in, stderr[-2000:])
    assert stderr.count("camera cannot be opened") >= 2
    _assert_one_camera_lost_alarm(data)
