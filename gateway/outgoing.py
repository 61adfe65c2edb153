"""The ingest process's side of the web tier: publishes the gate commands the web queued in the
store, and writes its counters there for ``/api/stats``.

The web tier runs in a process of its own (so no request can take memory from ingest) and has
no broker connection: under mutual TLS its identity would be the gateway's certificate, and a
second connection with it would take over the ingest's session. Commands therefore go through
the ``gateway_commands`` table; the ingest process that owns the broker connection publishes
them (QoS 1; the broker keeps them for a gate that is offline) and marks each sent on PUBACK.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.ingest import Ingest
    from gateway.store import Store

log = logging.getLogger(__name__)

#: A queued command not acknowledged by the broker this long after it was queued is given up
#: (recorded with the error): a remote unlock an hour late would open for whoever is there.
GIVE_UP_S = 60.0


class OutgoingCommands:
    """A thread publishing queued commands (``publish=True``: only the one process that owns the
    gateway's command path) and recording this ingest's counters every ``counters_s``."""

    def __init__(self, store: Store, ingest: Ingest, client_id: str, *, publish: bool = True,
                 poll_s: float = 0.5, counters_s: float = 2.0) -> None:
        self.store = store
        self.ingest = ingest
        self.client_id = client_id
        self.publish = publish
        self.poll_s = poll_s
        self.counters_s = counters_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outgoing", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step; the counters are written once more."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        next_counters = 0.0
        while not self._stop.wait(self.poll_s):
            try:
                if self.publish:
                    self._publish_queued()
                if time.monotonic() >= next_counters:
                    self.store.record_ingest_counters(self.client_id, asdict(self.ingest.stats))
                    next_counters = time.monotonic() + self.counters_s
            except Exception:
                log.exception("outgoing commands / counters step failed; will retry")
        try:
            self.store.record_ingest_counters(self.client_id, asdict(self.ingest.stats))
        except Exception:
            log.exception("could not record the final ingest counters")

    def _publish_queued(self) -> None:
        if not self.ingest.connected.is_set():
            return
        for command in self.store.unsent_commands():
            age = time.time() - command["created_at"]
            if age > GIVE_UP_S:
                log.error("command %s to %s queued %.0fs ago was never acknowledged by the "
                          "broker; given up", command["name"], command["device_id"], age)
                self.store.mark_command_sent(command["id"], f"not published within "
                                                            f"{GIVE_UP_S:.0f}s")
                continue
            info = self.ingest.send_command(command["centre"], command["device_id"],
                                            command["name"], command["payload"],
                                            command_id=f"gw-{command['id']}")
            info.wait_for_publish(timeout=5)
            if not info.is_published():
                return  # the broker connection is not there after all; try again later
            self.store.mark_command_sent(command["id"])
            log.info("command %s (gw-%d) sent to %s for %s", command["name"], command["id"],
                     command["device_id"], command["requested_by"] or "the gateway")
