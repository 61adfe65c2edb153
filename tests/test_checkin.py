"""Gate decisions with and without a card: 1:1, 1:N, proxies and strangers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.capture import Frame
from device.capture.replay import read_image
from device.config import GateIdentity, QualityConfig
from device.decide.card import present_with_card, read_card, render_card
from device.decide.checkin import CheckinLoop, MatchPolicy
from device.decide.roster import Roster, RosterEntry
from device.gate.door import DoorSignal
from device.infer.bundle import calibrated_threshold, load_bundle
from device.uplink.outbox import Outbox
from gerbang import wire
from provisioning.enroll import template_from_photos


def test_card_qr_round_trip_and_foreign_codes():
    card = render_card("A-00042", "Siti Rahayu", "S1", "R01")
    assert read_card(card).applicant_id == "A-00042"
    frame = present_with_card(np.full((240, 200, 3), 90, np.uint8), card)
    found = read_card(frame)
    assert found.applicant_id == "A-00042" and len(found.corners) == 4
    assert read_card(np.full((240, 320, 3), 255, np.uint8)) is None


@pytest.fixture(scope="module")
def people(faces_root, pipeline):
    """Five ORL people: photos 0-2 enroll, photo 5 is shown at the gate."""
    folders = sorted(p for p in (faces_root / "orl").iterdir() if p.is_dir())[:5]
    out = {}
    for folder in folders:
        photos = sorted(folder.iterdir())
        template, _ = template_from_photos(pipeline, photos[:3])
        out[folder.name] = {"template": template, "probe": read_image(photos[5])}
    return out


@pytest.fixture
def gate(tmp_path, pipeline, people):
    Device.pin_factory = MockFactory()
    door = DoorSignal(17, 27, 22, pulse_s=0.5)
    enrolled = list(people)[:4]  # the fifth person is not on the roster
    roster = Roster("S1", "R01", 1, tuple(RosterEntry(p, "", people[p]["template"])
                                          for p in enrolled))

    def make(require_card=False):
        threshold = calibrated_threshold(load_bundle(), roster.gallery().score_kind, 1e-4)
        return CheckinLoop(pipeline, roster, MatchPolicy(threshold, require_card),
                           QualityConfig(), door, Outbox(tmp_path / f"o{require_card}.sqlite"),
                           GateIdentity("c1-r01-a", "c1", "R01", "S1", tmp_path))

    yield make
    door.close()
    Device.pin_factory.reset()


def shown(image, card_id=None):
    if card_id:
        image = present_with_card(image, render_card(card_id))
    return Frame(image=image, ts=time.time(), index=0)


def ids(people):
    return list(people)


@pytest.mark.faces
def test_own_card_opens_the_door(gate, people):
    loop = gate()
    a = ids(people)[0]
    decision = loop.handle(shown(people[a]["probe"], a), report_no_face=True)
    assert (decision.outcome, decision.mode, decision.applicant_id, decision.card_id) == (
        "accepted", "1:1", a, a)
    assert loop.door.unlocked
    event = wire.parse_event(loop.outbox.pending()[0].payload)
    assert event.card_id == a and event.mode == "1:1" and event.outcome == "accepted"


@pytest.mark.faces
def test_someone_elses_card_is_flagged_as_a_proxy(gate, people):
    a, b = ids(people)[:2]
    decision = gate().handle(shown(people[b]["probe"], a), report_no_face=True)
    assert (decision.outcome, decision.reason, decision.card_id) == (
        "refused", "duplicate_identity", a)


@pytest.mark.faces
def test_stranger_with_a_card_and_card_not_on_roster(gate, people):
    a, stranger = ids(people)[0], ids(people)[4]
    loop = gate()
    decision = loop.handle(shown(people[stranger]["probe"], a), report_no_face=True)
    assert (decision.outcome, decision.reason) == ("refused", "no_match")
    decision = loop.handle(shown(people[a]["probe"], "Z-999"), report_no_face=True)
    assert (decision.outcome, decision.reason) == ("refused", "not_on_roster")
    assert not loop.door.unlocked


@pytest.mark.faces
def test_without_a_card_1_to_n_or_refused_by_policy(gate, people):
    a, stranger = ids(people)[1], ids(people)[4]
    open_loop = gate(require_card=False)
    decision = open_loop.handle(shown(people[a]["probe"]), report_no_face=True)
    assert (decision.outcome, decision.mode, decision.applicant_id) == ("accepted", "1:N", a)
    decision = open_loop.handle(shown(people[stranger]["probe"]), report_no_face=True)
    assert (decision.outcome, decision.reason) == ("refused", "no_match")
    strict = gate(require_card=True)
    decision = strict.handle(shown(people[a]["probe"]), report_no_face=True)
    assert (decision.outcome, decision.reason) == ("refused", "no_card")
