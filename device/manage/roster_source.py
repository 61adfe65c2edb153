"""Where the gate's roster comes from: signed and encrypted (production) or plain (demo).

Production: rosters arrive signed and encrypted for the room, copied into ``incoming/`` from a
provisioning bundle or pushed over MQTT (the ``roster`` command). Each is verified
(``device.manage.roster_file``) and kept encrypted at rest (``device.manage.template_store``);
templates of other sessions are wiped at start, so a gate never holds more than its current session.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from device.config import DeviceConfig
from device.decide.roster import Roster, RosterError, load_roster
from device.infer.bundle import ModelBundle
from device.manage import chunks
from device.manage.keyfile import read_secret_key
from device.manage.roster_file import OLD_VERSION, RosterRefused, load_roster_public_key
from device.manage.template_store import (
    install_signed_roster,
    load_templates,
    stored_sessions,
    wipe,
)
from device.uplink.outbox import Outbox, roster_high_water

log = logging.getLogger(__name__)

#: Where a roster sent in chunks is assembled (inside the data directory: it is signed and
#: encrypted for the room, like the files in ``incoming/``).
ROSTER_UPLOAD_DIR = "roster-upload"
#: A signed roster of a large hall (500 applicants × 3 templates) is well under 8 MB.
MAX_ROSTER_BYTES = 32 * 1024 * 1024
#: Chunk size the sender uses: small enough for a congested centre Wi-Fi and a broker's
#: default message limits, large enough that a typical room's roster is one or two messages.
ROSTER_CHUNK_BYTES = 256 * 1024


class RosterSource:
    """Loads the roster at start and installs pushed ones, as configured."""

    def __init__(self, config: DeviceConfig, bundle: ModelBundle) -> None:
        self.config = config
        self.embedder_sha256 = bundle.hashes()["embedder"]
        keys = config.keys
        if keys.signed_rosters:
            assert keys.roster_public_key and keys.roster_transport_key and keys.storage_key
            self.public_key = load_roster_public_key(keys.roster_public_key)
            self.transport_key = read_secret_key(keys.roster_transport_key, "roster transport key")
            self.storage_key = read_secret_key(keys.storage_key, "storage key")

    def _high_water(self) -> int | None:
        """The newest roster version this gate installed for its session and room, kept in
        the outbox database (not beside the template file, whose deletion must not reset it)."""
        ident = self.config.gate
        if not self.config.outbox_path.exists():  # reading must not create the outbox
            return None
        outbox = Outbox(self.config.outbox_path)
        try:
            value = outbox.high_water(roster_high_water(ident.session, ident.room))
        finally:
            outbox.close()
        return int(value) if value is not None and value.isdigit() else None

    def _raise_high_water(self, version: int) -> None:
        ident = self.config.gate
        outbox = Outbox(self.config.outbox_path)
        try:
            name = roster_high_water(ident.session, ident.room)
            held = outbox.high_water(name)
            if held is None or not held.isdigit() or int(held) < version:
                outbox.set_high_water(name, str(version))
        finally:
            outbox.close()

    def load(self) -> Roster:
        """The roster to start with (installing any signed roster waiting in ``incoming/``).

        A stored roster older than the gate's high-water mark for its session and room is
        refused (``old_version``): the template file was replaced with an older copy."""
        ident = self.config.gate
        if not self.config.keys.signed_rosters:
            log.warning("plain roster %s (templates unencrypted on disk): configure [keys] "
                        "for an exam centre", self.config.roster_path)
            return plain_without_thresholds(load_roster(self.config.roster_path))
        incoming = self.config.incoming_dir
        for path in sorted(incoming.glob("*.roster.signed")) if incoming.is_dir() else []:
            try:
                self.install(path.read_bytes())
            finally:
                path.unlink()  # verified or refused, never tried twice (the log says which)
        for session in stored_sessions(ident.data_dir):
            if session != ident.session:
                wipe(ident.data_dir, session)  # another session's templates: not needed here
        try:
            roster = load_templates(ident.data_dir, ident.session, ident.room, self.storage_key)
        except FileNotFoundError:
            raise RosterError(f"no roster for session {ident.session} room {ident.room}: copy "
                              f"its .roster.signed into {incoming} or push it from the "
                              "gateway") from None
        high_water = self._high_water()
        if high_water is not None and roster.version < high_water:
            raise RosterRefused(OLD_VERSION, f"the stored roster for session {ident.session} "
                                f"room {ident.room} is v{roster.version}, but this gate already "
                                f"installed v{high_water}: its template file was replaced with "
                                f"an older copy. Copy the current signed roster (v{high_water} "
                                f"or newer) into {self.config.incoming_dir} and restart")
        self._raise_high_water(roster.version)  # a gate from before high-water marks
        return roster

    def install(self, blob: bytes) -> Roster:
        """Verify a signed roster and store it encrypted; RosterRefused says why not (also
        ``old_version`` for a roster older than the high-water mark, even when the stored file
        was deleted)."""
        ident = self.config.gate
        roster = install_signed_roster(
            blob, data_dir=ident.data_dir, storage_key=self.storage_key,
            public_key=self.public_key, transport_key=self.transport_key, centre=ident.centre,
            session=ident.session, room=ident.room, embedder_sha256=self.embedder_sha256,
            min_version=self._high_water())
        self._raise_high_water(roster.version)
        return roster

    def push_handler(self, use: Callable[[Roster], None]) -> Callable[[dict[str, Any]], str]:
        """The ``roster`` command: ``{"roster_b64": …}``, or the signed roster in chunks
        (``{"sha256", "size", "offset", "chunk_b64"}``, see :mod:`device.manage.chunks`) → verify,
        store encrypted, start using it."""

        def handle(body: dict[str, Any]) -> str:
            from device.uplink.commands import CommandError

            if not self.config.keys.signed_rosters:
                raise CommandError("roster: this gate has no [keys]; it takes no pushed rosters")
            if "chunk_b64" in body:
                blob, progress = chunks.receive_chunk(
                    self.config.gate.data_dir / ROSTER_UPLOAD_DIR, body, MAX_ROSTER_BYTES,
                    what="roster")
                if blob is None:
                    return progress
            else:
                encoded = body.get("roster_b64")
                if not isinstance(encoded, str):
                    raise CommandError("roster_b64: required, the signed roster in base64 (or "
                                       "sha256, size, offset and chunk_b64 to send it in "
                                       "chunks)")
                try:
                    blob = base64.b64decode(encoded, validate=True)
                except ValueError:
                    raise CommandError("roster_b64: not valid base64") from None
            try:
                roster = self.install(blob)
            except RosterError as exc:
                raise CommandError(str(exc)) from None
            use(roster)
            return f"roster v{roster.version} installed: {len(roster.entries)} applicants"

        return handle


def plain_without_thresholds(roster: Roster) -> Roster:
    """A plain (unsigned) roster with any calibration block dropped: nothing vouches for its
    thresholds, so the gate keeps the model bundle's calibration (plain rosters are for the demo
    and development; a gate with [keys] reads only signed ones)."""
    if roster.calibration is None:
        return roster
    log.warning("plain roster carries a calibration (%s); ignored: a gate takes thresholds "
                "only from a signed roster", roster.calibration.source)
    return replace(roster, calibration=None)


def roster_path_hint(config: DeviceConfig) -> Path:
    """Where a technician should look when the gate has no roster."""
    return config.incoming_dir if config.keys.signed_rosters else config.roster_path
