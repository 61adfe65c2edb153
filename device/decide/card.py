"""The participant card (kartu peserta): reading its QR code from the gate camera's own frame.

The QR carries the applicant id, either bare or as ``GERBANG:1:<applicant id>``. The gate then
compares the live face with that one applicant's template (1:1) instead of searching the room.
zxing-cpp is a maintained C++ decoder with Python wheels for x86 and aarch64; it reads a QR held
up to a 640×480 camera in a few milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
import zxingcpp

CARD_PREFIX = "GERBANG:1:"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CardRead:
    """A participant card seen in a frame."""

    applicant_id: str
    #: Corner points of the QR in frame pixels (to draw on the applicant screen).
    corners: tuple[tuple[int, int], ...]


def parse_card_text(text: str) -> str | None:
    """The applicant id in a card's QR text, or None when the text is not a Gerbang card."""
    text = text.strip()
    if text.startswith(CARD_PREFIX):
        text = text[len(CARD_PREFIX):]
    return text if _ID.match(text) else None


def read_card(image: np.ndarray) -> CardRead | None:
    """Find and decode a participant card QR in a BGR frame; None when there is none."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    for code in zxingcpp.read_barcodes(grey, formats=zxingcpp.BarcodeFormat.QRCode):
        applicant_id = parse_card_text(code.text) if code.valid else None
        if applicant_id:
            pos = code.position
            corners = tuple((int(p.x), int(p.y)) for p in
                            (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left))
            return CardRead(applicant_id, corners)
    return None


def card_qr_image(applicant_id: str, module_px: int = 6) -> np.ndarray:
    """The QR code for a card (grey uint8, white quiet zone included)."""
    if not _ID.match(applicant_id):
        raise ValueError(f"applicant id {applicant_id!r} cannot go on a card")
    barcode = zxingcpp.create_barcode(CARD_PREFIX + applicant_id, zxingcpp.BarcodeFormat.QRCode)
    return np.array(barcode.to_image(scale=module_px))


def render_card(applicant_id: str, name: str = "", session: str = "", room: str = "",
                ) -> np.ndarray:
    """A printable participant card (BGR): title, applicant details and the QR code.

    Used by the demo and rehearsals to show cards to simulated gates, and by tests.
    """
    card = np.full((340, 560, 3), 255, np.uint8)
    cv2.rectangle(card, (0, 0), (559, 60), (92, 61, 11), -1)
    cv2.putText(card, "KARTU PESERTA / PARTICIPANT CARD", (16, 40), cv2.FONT_HERSHEY_SIMPLEX,
                0.7, (255, 255, 255), 2, cv2.LINE_AA)
    lines = [f"ID: {applicant_id}", name, f"Sesi/Session: {session}", f"Ruang/Room: {room}"]
    for i, text in enumerate(t for t in lines if t):
        cv2.putText(card, text, (16, 110 + 40 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (0, 0, 0), 1,
                    cv2.LINE_AA)
    qr = cv2.cvtColor(card_qr_image(applicant_id, module_px=6), cv2.COLOR_GRAY2BGR)
    size = min(qr.shape[0], 250)
    qr = cv2.resize(qr, (size, size), interpolation=cv2.INTER_NEAREST)
    card[75:75 + size, 560 - 16 - size:560 - 16] = qr
    return card


def present_with_card(face_image: np.ndarray, card: np.ndarray) -> np.ndarray:
    """One camera frame of an applicant holding their card beside their face (simulations).

    The card is scaled to the frame's height (at least 300 px, so its QR modules stay several
    pixels wide, as a card held at arm's length is to a 720p camera) and placed to the right.
    """
    height = max(face_image.shape[0], 300)
    card_w = int(card.shape[1] * height / card.shape[0])
    small = cv2.resize(card, (card_w, height), interpolation=cv2.INTER_AREA)
    face = face_image if face_image.ndim == 3 else cv2.cvtColor(face_image, cv2.COLOR_GRAY2BGR)
    canvas = np.full((height, face.shape[1] + card_w, 3), 128, np.uint8)
    top = (height - face.shape[0]) // 2
    canvas[top:top + face.shape[0], :face.shape[1]] = face
    canvas[:, face.shape[1]:] = small
    return canvas
