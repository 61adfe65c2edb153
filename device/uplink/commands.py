"""Commands from the gateway (``gerbang/v1/{centre}/{device}/cmd/{name}``), each acknowledged
on ``cmd_ack`` with ``ok`` or a reason that names the bad field.

=================  ==========================================================================
``unlock``         release the lock for one pulse (remote unlock by a proctor); recorded as a
                   ``manual_override`` alarm with who and why
``session_close``  wipe this gate's stored templates for the session (``{"session": id}``)
``wipe``           wipe every stored template on this gate
``roster``         install a signed roster pushed by the gateway (``{"roster_b64": …}``): its
                   signature, centre, session, room, model and version are checked first
``models``         install a signed model bundle (``{"bundle_b64": …}``, or in resumable chunks
                   ``{"sha256", "size", "offset", "chunk_b64"}``, each acknowledged with the next
                   offset; ``"force": true`` allows a downgrade or a new embedder): signature,
                   every file's sha256, version, then a self-check; used from the next start of
                   the service, rolled back if it does not start (``device.manage.models``)
``config``         apply a new versioned ``device.toml``: signed by the centre's key
                   (``{"signed_config_b64": …}``), or unsigned (``{"version": N, "config":
                   TOML}``) when it changes only harmless keys (``device.manage.config_keys``);
                   refused unless newer than the reported version, valid as a whole and with
                   the same local-only keys (identity, data folder, key files); swapped in
                   atomically, then the service's workers restart with it
                   (``device.manage.config_push``)
``resend``         publish again the kept outbox rows ``from_seq..to_seq`` of ``stream``
                   (``{"stream", "from_seq", "to_seq"}``, at most ``wire.RESEND_MAX_SPAN``):
                   answered "re-sending N of M (seq A..B); K no longer kept"
                   (``device.uplink.publisher.Uplink.resend``)
``ping``           answer, to check the command path end to end
=================  ==========================================================================

The broker's ACL lets only the gateway publish to a device's ``cmd/`` topics; the device still
validates every payload, because a bad command must never take the gate down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gerbang import wire

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024 * 1024  # a signed roster of a large room, in base64


@dataclass(frozen=True)
class CommandResult:
    """What goes back on ``cmd_ack``."""

    command: str
    ok: bool
    detail: str
    command_id: str | None = None

    @classmethod
    def from_json(cls, name: str, payload: bytes) -> CommandResult:
        """The result ``to_json`` wrote (how a command run in another process comes back)."""
        body = json.loads(payload)
        return cls(body.get("command", name), bool(body.get("ok")), str(body.get("detail", "")),
                   body.get("command_id"))

    def to_json(self) -> bytes:
        """The acknowledgement payload."""
        return json.dumps({"schema": wire.SCHEMA_VERSION, "command": self.command,
                           "command_id": self.command_id, "ok": self.ok, "detail": self.detail,
                           "ts": wire.utc_now_iso()}, separators=(",", ":")).encode()


class CommandError(ValueError):
    """A command the gate refuses; the message names the bad field. ``alarm`` (a
    ``wire.ALARM_KINDS`` kind) when the refusal is itself evidence of an attack, so the gateway
    hears it as an alarm through the outbox and not only as a refused acknowledgement."""

    def __init__(self, message: str, alarm: str | None = None) -> None:
        super().__init__(message)
        self.alarm = alarm


def _text(body: dict[str, Any], name: str, required: bool = True, limit: int = 300) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise CommandError(f"{name}: required, a non-empty string")
    if len(value) > limit:
        raise CommandError(f"{name}: longer than {limit} characters")
    return value


class CommandHandler:
    """Dispatches one command to the gate's parts and says what happened."""

    def __init__(self, session: str, data_dir: Path, grant: Callable[[], None],
                 record_alarm: Callable[[str, str | None], Any],
                 install_roster: Callable[[dict[str, Any]], str] | None = None,
                 install_models: Callable[[dict[str, Any]], str] | None = None,
                 apply_config: Callable[[dict[str, Any]], str] | None = None,
                 resend: Callable[[dict[str, Any]], str] | None = None,
                 wipe_templates: Callable[[str | None], int] | None = None) -> None:
        self.session = session
        self.data_dir = data_dir
        self.grant = grant
        self.record_alarm = record_alarm
        self.install_roster = install_roster
        self.install_models = install_models
        self.apply_config = apply_config
        self.resend = resend
        #: Wipes one session's templates (or all, given None); from ``manage.template_store``,
        #: passed in so the command side does not depend on what it manages.
        self.wipe_templates = wipe_templates

    def _cmd_roster(self, body: dict[str, Any]) -> str:
        if self.install_roster is None:
            raise CommandError("roster: this gate takes no pushed rosters")
        return self.install_roster(body)

    def _cmd_models(self, body: dict[str, Any]) -> str:
        if self.install_models is None:
            raise CommandError("models: this gate takes no pushed model bundles")
        return self.install_models(body)

    def _cmd_config(self, body: dict[str, Any]) -> str:
        if self.apply_config is None:
            raise CommandError("config: this gate takes no pushed config")
        return self.apply_config(body)

    def _cmd_resend(self, body: dict[str, Any]) -> str:
        if self.resend is None:
            raise CommandError("resend: this gate keeps no outbox to re-send from")
        return self.resend(body)

    def handle(self, name: str, payload: bytes) -> CommandResult:
        """Run command ``name``; never raises (the reason goes back to the gateway)."""
        command_id = None
        try:
            if len(payload) > MAX_COMMAND_BYTES:
                raise CommandError(f"payload: larger than {MAX_COMMAND_BYTES} bytes")
            try:
                body = json.loads(payload or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CommandError(f"payload: not JSON ({exc})") from None
            if not isinstance(body, dict):
                raise CommandError("payload: must be a JSON object")
            command_id = body.get("command_id") if isinstance(body.get("command_id"),
                                                              str) else None
            if body.get("schema", wire.SCHEMA_VERSION) != wire.SCHEMA_VERSION:
                raise CommandError(f"schema: unsupported version {body.get('schema')!r}")
            handler = getattr(self, f"_cmd_{name}", None) if name.isidentifier() else None
            if handler is None:
                raise CommandError(f"command: unknown {name[:40]!r} (known: unlock, "
                                   "roster, models, config, resend, session_close, wipe, "
                                   "ping)")
            detail = handler(body)
            log.info("command %s done: %s", name, detail)
            return CommandResult(name, True, detail, command_id)
        except CommandError as exc:
            log.warning("command %s refused: %s", name[:40], exc)
            if exc.alarm:
                self.record_alarm(exc.alarm, f"{name[:40]}: {exc}"[:wire.MAX_TEXT_CHARS])
            return CommandResult(name[:40], False, str(exc), command_id)
        except Exception as exc:  # the gate stays up whatever a command does
            log.exception("command %s failed", name[:40])
            return CommandResult(name[:40], False, f"failed: {type(exc).__name__}", command_id)

    def _cmd_ping(self, body: dict[str, Any]) -> str:
        return "pong"

    def _cmd_unlock(self, body: dict[str, Any]) -> str:
        reason = _text(body, "reason")
        by = _text(body, "by", limit=64)
        self.record_alarm("manual_override", f"remote unlock by {by}: {reason}")
        self.grant()
        return "unlocked for one pulse"

    def _wiper(self, name: str) -> Callable[[str | None], int]:
        if self.wipe_templates is None:
            raise CommandError(f"{name}: this gate keeps no templates")
        return self.wipe_templates

    def _cmd_session_close(self, body: dict[str, Any]) -> str:
        session = _text(body, "session", limit=64)
        if not wire.ID_PATTERN.match(session):
            raise CommandError("session: not a valid session id")
        removed = self._wiper("session_close")(session)
        return f"session {session} closed; {removed} template file(s) wiped"

    def _cmd_wipe(self, body: dict[str, Any]) -> str:
        removed = self._wiper("wipe")(None)
        return f"{removed} template file(s) wiped"
