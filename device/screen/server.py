"""The applicant screen: a page on the small display at the door, served by the gate itself.

The applicant cannot read an LED. The screen tells them, in Indonesian first and English second,
what to do (look at the camera, come closer, turn the head left …), shows the camera so they can
frame their face, and gives the result: the name and room on acceptance, the reason in plain
words on refusal. Chromium runs in kiosk mode on the gate and opens
``http://127.0.0.1:8081/``::

    chromium --kiosk --noerrdialogs --disable-infobars http://127.0.0.1:8081/

The server is the standard library's ``ThreadingHTTPServer`` on loopback (see ``[screen]`` in
:mod:`device.config`), because the page shows names and the camera picture and neither may
leave the device:

=================  ==============================================================================
path               what
=================  ==============================================================================
``/``              the page (``device/screen/static/``); it renders what the server pushes
``/events``        server-sent events: the current view at once, then every change
``/preview.mjpg``  the camera, MJPEG, downscaled, at most ``preview_fps``; always the newest frame
``/state``         the current view as JSON (for a technician with ``curl``, and tests)
=================  ==============================================================================

What the page says lives here, in :func:`view_for`, so every wire reason is mapped to a message
in a test. Refusals never show a score, and the refusals that come from the identity and
liveness checks all read the same ("please see the proctor"): an attacker learns nothing about
which check failed. A name is shown only on the accepted view, only for ``result_hold_s``, and
is never logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from device.infer.challenge import PROMPTS
from gerbang import wire

log = logging.getLogger(__name__)

#: (Indonesian, English): every text on the page comes in both, Indonesian first.
Text = tuple[str, str]

#: What :meth:`Screen.show` takes. ``ready`` and ``offline`` are resting states (the gate works
#: offline too: its outbox keeps every check-in); the others show for a while, then the
#: resting state returns.
STATES = ("ready", "offline", "challenge", "accepted", "refused")
RESTING = ("ready", "offline")

READY_TITLE: Text = ("Lihat ke kamera", "Look at the camera")
READY_HINT: Text = ("dan tunjukkan kartu peserta Anda", "and hold up your applicant card")
OFFLINE_BANNER: Text = ("Koneksi ke server terputus — check-in tetap dicatat di gerbang ini",
                        "No connection to the server — check-ins are still recorded at this gate")
ACCEPTED_TITLE: Text = ("Silakan masuk", "Please enter")
CHALLENGE_HINT: Text = ("Lakukan sekarang, sambil tetap melihat ke kamera",
                        "Do it now, still facing the camera")

#: Refusals the applicant can fix on the spot (the quality gate's reasons, a missing face or
#: card): (what to do, why), shown as a hint rather than a refusal.
ADJUST: dict[str, tuple[Text, Text]] = {
    "face_too_small": (("Mendekatlah ke kamera", "Come closer to the camera"),
                       ("Wajah Anda terlalu jauh", "Your face is too far away")),
    "off_frontal": (("Lihat lurus ke kamera", "Look straight at the camera"),
                    ("Jangan menoleh atau menunduk", "Do not turn or tilt your head")),
    "too_dark": (("Hadapkan wajah ke cahaya", "Turn your face to the light"),
                 ("Wajah Anda terlalu gelap", "Your face is too dark")),
    "overexposed": (("Menjauhlah dari cahaya terang", "Move out of the bright light"),
                    ("Wajah Anda terlalu terang", "Your face is too bright")),
    "blurred": (("Diam sejenak", "Hold still for a moment"),
                ("Gambar wajah Anda kabur", "The picture of your face is blurred")),
    "multiple_faces": (("Satu orang saja di depan kamera", "One person at a time, please"),
                       ("Kamera melihat lebih dari satu wajah",
                        "The camera sees more than one face")),
    "face_cut_off": (("Berdirilah di tengah, di depan kamera",
                      "Stand in the middle, in front of the camera"),
                     ("Sebagian wajah Anda di luar gambar",
                      "Part of your face is outside the picture")),
    "no_face": (READY_TITLE, ("Wajah Anda belum terlihat", "Your face is not visible yet")),
    "no_card": (("Tunjukkan kartu peserta ke kamera",
                 "Hold your applicant card up to the camera"),
                ("Gerbang ini memerlukan kartu peserta", "This gate needs your applicant card")),
}

#: One text for every refusal by the identity or liveness checks (and any reason this table does
#: not know): telling an attacker *which* check failed would help them.
SEE_PROCTOR: tuple[Text, Text] = (("Silakan temui pengawas", "Please see the proctor"),
                                  ("Identitas Anda belum dapat diverifikasi",
                                   "Your identity could not be verified"))
CHECK_FAILED = ("no_match", "duplicate_identity", *wire.LIVENESS_REASONS)

#: Refusals that say something the applicant may know: no check of the face is revealed.
REFUSED: dict[str, tuple[Text, Text]] = {
    "not_on_roster": (("Anda tidak terdaftar di ruang ini", "You are not registered for this room"),
                      ("Periksa nomor ruang Anda atau temui pengawas",
                       "Check your room number or see the proctor")),
    "bad_frame": (("Silakan coba lagi", "Please try again"),
                  ("Terjadi gangguan teknis", "A technical problem occurred")),
    **dict.fromkeys(CHECK_FAILED, SEE_PROCTOR),
}

#: Adjust hints stay this long after the last frame with the problem (they repeat every frame
#: while it lasts).
ADJUST_HOLD_S = 2.0
#: A challenge's view outlasts its timeout by this much: the loop replaces it with the result.
CHALLENGE_SLACK_S = 1.0
#: Widest preview frame sent to the page, in pixels (the door display is ~800 px wide).
PREVIEW_WIDTH = 480
PREVIEW_JPEG_QUALITY = 70
#: An idle event stream gets a comment this often, so a dead client is noticed.
KEEPALIVE_S = 10.0


@dataclass(frozen=True)
class View:
    """What the page shows: the pure translation of one :meth:`Screen.show` call."""

    #: ``ready``, ``offline``, ``adjust`` (a fixable problem), ``challenge``, ``accepted`` or
    #: ``refused``.
    state: str
    #: Colour on the page: ``info``, ``adjust``, ``prompt``, ``ok`` or ``bad``.
    tone: str
    title: Text
    hint: Text | None = None
    #: The applicant's name: only on ``accepted``.
    name: str | None = None
    #: Room (and seat when known): only on ``accepted``.
    place: Text | None = None
    #: The challenge's action (``blink``, ``turn_left`` …): the page draws a symbol for it.
    action: str | None = None
    #: The challenge's time limit; the page counts it down.
    countdown_s: float | None = None


def view_for(state: str, *, reason: str | None = None, action: str | None = None,
             timeout_s: float | None = None, name: str | None = None, room: str | None = None,
             seat: str | None = None) -> View:
    """Translate a gate state into what the applicant reads (no I/O; the unit under test).

    ``refused`` with a reason the applicant can fix (the quality gate's, ``no_face``,
    ``no_card``) becomes an ``adjust`` view telling them what to do; every other refusal says
    what it may in plain words, never the score.
    """
    if state not in STATES:
        raise ValueError(f"unknown screen state {state!r} (known: {', '.join(STATES)})")
    if state in RESTING:
        return View(state, "info", READY_TITLE, READY_HINT)
    if state == "challenge":
        if action not in PROMPTS:
            raise ValueError(f"challenge needs an action of {tuple(PROMPTS)}, got {action!r}")
        return View("challenge", "prompt", PROMPTS[action], CHALLENGE_HINT, action=action,
                    countdown_s=timeout_s)
    if state == "accepted":
        place = None
        if room:
            place = (f"Ruang {room}", f"Room {room}")
            if seat:
                place = (f"{place[0]} · Kursi {seat}", f"{place[1]} · Seat {seat}")
        return View("accepted", "ok", ACCEPTED_TITLE, None, name=name or None, place=place)
    if reason in ADJUST:
        title, hint = ADJUST[reason]
        return View("adjust", "adjust", title, hint)
    title, hint = REFUSED.get(reason or "", SEE_PROCTOR)
    return View("refused", "bad", title, hint)


class Screen:
    """The applicant screen's server: ``show(state, …)`` changes what the page says,
    ``preview(image)`` hands it the camera's latest frame.

    Constructing it starts serving (like a gpiozero device claims its pin); ``close()`` stops.
    Both calls are cheap and never block the check-in loop: ``show`` swaps one view and wakes
    the page's event streams; ``preview`` keeps a reference to the newest frame, which a
    background thread encodes at most ``preview_fps`` times a second, and only while a page
    watches. Frames in between are dropped, so nothing queues up.

    ``port=0`` takes a free port (tests); :attr:`url` says where the page is.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8081, preview_fps: float = 5.0,
                 result_hold_s: float = 4.0) -> None:
        self.preview_fps = preview_fps
        self.result_hold_s = result_hold_s
        self._static = _load_static()
        self._changed = threading.Condition()
        self._resting = "ready"
        self._view = view_for("ready")
        self._until: float | None = None  # monotonic end of a non-resting view
        self._version = 0
        self._frames = threading.Condition()
        self._latest: np.ndarray | None = None
        self._latest_n = 0
        self._jpeg: bytes | None = None
        self._jpeg_n = 0
        self._viewers = 0
        self._closed = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.screen = self
        self.host, self.port = self._server.server_address[:2]
        self._threads = [threading.Thread(target=self._server.serve_forever, name="screen-http",
                                          daemon=True),
                         threading.Thread(target=self._clock, name="screen-clock", daemon=True)]
        if preview_fps > 0:
            self._threads.append(threading.Thread(target=self._encode, name="screen-preview",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("applicant screen at %s (preview %s)", self.url,
                 f"{preview_fps:g} fps" if preview_fps > 0 else "off")

    @property
    def url(self) -> str:
        """The page's address (open it in the kiosk browser)."""
        return f"http://{self.host}:{self.port}/"

    def show(self, state: str, *, reason: str | None = None, action: str | None = None,
             timeout_s: float | None = None, name: str | None = None, room: str | None = None,
             seat: str | None = None) -> None:
        """Show a gate state (see :data:`STATES` and :func:`view_for` for the details each
        takes). ``ready``/``offline`` set the resting state; a result shows for
        ``result_hold_s``, a challenge for its ``timeout_s``, then the resting state returns.

        A fixable-problem hint does not replace a result or a challenge still showing (the
        applicant must get to read it), and the same view shown again only extends its time.
        """
        view = view_for(state, reason=reason, action=action, timeout_s=timeout_s, name=name,
                        room=room, seat=seat)
        with self._changed:
            self._expire()
            now = time.monotonic()
            showing = self._until is not None
            if view.state in RESTING:
                self._resting = view.state
                if not showing:
                    self._view = view
                self._publish()  # the offline banner changes even under a result
                return
            if view.state == "adjust" and showing and self._view.state != "adjust":
                return
            if view.state == "challenge":
                hold = (timeout_s or 0.0) + CHALLENGE_SLACK_S
            elif view.state == "adjust":
                hold = min(ADJUST_HOLD_S, self.result_hold_s)
            else:
                hold = self.result_hold_s
            self._until = now + hold
            if view == self._view and view.state != "challenge":
                self._changed.notify_all()  # the clock re-reads the new end; nothing to push
                return
            self._view = view
            self._publish()
        log.debug("screen shows %s", view.state)  # the state only: never a name

    def preview(self, image: np.ndarray) -> None:
        """Offer the camera's latest frame (BGR); the newest one wins, none is queued."""
        if self.preview_fps <= 0:
            return
        with self._frames:
            self._latest = image
            self._latest_n += 1
            self._frames.notify_all()

    @property
    def state(self) -> dict[str, Any]:
        """What the page shows right now, as the event stream sends it."""
        with self._changed:
            self._expire()
            return self._message()

    def close(self) -> None:
        """Stop serving (open pages show "connecting" until a new server answers)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for condition in (self._changed, self._frames):
            with condition:
                condition.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads[1:]:
            thread.join(timeout=2)

    def __enter__(self) -> Screen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state (under self._changed) --------------------------------------------------------

    def _publish(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def _expire(self) -> None:
        if self._until is not None and time.monotonic() >= self._until:
            self._until = None
            self._view = view_for(self._resting)  # drops the name with the accepted view
            self._publish()

    def _message(self) -> dict[str, Any]:
        def plain(view: View) -> dict[str, Any]:
            return {**asdict(view), "banner": OFFLINE_BANNER if self._resting == "offline"
                    else None, "preview": self.preview_fps > 0}

        message = plain(self._view)
        now = time.monotonic()
        message["version"] = self._version
        message["hold_s"] = None if self._until is None else round(self._until - now, 2)
        message["remaining_s"] = (None if self._view.countdown_s is None or self._until is None
                                  else round(max(0.0, self._until - now - CHALLENGE_SLACK_S), 2))
        message["resting"] = plain(view_for(self._resting))
        return message

    def _clock(self) -> None:
        """Return to the resting state when a view's time is up, and tell the pages."""
        with self._changed:
            while not self._closed.is_set():
                if self._until is None:
                    self._changed.wait()
                    continue
                left = self._until - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                else:
                    self._expire()

    def _events(self, out: BaseHTTPRequestHandler) -> None:
        """Serve one page's event stream until it goes away or the screen closes."""
        out.send_response(200)
        out.send_header("Content-Type", "text/event-stream; charset=utf-8")
        out.send_header("Cache-Control", "no-store")
        out.end_headers()
        out.wfile.write(b"retry: 1000\n\n")
        sent = -1
        while True:
            with self._changed:
                deadline = time.monotonic() + KEEPALIVE_S
                while (self._version == sent and not self._closed.is_set()
                       and time.monotonic() < deadline):
                    self._changed.wait(deadline - time.monotonic())
                if self._closed.is_set():
                    return
                data = None
                if self._version != sent:
                    self._expire()
                    data = json.dumps(self._message(), ensure_ascii=False)
                    sent = self._version
            chunk = f"data: {data}\n\n" if data is not None else ": keepalive\n\n"
            out.wfile.write(chunk.encode())
            out.wfile.flush()

    # -- preview ---------------------------------------------------------------------------

    def _encode(self) -> None:
        """Encode the newest frame at most ``preview_fps`` times a second while a page
        watches."""
        encoded = 0
        interval = 1.0 / self.preview_fps
        while not self._closed.is_set():
            with self._frames:
                while not self._closed.is_set() and (self._latest_n == encoded
                                                     or self._viewers == 0):
                    self._frames.wait(1.0)
                image, encoded = self._latest, self._latest_n
            if image is None or self._closed.is_set():
                continue
            started = time.monotonic()
            try:
                jpeg = encode_preview(image)
            except Exception:  # a malformed frame must not end the preview for good
                log.exception("screen: cannot encode a preview frame")
                jpeg = None
            if jpeg is not None:
                with self._frames:
                    self._jpeg = jpeg
                    self._jpeg_n += 1
                    self._frames.notify_all()
            self._closed.wait(max(0.0, interval - (time.monotonic() - started)))

    def _mjpeg(self, out: BaseHTTPRequestHandler) -> None:
        """Serve the preview as multipart JPEG until the page goes away or the screen closes."""
        if self.preview_fps <= 0:
            out.send_error(404, "preview is off")
            return
        out.send_response(200)
        out.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        out.send_header("Cache-Control", "no-store")
        out.end_headers()
        with self._frames:
            self._viewers += 1
            self._frames.notify_all()
        try:
            sent = 0
            while True:
                with self._frames:
                    while ((self._jpeg is None or self._jpeg_n == sent)
                           and not self._closed.is_set()):
                        self._frames.wait(1.0)
                    if self._closed.is_set():
                        return
                    jpeg, sent = self._jpeg, self._jpeg_n
                assert jpeg is not None
                out.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                out.wfile.flush()
        finally:
            with self._frames:
                self._viewers -= 1
                if self._viewers == 0:
                    self._jpeg = None  # a page opened later must not see an old face


def encode_preview(image: np.ndarray) -> bytes | None:
    """One preview frame: downscaled to :data:`PREVIEW_WIDTH` at most, JPEG-encoded."""
    height, width = image.shape[:2]
    if width > PREVIEW_WIDTH:
        size = (PREVIEW_WIDTH, max(1, round(height * PREVIEW_WIDTH / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_JPEG_QUALITY])
    return buffer.tobytes() if ok else None


_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".js": "text/javascript; charset=utf-8"}
#: Scripts and styles come from the gate only; nothing may frame the page.
_CSP = ("default-src 'self'; img-src 'self'; connect-src 'self'; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files by URL path (read once: they are small and never change at run time)."""
    folder = resources.files("device.screen") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for item in folder.iterdir():
        suffix = item.name[item.name.rfind("."):]
        if suffix in _CONTENT_TYPES:
            files[f"/{item.name}"] = (item.read_bytes(), _CONTENT_TYPES[suffix])
    files["/"] = files["/index.html"]
    return files


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    screen: Screen

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("screen: request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "gerbang-screen"

    def do_GET(self) -> None:
        """The page, its event stream, the preview, or the state as JSON."""
        screen = self.server.screen
        path = urlsplit(self.path).path
        try:
            if path == "/events":
                screen._events(self)
            elif path == "/preview.mjpg":
                screen._mjpeg(self)
            elif path == "/state":
                self._send(json.dumps(screen.state, ensure_ascii=False).encode(),
                           "application/json; charset=utf-8")
            elif path in screen._static:
                self._send(*screen._static[path])
            elif path == "/favicon.ico":
                self.send_response(204)  # no icon in kiosk mode; say so instead of a 404
                self.end_headers()
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away (reload, kiosk restart)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("screen: %s", format % args)
