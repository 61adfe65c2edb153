"""The applicant screen: what it says for every state and reason (both languages, a name only on
acceptance, never a score), its server (event stream, MJPEG preview with the newest frame
winning), the check-in loop and the service driving it, and the page itself in headless
Chromium (Debian's ``chromium`` driven by Playwright; skips when either is missing).
Screenshots of every state are kept in ``test-artifacts/screen/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import ACTIONS, ScreenConfig, parse_device_config
from device.infer.challenge import PROMPTS
from device.screen.server import (
    ADJUST,
    OFFLINE_BANNER,
    SEE_PROCTOR,
    STATES,
    Screen,
    encode_preview,
    view_for,
)
from gerbang import wire
from gerbang.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "screen"
NAME = "Siti Rahayu"
LIVE_BAR_S = 1.0  # the page follows screen.show() within 1 s


def texts(view) -> list[str]:
    """Every string the page would show for ``view``."""
    out = [*view.title, *(view.hint or ()), *(view.place or ())]
    return out + ([view.name] if view.name else [])


# -- what the page says -----------------------------------------------------------------------

def test_every_wire_reason_has_an_applicant_message_in_both_languages():
    for reason in wire.REASONS:
        view = view_for("refused", reason=reason)
        assert view.state in ("adjust", "refused"), reason
        for text in (view.title, view.hint):
            indonesian, english = text
            assert indonesian and english and indonesian != english, (reason, text)
        shown = " ".join(texts(view))
        assert "_" not in shown, (reason, shown)  # words, not reason codes
        assert not re.search(r"\d", shown), (reason, shown)  # no score, no number of any kind
        assert view.name is None and view.place is None
    for reason in wire.QUALITY_REASONS:
        assert view_for("refused", reason=reason).state == "adjust"
    what = {r: view_for("refused", reason=r).title[1] for r in wire.QUALITY_REASONS}
    assert what["face_too_small"] == "Come closer to the camera"
    assert what["off_frontal"] == "Look straight at the camera"
    assert what["multiple_faces"] == "One person at a time, please"
    assert "light" in what["too_dark"] and "still" in what["blurred"]
    assert "middle" in what["face_cut_off"]


def test_identity_and_liveness_refusals_all_read_the_same_see_the_proctor():
    sensitive = ("no_match", "duplicate_identity", *wire.LIVENESS_REASONS)
    views = {r: view_for("refused", reason=r) for r in sensitive}
    assert {(v.state, v.title, v.hint) for v in views.values()} == {
        ("refused", *SEE_PROCTOR)}
    assert SEE_PROCTOR[0] == ("Silakan temui pengawas", "Please see the proctor")
    # A reason the table does not know (a newer firmware's) reads the same, never a code.
    assert view_for("refused", reason="something_new").title == SEE_PROCTOR[0]
    assert view_for("refused").title == SEE_PROCTOR[0]


def test_accepted_shows_name_room_and_seat_other_states_never_a_name():
    view = view_for("accepted", name=NAME, room="R01", seat="12")
    assert (view.state, view.tone, view.title) == ("accepted", "ok",
                                                    ("Silakan masuk", "Please enter"))
    assert view.name == NAME and view.place == ("Ruang R01 · Kursi 12", "Room R01 · Seat 12")
    assert view_for("accepted", name=NAME, room="R01").place == ("Ruang R01", "Room R01")
    assert view_for("accepted", name="", room="R01").name is None
    for state in STATES:
        if state != "accepted":
            details = {"action": "blink", "timeout_s": 4.0} if state == "challenge" else {}
            assert view_for(state, **details).name is None


def test_challenge_prompt_and_countdown_for_every_action():
    for action in ACTIONS:
        view = view_for("challenge", action=action, timeout_s=4.0)
        assert view.title == PROMPTS[action] and view.action == action
        assert view.countdown_s == 4.0 and view.hint[0] and view.hint[1]
    with pytest.raises(ValueError, match="action"):
        view_for("challenge", action="jump", timeout_s=4.0)
    with pytest.raises(ValueError, match="unknown screen state"):
        view_for("look_at_camera")


def test_ready_and_offline_tell_the_applicant_what_to_do():
    ready, offline = view_for("ready"), view_for("offline")
    assert ready.title == ("Lihat ke kamera", "Look at the camera")
    assert "kartu" in ready.hint[0] and "card" in ready.hint[1]
    assert offline.title == ready.title  # offline, the gate still checks people in
    assert "dicatat" in OFFLINE_BANNER[0] and "still recorded" in OFFLINE_BANNER[1]


def test_a_score_cannot_even_be_passed_to_the_screen():
    with Screen(port=0, preview_fps=0) as screen:
        with pytest.raises(TypeError):
            screen.show("refused", reason="no_match", score=0.31)  # type: ignore[call-arg]


# -- the state machine ------------------------------------------------------------------------

def test_results_hold_then_rest_and_the_name_is_dropped():
    with Screen(port=0, preview_fps=0, result_hold_s=1.0) as screen:
        assert screen.state["state"] == "ready" and screen.state["hold_s"] is None
        screen.show("accepted", name=NAME, room="R01")
        state = screen.state
        assert state["name"] == NAME and 0 < state["hold_s"] <= 1.0
        # A fixable-problem hint from the next frames does not cut the result short.
        screen.show("refused", reason="blurred")
        assert screen.state["state"] == "accepted"
        # The uplink going down changes the banner under the result, not the result.
        screen.show("offline")
        state = screen.state
        assert state["state"] == "accepted" and state["banner"] == OFFLINE_BANNER
        time.sleep(1.2)
        state = screen.state
        assert state["state"] == "offline" and state["name"] is None
        assert NAME not in json.dumps(state)
        screen.show("ready")
        assert screen.state["banner"] is None
        # Hints replace each other and rest quickly; a refusal replaces a hint.
        screen.show("refused", reason="face_too_small")
        assert screen.state["state"] == "adjust"
        screen.show("refused", reason="too_dark")
        assert screen.state["title"][1] == "Turn your face to the light"
        screen.show("refused", reason="no_match")
        assert screen.state["title"] == SEE_PROCTOR[0]


def test_challenge_counts_down_its_timeout():
    with Screen(port=0, preview_fps=0) as screen:
        screen.show("challenge", action="nod", timeout_s=4.0)
        state = screen.state
        assert state["title"] == PROMPTS["nod"] and 3.0 < state["remaining_s"] <= 4.0
        time.sleep(0.3)
        assert screen.state["remaining_s"] < state["remaining_s"]


# -- the server -------------------------------------------------------------------------------

def read_mjpeg_parts(response, count: int) -> list[bytes]:
    """The next ``count`` JPEGs of a multipart/x-mixed-replace stream."""
    parts = []
    while len(parts) < count:
        line = response.readline()
        if not line:
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            response.readline()  # blank line before the body
            parts.append(response.read(length))
    return parts


def test_preview_is_a_downscaled_jpeg_newest_frame_wins_at_most_preview_fps():
    with Screen(port=0, preview_fps=5) as screen:
        with urllib.request.urlopen(screen.url + "preview.mjpg", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            screen.preview(np.full((720, 1280, 3), 10, np.uint8))
            first = read_mjpeg_parts(response, 1)[0]
            # 60 frames in a burst: the encoder may catch one mid-burst, then the page gets
            # the last one; a queue would replay the burst frame by frame.
            for value in range(20, 200, 3):
                screen.preview(np.full((720, 1280, 3), value, np.uint8))
            means = []
            while not means or abs(means[-1] - 197) >= 3:
                part = read_mjpeg_parts(response, 1)[0]
                image = cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR)
                means.append(float(image.mean()))
            assert len(means) <= 2, means
            assert first[:2] == b"\xff\xd8" and image.shape == (270, 480, 3)
            # A camera at 30 fps for 1.5 s: at most 5 preview frames a second reach the page.
            stop = threading.Event()

            def camera():
                value = 0
                while not stop.is_set():
                    value = (value + 1) % 250
                    screen.preview(np.full((480, 640, 3), value, np.uint8))
                    time.sleep(1 / 30)

            feeder = threading.Thread(target=camera, daemon=True)
            feeder.start()
            started = time.monotonic()
            got = 0
            while time.monotonic() - started < 1.5:
                got += len(read_mjpeg_parts(response, 1))
            stop.set()
            feeder.join()
            assert 3 <= got <= 5 * 1.5 + 2, got


def test_state_and_event_stream_and_preview_off():
    with Screen(port=0, preview_fps=0) as screen:
        with urllib.request.urlopen(screen.url + "events", timeout=5) as events:
            assert events.headers["Content-Type"].startswith("text/event-stream")
            assert events.readline() == b"retry: 1000\n"
            events.readline()
            first = json.loads(events.readline().removeprefix(b"data: "))
            assert first["state"] == "ready" and first["preview"] is False
            events.readline()
            screen.show("accepted", name=NAME, room="R01")
            pushed = json.loads(events.readline().removeprefix(b"data: "))
            assert pushed["name"] == NAME and pushed["resting"]["name"] is None
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(screen.url + "preview.mjpg", timeout=5)
        with urllib.request.urlopen(screen.url, timeout=5) as page:
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            assert b"screen.js" in page.read()
        with urllib.request.urlopen(screen.url + "state", timeout=5) as state:
            assert json.load(state)["state"] == "accepted"


def test_screen_config_is_off_by_default_and_names_bad_fields():
    gate = {"device_id": "c1-r01-a", "centre": "c1", "room": "R01", "session": "S1"}
    base = {"gate": gate, "capture": {"source": "replay", "path": "/tmp"}}
    config = parse_device_config(base)
    assert config.screen == ScreenConfig(enabled=False, host="127.0.0.1", port=8081,
                                         preview_fps=5.0, result_hold_s=4.0)
    assert parse_device_config({**base, "screen": {"enabled": True, "port": 9000}}).screen.port \
        == 9000
    for bad, field in (({"host": "0.0.0.0"}, "screen.host"),
                       ({"host": "127.example.com"}, "screen.host"),
                       ({"port": 80}, "screen.port"), ({"port": "x"}, "screen.port"),
                       ({"preview_fps": 15}, "screen.preview_fps"),
                       ({"result_hold_s": 0}, "screen.result_hold_s"),
                       ({"colour": "blue"}, "colour")):
        with pytest.raises(ConfigError, match=re.escape(field)):
            parse_device_config({**base, "screen": bad})


def test_service_helpers_port_in_use_and_uplink_state(caplog):
    from device.processes.assembly import open_screen, watch_uplink

    assert open_screen(ScreenConfig()) is None  # off by default
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert open_screen(ScreenConfig(enabled=True, port=port)) is None
        assert "running without it" in caplog.text

    class Uplink:
        connected = True

    uplink, stop = Uplink(), threading.Event()
    with Screen(port=0, preview_fps=0) as screen:
        import device.processes.assembly as service

        service_offline_after, service.OFFLINE_AFTER_S = service.OFFLINE_AFTER_S, 0.5
        try:
            watch_uplink(uplink, screen, stop)
            uplink.connected = False
            deadline = time.monotonic() + 5
            while screen.state["state"] != "offline" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert screen.state["banner"] == OFFLINE_BANNER
            uplink.connected = True
            deadline = time.monotonic() + 5
            while screen.state["state"] != "ready" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert screen.state["banner"] is None
        finally:
            stop.set()
            service.OFFLINE_AFTER_S = service_offline_after


@pytest.mark.faces
def test_service_serves_the_screen_shows_offline_and_stops_it(tmp_path, faces_root, pipeline,
                                                              caplog):
    """run_device with [screen] on and no broker: the page is served, a replayed enrolled face
    shows as accepted with the roster name, the uplink being down shows the offline banner, and
    the server stops with the service."""
    from device.capture.replay import read_image
    from device.decide.roster import Roster, RosterEntry, save_roster
    from device.processes.assembly import run_device
    from gerbang.broker import free_port
    from provisioning.enroll import template_from_photos

    person = sorted(p for p in (faces_root / "orl").iterdir() if p.is_dir())[0]
    template, _ = template_from_photos(pipeline, sorted(person.iterdir())[:3])
    data = tmp_path / "gate"
    save_roster(Roster("S1", "R01", 1, (RosterEntry(person.name, NAME, template),)),
                data / "roster.json")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), read_image(sorted(person.iterdir())[5]))
    port = free_port()
    config = parse_device_config({
        "gate": {"device_id": "c1-r01-a", "centre": "c1", "room": "R01", "session": "S1",
                 "data_dir": str(data)},
        "broker": {"port": free_port()},  # nobody listens: the gate is offline
        "capture": {"path": str(frames), "fps": 2.0, "loop": True},
        "models": {"threads": 1}, "gpio": {"pin_factory": "mock"},
        "screen": {"enabled": True, "port": port, "result_hold_s": 10.0}})
    stop = threading.Event()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_device(config, stop)),
                              daemon=True)
    url = f"http://127.0.0.1:{port}/state"
    with caplog.at_level(logging.DEBUG):
        thread.start()
        try:
            deadline = time.monotonic() + 30
            state: dict = {}
            while time.monotonic() < deadline and not (state.get("name") == NAME
                                                       and state.get("banner")):
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        state = json.load(response)
                except OSError:
                    pass
                time.sleep(0.1)
            assert state.get("name") == NAME, state
            assert state["place"] == ["Ruang R01", "Room R01"]
            assert state["banner"] == list(OFFLINE_BANNER), state  # broker down > 3 s
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not thread.is_alive() and result["accepted"] >= 1
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)  # the server stopped with the service
    assert NAME not in caplog.text


# -- the check-in loop drives it --------------------------------------------------------------

class RecordingScreen(Screen):
    """A real screen that also keeps every call (the loop's side of the contract)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(port=0, **kwargs)
        self.calls: list[tuple[str, dict]] = []
        self.previews = 0

    def show(self, state, **details):
        self.calls.append((state, details))
        super().show(state, **details)

    def preview(self, image):
        self.previews += 1
        super().preview(image)


@pytest.fixture
def gate_parts(tmp_path):
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from device.config import GateIdentity
    from device.gate.door import DoorSignal
    from device.uplink.outbox import Outbox

    Device.pin_factory = MockFactory()
    door = DoorSignal(17, 27, 22, pulse_s=0.2)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    screen = RecordingScreen(preview_fps=0)
    yield door, outbox, GateIdentity("c1-r01-a", "c1", "R01", "S1", tmp_path), screen
    screen.close()
    door.close()
    outbox.close()
    Device.pin_factory.reset()


def make_loop(pipeline, entries, parts, liveness=None):
    from device.config import QualityConfig
    from device.decide.checkin import CheckinLoop, MatchPolicy
    from device.decide.roster import Roster
    from device.infer.bundle import calibrated_threshold, load_bundle

    door, outbox, identity, screen = parts
    roster = Roster("S1", "R01", 1, tuple(entries))
    threshold = calibrated_threshold(load_bundle(), roster.gallery().score_kind, 1e-4)
    return CheckinLoop(pipeline, roster, MatchPolicy(threshold), QualityConfig(), door, outbox,
                       identity, read_cards=False, liveness=liveness, screen=screen)


def frame(image, ts=None, index=0):
    from device.capture import Frame

    return Frame(image=image, ts=time.time() if ts is None else ts, index=index)


@pytest.mark.faces
def test_loop_shows_accepted_name_refusals_and_hints_from_real_decisions(
        faces_root, pipeline, gate_parts, caplog):
    from device.capture.replay import read_image
    from device.decide.roster import RosterEntry
    from provisioning.enroll import template_from_photos

    a, stranger = sorted(p for p in (faces_root / "orl").iterdir() if p.is_dir())[:2]
    template, _ = template_from_photos(pipeline, sorted(a.iterdir())[:3])
    loop = make_loop(pipeline, [RosterEntry(a.name, NAME, template)], gate_parts)
    screen = loop.screen
    dark = (read_image(faces_root / "celeba/7205/065013.jpg") * 0.12).astype(np.uint8)
    with caplog.at_level(logging.DEBUG):
        accepted = loop.handle(frame(read_image(sorted(a.iterdir())[5])), report_no_face=True)
        assert accepted.outcome == "accepted"
        assert screen.calls[-1] == ("accepted", {"name": NAME, "room": "R01"})
        assert screen.state["name"] == NAME and screen.state["place"] == ("Ruang R01", "Room R01")
        refused = loop.handle(frame(read_image(sorted(stranger.iterdir())[0])),
                              report_no_face=True)
        assert (refused.outcome, refused.reason) == ("refused", "no_match")
        assert refused.score is not None
        assert screen.calls[-1] == ("refused", {"reason": "no_match"})  # never the score
        assert screen.state["title"] == SEE_PROCTOR[0] and screen.state["name"] is None
        hint = loop.handle(frame(dark), report_no_face=True)
        assert hint.reason == "too_dark"
        assert screen.calls[-1] == ("refused", {"reason": "too_dark"})
        assert screen.state["state"] == "refused"  # the refusal stays readable ...
        assert view_for("refused", reason="too_dark").title == ADJUST["too_dark"][0]
        calls = len(screen.calls)
        assert loop.handle(frame(np.zeros((240, 320, 3), np.uint8)),
                           report_no_face=True).outcome == "no_face"
        assert len(screen.calls) == calls  # nobody there: nothing to tell
    assert NAME not in caplog.text  # names reach the screen, never the log


@pytest.mark.faces
def test_loop_shows_the_challenge_then_its_refusal(faces_root, pipeline, gate_parts):
    from device.capture.replay import read_image
    from device.config import LivenessGateConfig
    from device.decide.liveness_policy import LivenessGate
    from device.decide.roster import RosterEntry
    from device.infer.liveness import LivenessCheck, LivenessConfig

    photo = read_image(faces_root / "celeba/7205/065013.jpg")
    liveness = LivenessGate(LivenessGateConfig(enabled=True, passive=False,
                                               actions=("turn_left",), timeout_s=3.0),
                            LivenessCheck(LivenessConfig(passive=False), None))
    loop = make_loop(pipeline, [RosterEntry("A7205", NAME, pipeline.read(photo).embedding)],
                     gate_parts, liveness)
    screen = loop.screen
    assert loop.handle(frame(photo, ts=1000.0), report_no_face=False) is None
    assert screen.calls == [("challenge", {"action": "turn_left", "timeout_s": 3.0})]
    state = screen.state
    assert state["title"] == PROMPTS["turn_left"] and 2.0 < state["remaining_s"] <= 3.0
    # The photo never turns: the next frame after the time limit ends it.
    decision = loop.handle(frame(photo, ts=1004.0, index=1), report_no_face=False)
    assert (decision.outcome, decision.reason) == ("refused", "challenge_timeout")
    assert screen.calls[-1] == ("refused", {"reason": "challenge_timeout"})
    assert screen.state["title"] == SEE_PROCTOR[0]


def test_run_hands_every_frame_to_the_preview(pipeline, gate_parts):
    class Source:
        one_frame_per_visit = False

        def frames(self):
            for i in range(3):
                yield frame(np.zeros((240, 320, 3), np.uint8), index=i)

        def close(self):
            pass

    loop = make_loop(pipeline, [], gate_parts)
    loop.run(Source(), should_stop=lambda: False)
    assert loop.screen.previews == 3 and loop.screen.calls == [] and loop.frames == 3


# -- the page in headless Chromium ------------------------------------------------------------

def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture
def browser() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does this)")
    playwright_api = pytest.importorskip("playwright.sync_api",
                                         reason="playwright is not installed (pip install "
                                                "-e '.[dev]')")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


def camera_picture() -> np.ndarray:
    """A real face for the screenshots when the shared data is there; a test card otherwise."""
    data = Path(os.environ.get("GERBANG_DATA", REPO.parent / "shared" / "data"))
    photo = data / "faces" / "celeba" / "7205" / "065013.jpg"
    if photo.exists():
        image = cv2.imread(str(photo))
        canvas = np.full((720, 1280, 3), 60, np.uint8)
        scaled = cv2.resize(image, None, fx=1.6, fy=1.6)
        h, w = scaled.shape[:2]
        canvas[40:40 + h, 640 - w // 2:640 - w // 2 + w] = scaled[:680]
        return canvas
    gradient = np.tile(np.linspace(0, 255, 1280, dtype=np.uint8), (720, 1))
    return cv2.merge([gradient, np.flipud(gradient[:, ::-1]), gradient[::-1]])


def test_page_in_headless_chromium_follows_the_gate_within_a_second(browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    picture = camera_picture()
    with Screen(port=0, preview_fps=5, result_hold_s=1.5) as screen:
        stop = threading.Event()

        def camera():
            while not stop.is_set():
                screen.preview(picture)
                time.sleep(1 / 15)

        threading.Thread(target=camera, daemon=True).start()
        page = browser.new_page(viewport={"width": 800, "height": 480})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        try:
            page.goto(screen.url)
            page.wait_for_function("() => document.getElementById('status').textContent "
                                   "=== 'live'", timeout=5000)

            def text(element):
                return page.text_content(f"#{element}")

            assert text("title-id") == "Lihat ke kamera" and text("title-en") == \
                "Look at the camera"
            # The MJPEG preview plays in the page (an <img> shows multipart JPEG).
            page.wait_for_function("() => document.getElementById('preview').naturalWidth "
                                   "=== 480", timeout=5000)
            shot(page, "1-ready")

            def within_bar(action, condition, name):
                started = time.monotonic()
                action()
                page.wait_for_function(f"() => {condition}", timeout=LIVE_BAR_S * 3000,
                                       polling=20)
                took = time.monotonic() - started
                shot(page, name)
                assert took < LIVE_BAR_S, f"{name}: the page took {took:.2f}s"

            title_is = ("document.getElementById('title-id').textContent === {!r} && "
                        "document.getElementById('title-en').textContent === {!r}").format

            within_bar(lambda: screen.show("refused", reason="face_too_small"),
                       title_is(*ADJUST["face_too_small"][0]), "2-adjust-come-closer")
            within_bar(lambda: screen.show("challenge", action="turn_left", timeout_s=4.0),
                       title_is(*PROMPTS["turn_left"]), "3-challenge-turn-left")
            assert page.is_visible("#countdown")
            first = int(text("countdown-s"))
            time.sleep(1.1)
            assert 1 <= int(text("countdown-s")) < first <= 4  # it counts down
            within_bar(lambda: screen.show("accepted", name=NAME, room="R01", seat="12"),
                       f"document.getElementById('name').textContent === {NAME!r}",
                       "4-accepted-name")
            assert text("place-id") == "Ruang R01 · Kursi 12"
            assert text("title-en") == "Please enter" and not page.is_visible("#countdown")
            # The name goes with the result's time: the page is back at ready, name gone.
            page.wait_for_function("() => document.getElementById('view').dataset.state "
                                   "=== 'ready'", timeout=3000)
            assert NAME not in page.content()
            within_bar(lambda: screen.show("refused", reason="duplicate_identity"),
                       title_is(*SEE_PROCTOR[0]), "5-refused-see-proctor")
            body = page.inner_text("body")
            assert not re.search(r"\d", body.replace("live", "")), body  # no score shown
            within_bar(lambda: screen.show("offline"),
                       "!document.getElementById('banner').hidden", "6-offline-banner")
            assert page.text_content("#banner-en") == OFFLINE_BANNER[1]
            assert errors == []
        except BaseException:
            page.close()
            raise
        finally:
            stop.set()
    # The service stopped: the page says so rather than pretend the gate still works.
    try:
        page.wait_for_function("() => document.getElementById('view').dataset.state "
                               "=== 'connecting'", timeout=8000)
        shot(page, "7-connecting")
        assert page.text_content("#title-en") == "Connecting…"
    finally:
        page.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_encode_preview_keeps_small_frames_and_greys():
    small = encode_preview(np.zeros((120, 160, 3), np.uint8))
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    grey = encode_preview(np.zeros((720, 1280), np.uint8))
    assert cv2.imdecode(np.frombuffer(grey, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (270, 480)
