"""The exam-day script: the centre, who the applicants are, and what each does when.

The morning's parameters (the real 30-minute window and how it is compressed, the mix of
proxies, late arrivals, wrong rooms, poor captures...), the people in it (:class:`Applicant`,
the frames they show as :class:`Attempt`, each arrival at a gate as :class:`DoorVisit`) and the
seeded plan that seats the applicants and schedules the arrivals (:func:`make_plan`).

Time is compressed: the doors-open window of :data:`REAL_WINDOW_S` runs in ``--window-s``, and
so do the network cut (5 minutes) and a Pi's boot. The gates' MQTT keep-alive is shortened to
:data:`GATE_KEEPALIVE_S` for the same reason. Liveness is off (the gates replay stills), so a
photo attack here shows the applicant's own enrollment photo and is reported as what it is;
liveness is measured by ``gerbang-device pad-eval`` (docs/liveness.md).
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rehearsal")


CENTRE = "rehearsal"
SESSION = "EXAM-DAY-1"
#: The doors-open window a real morning has (the issue's 30 minutes); ``--window-s`` compresses it.
REAL_WINDOW_S = 30 * 60.0
#: The network cut the issue asks for, in real time; scaled with the window.
REAL_CUT_S = 5 * 60.0
#: A Raspberry Pi's power-on to gate-service start, in real time; scaled with the window.
REAL_BOOT_S = 40.0
#: ``RestartSec`` of systemd/gerbang-device.service and a gateway's unit: not scaled (a process
#: start on this machine is not faster for a compressed morning).
RESTART_SEC = 2.0
#: The gates' MQTT keep-alive in the rehearsal (30 s at a centre): short enough that a scaled
#: network cut is long enough for both ends to notice it, as a 5-minute cut is at a centre.
GATE_KEEPALIVE_S = 10
#: Doors close this fraction of the window after the exam starts (late arrivals come then).
LATE_FRACTION = 1 / 3
#: How long an applicant waits at the gate for a decision after their frame was taken.
DECISION_WAIT_S = 6.0
#: Refusals of a genuine applicant before the proctor checks the KTP and admits them by hand.
MAX_GENUINE_TRIES = 3
#: The morning's mix, as fractions of the applicants (each at least one when there are enough).
MIX = {"absent": 0.03, "proxy": 0.03, "late": 0.05, "wrong_room": 0.04, "poor_capture": 0.06,
       "photo_attack": 0.02, "stranger": 0.03}
#: Default doors-open window in seconds: the 30 minutes compressed 6×. Measured on the 2-core
#: machine, the default run then takes 7-9 minutes in all (docs/rehearsal.md).
DEFAULT_WINDOW_S = 300.0
#: Frames per second of each simulated camera (an empty hallway costs the gate one detection).
DEFAULT_CAMERA_FPS = 1.0
#: How the camera fails to see someone well, in turn, and the refusal each should cause.
POOR_CAPTURES = ("dark", "blurred", "cut")
QUALITY_REASONS = {"too_dark", "blurred", "face_cut_off", "face_too_small", "off_frontal",
                   "overexposed", "multiple_faces"}


@dataclass
class Applicant:
    """One registered applicant: who they are (a face folder) and where they sit."""

    applicant_id: str
    person: str
    photos: list[Path]
    room: str = ""

    @property
    def enrollment_photos(self) -> list[Path]:
        """The three registration photos the roster is enrolled from."""
        return self.photos[:3]

    @property
    def probe_photos(self) -> list[Path]:
        """Photos never enrolled: what the gate camera 'sees' of them on the day."""
        return self.photos[3:]


@dataclass
class Attempt:
    """One frame shown to a gate, and what the gate did with it."""

    face_of: str  # the person (face folder) in front of the camera
    photo: Path
    #: good | dark | blurred | cut | recapture | enrollment_photo
    capture: str = "good"
    card: str | None = None  # applicant id on the card held up (None: no card, 1:N)
    cut_x: int = 0  # for ``cut``: the column where the frame's edge runs through the face
    # What happened (filled in at the door):
    frame_ref: str | None = None
    shown_at: float | None = None  # seconds after doors open, when the camera took it
    outcome: str | None = None  # accepted | refused | None (no decision seen)
    reason: str | None = None
    applicant_id: str | None = None
    seq: int | None = None
    note: str = ""


@dataclass
class DoorVisit:
    """Someone arriving at one gate at one time, with the frames they may show."""

    kind: str  # on_time | late | wrong_room | proxy | stranger | photo_attack
    gate: str  # device id
    at_s: float  # seconds after doors open
    person: str
    #: Whose record this visit is about: their own id, the proxy's victim, the attack's target.
    applicant_id: str | None
    attempts: list[Attempt]
    #: Whether this person is genuinely entitled at this gate (retries, then the proctor).
    genuine: bool = False
    poor_capture: str | None = None
    after: threading.Event | None = None  # wait for this (the wrong-room attempt) first
    done: threading.Event = field(default_factory=threading.Event)
    shown: list[Attempt] = field(default_factory=list)
    admitted_at: float | None = None  # seconds after doors open
    admitted_by: str | None = None  # "gate" | "proctor"
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class Plan:
    """The centre, the rosters and the morning."""

    rooms: list[str]
    gates: dict[str, list[str]]  # room → device ids
    applicants: dict[str, Applicant]  # enrolled, on a roster
    visits: list[DoorVisit]
    no_shows: list[str]
    victims: dict[str, str]  # applicant id → the proxy's person
    outsiders: list[str]  # people on no roster (proxies and strangers)


def applicant_id_for(person: str) -> str:
    """A wire-safe applicant id for a face folder name (``7201`` → ``P-7201``)."""
    return "P-" + re.sub(r"[^A-Za-z0-9_.-]", "_", person)[:60]


def room_names(count: int) -> list[str]:
    """``R01`` … ``Rnn``."""
    return [f"R{n:02d}" for n in range(1, count + 1)]


def gate_ids(room: str, per_room: int) -> list[str]:
    """Device ids of a room's gates: ``rehearsal-r01-a``, ``…-b``."""
    return [f"{CENTRE}-{room.lower()}-{chr(ord('a') + n)}" for n in range(per_room)]


def _count(fraction: float, total: int) -> int:
    """How many of ``total`` applicants play a part of the mix (none in a tiny centre)."""
    return max(1, round(fraction * total)) if total >= 6 else 0


def choose_people(people: dict[str, list[Path]], applicants: int | None, seed: int,
                  ) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Split the faces into applicants (≥ 4 photos: 3 to enroll, the rest for the gate) and
    outsiders (the people on no roster: proxies and strangers).

    People with 2-3 photos are outsiders; when there are too few of them for the mix, some
    would-be applicants are held back as outsiders too (logged).
    """
    rng = random.Random(seed)
    eligible = sorted(p for p, photos in people.items() if len(photos) >= 4)
    others = sorted(p for p, photos in people.items() if 2 <= len(photos) < 4)
    wanted = min(applicants or len(eligible), len(eligible))
    need_outsiders = _count(MIX["proxy"], wanted) + _count(MIX["stranger"], wanted)
    short = max(0, need_outsiders - (len(others) + len(eligible) - wanted))
    if short:
        wanted -= short
        log.info("%d fewer applicants than asked: they play proxies and people on no roster",
                 short)
    chosen = sorted(rng.sample(eligible, wanted))
    spare = [p for p in eligible if p not in set(chosen)]
    if len(others) < need_outsiders:
        moved = rng.sample(spare, min(len(spare), need_outsiders - len(others)))
        log.info("only %d people with 2-3 photos to play outsiders; %d more with 4+ photos "
                 "play them instead", len(others), len(moved))
        others += moved
    return ({p: people[p] for p in chosen}, {p: people[p] for p in others})


def make_plan(applicants: dict[str, Applicant], outsiders: dict[str, list[Path]], rooms: int,
              gates_per_room: int, window_s: float, seed: int,
              cut_at: Callable[[Path], int | None] = lambda photo: None) -> Plan:
    """Seat the enrolled applicants in rooms, decide who does what, and when.

    ``cut_at(photo)`` says where a frame edge would cut the face in a photo (for the ``cut``
    poor captures); when it cannot, that applicant gets a dark capture instead.
    """
    rng = random.Random(seed + 1)
    names = room_names(rooms)
    gates = {room: gate_ids(room, gates_per_room) for room in names}
    ids = sorted(applicants)
    rng.shuffle(ids)
    for n, aid in enumerate(ids):
        applicants[aid].room = names[n % rooms]
    total = len(ids)
    late_s = window_s * LATE_FRACTION
    pool = list(ids)

    def take(kind: str) -> list[str]:
        n = min(_count(MIX[kind], total), len(pool))
        picked, pool[:] = pool[:n], pool[n:]
        return picked

    no_shows = take("absent")
    victims_ids = take("proxy")
    late = take("late")
    wrong = take("wrong_room") if rooms > 1 else []
    poor = take("poor_capture")
    on_time = pool  # the rest, including poor captures and wrong-room people below
    outsider_names = sorted(outsiders)
    rng.shuffle(outsider_names)
    victims = dict(zip(victims_ids, outsider_names, strict=False))
    strangers = outsider_names[len(victims):][: _count(MIX["stranger"], total)]
    visits: list[DoorVisit] = []
    gate_turn: dict[str, int] = Counter()

    def gate_of(room: str) -> str:
        choice = gates[room][gate_turn[room] % len(gates[room])]
        gate_turn[room] += 1
        return choice

    def genuine_attempts(applicant: Applicant) -> list[Attempt]:
        probes = applicant.probe_photos
        return [Attempt(applicant.person, probes[n % len(probes)],
                        "good" if n < len(probes) else "recapture", applicant.applicant_id)
                for n in range(MAX_GENUINE_TRIES)]

    arrivals = {aid: rng.triangular(0.03 * window_s, 0.8 * window_s, 0.35 * window_s)
                for aid in on_time + wrong + poor}
    for aid in late:
        arrivals[aid] = window_s + rng.uniform(0.1, 0.6) * late_s
    poor_turn = 0
    for aid in sorted(on_time + late + wrong + poor):
        applicant = applicants[aid]
        attempts = genuine_attempts(applicant)
        visit = DoorVisit("late" if aid in late else "on_time", gate_of(applicant.room),
                          arrivals[aid], applicant.person, aid, attempts, genuine=True)
        if aid in poor:
            kind = POOR_CAPTURES[poor_turn % len(POOR_CAPTURES)]
            poor_turn += 1
            cut_x = cut_at(applicant.probe_photos[0]) if kind == "cut" else None
            if kind == "cut" and not cut_x:
                kind = "dark"
            visit.poor_capture = kind
            visit.attempts.insert(0, Attempt(applicant.person, applicant.probe_photos[0], kind,
                                             aid, cut_x=cut_x or 0))
        if aid in wrong:
            other = rng.choice([r for r in names if r != applicant.room])
            wrong_visit = DoorVisit("wrong_room", gate_of(other), arrivals[aid],
                                    applicant.person, aid,
                                    [Attempt(applicant.person, applicant.probe_photos[0],
                                             "good", aid)])
            visits.append(wrong_visit)
            visit.after = wrong_visit.done
            visit.at_s = arrivals[aid] + max(3.0, 0.03 * window_s)  # the walk to the right room
        visits.append(visit)
    for aid, joki in victims.items():
        photos = outsiders[joki]
        room = applicants[aid].room
        visits.append(DoorVisit("proxy", gate_of(room), rng.uniform(0.05, 0.75) * window_s, joki,
                                aid, [Attempt(joki, photos[n % len(photos)], "good", aid)
                                      for n in range(2)]))
    for n, stranger in enumerate(strangers):
        photos = outsiders[stranger]
        card = None if n % 2 else applicant_id_for(f"X{stranger}")  # another session's card
        room = rng.choice(names)
        visits.append(DoorVisit("stranger", gate_of(room), rng.uniform(0.05, 0.75) * window_s,
                                stranger, None,
                                [Attempt(stranger, photos[k % len(photos)], "good", card)
                                 for k in range(2)]))
    targets = [v for v in visits if v.kind == "on_time" and v.poor_capture is None
               and v.after is None and v.at_s < 0.6 * window_s]
    rng.shuffle(targets)
    for target in targets[: _count(MIX["photo_attack"], total)]:
        applicant = applicants[target.applicant_id or ""]
        visits.append(DoorVisit(
            "photo_attack", target.gate, min(target.at_s + 0.08 * window_s, 0.8 * window_s),
            f"photo of {applicant.person}", applicant.applicant_id,
            [Attempt(applicant.person, applicant.enrollment_photos[0], "enrollment_photo",
                     applicant.applicant_id)]))
    visits.sort(key=lambda v: v.at_s)
    return Plan(names, gates, applicants, visits, no_shows, victims,
                sorted(set(victims.values()) | set(strangers)))
