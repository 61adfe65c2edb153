"""The faults injected during the morning, and how the centre came back from each.

Five, spread over the doors-open window and none overlapping: a gate's check-in worker killed
mid-decision, the broker restarted, one gate's network cut (through :class:`CuttableLink`), the
gateway killed with -9, one gate's power cut. Each gate fault is aimed at the gate that expects
the most arrivals around it; each fault is recorded (:class:`Fault`) with when the component
came back and what it cost.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from gerbang.broker import MosquittoBroker, free_port
from gerbang.rehearsal.doors import Morning
from gerbang.rehearsal.fleet import CHECKIN_READY, GatewayRunner, wait_for
from gerbang.rehearsal.scenario import REAL_BOOT_S, REAL_CUT_S, REAL_WINDOW_S, RESTART_SEC, Plan

log = logging.getLogger("rehearsal")


class CuttableLink:
    """A TCP relay between one gate and the broker whose line can be cut, as a cable pulled.

    While cut, nothing moves in either direction (bytes already sent wait, as TCP would
    retransmit them once the line is back) and new connections are refused (the listener is
    closed); both ends notice through their MQTT keep-alive. TLS-agnostic: it relays bytes.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections = 0
        self.held_chunks = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="link-accept", daemon=True)

    def start(self) -> CuttableLink:
        """Listen on :attr:`port` and relay to the broker."""
        self._listen()
        self._thread.start()
        return self

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.3)
        self._listener = listener

    def _accept(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.1)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()  # the broker is down: refused, as it would be directly
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self.connections += 1
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="link-pump",
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not self._flowing.is_set():
                    self.held_chunks += 1
                    self._flowing.wait()
                if not data or self._stop.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
                with self._lock:
                    self._sockets.discard(sock)

    def cut(self) -> None:
        """Pull the cable."""
        self._flowing.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def restore(self) -> None:
        """Plug it back in."""
        self._listen()
        self._flowing.set()

    def close(self) -> None:
        """Stop relaying and close every connection."""
        self._stop.set()
        self._flowing.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                sock.close()


@dataclass
class Fault:
    """One injected fault and what became of it."""

    kind: str  # gate_kill | broker_restart | network_cut | gateway_kill | gate_power_cut
    at_s: float  # planned, seconds after doors open
    target: str
    duration_s: float  # time down / cut
    title: str
    started_s: float | None = None
    ended_s: float | None = None  # when the component was started again / the line restored
    recovered_s: float | None = None  # when it worked again (camera reading, drained, ...)
    detail: str = ""
    survived: bool | None = None


def plan_faults(plan: Plan, window_s: float) -> list[Fault]:
    """The fault schedule: five faults spread over the doors-open window, none overlapping,
    each aimed at the gate that expects the most arrivals around it."""
    compression = REAL_WINDOW_S / window_s
    cut_s = REAL_CUT_S / compression
    boot_s = max(RESTART_SEC + 1.0, REAL_BOOT_S / compression)
    load: dict[str, list[float]] = defaultdict(list)
    for visit in plan.visits:
        load[visit.gate].append(visit.at_s)
    used: list[str] = []

    def busiest(start: float, end: float) -> str:
        ranked = sorted(load, key=lambda g: (-sum(start <= t <= end for t in load[g]),
                                             g in used, g))
        pick = next((g for g in ranked if g not in used), ranked[0])
        used.append(pick)
        return pick

    cut_at = 0.32 * window_s
    return [
        Fault("gate_kill", 0.10 * window_s, busiest(0.10 * window_s, 0.2 * window_s),
              RESTART_SEC, "a gate's check-in process killed (kill -9) mid-decision; the "
              "gate's own supervisor restarts it"),
        Fault("broker_restart", 0.22 * window_s, "mosquitto", 1.0,
              "broker restarted (systemctl restart mosquitto)"),
        Fault("network_cut", cut_at, busiest(cut_at, cut_at + cut_s), cut_s,
              f"gate network cut for {cut_s:.0f} s (the 5 minutes, compressed "
              f"{compression:.1f}×)"),
        Fault("gateway_kill", 0.55 * window_s, "gateway", RESTART_SEC,
              "gateway killed (kill -9), restarted as systemd does"),
        Fault("gate_power_cut", 0.68 * window_s, busiest(0.68 * window_s, 0.8 * window_s),
              boot_s, f"gate power cut (kill -9, off {boot_s:.0f} s: a Pi's boot, compressed)"),
    ]


def run_faults(morning: Morning, faults: list[Fault], broker: MosquittoBroker,
               gateway: GatewayRunner, link: CuttableLink | None, env: dict[str, str],
               samples: list[dict[str, Any]]) -> None:
    """Inject each fault at its time and record how the centre came back."""
    for fault in faults:
        if not morning.wait_until(fault.at_s):
            return
        fault.started_s = morning.rel()
        log.warning("FAULT at T+%.0fs: %s (%s)", fault.started_s, fault.title, fault.target)
        try:
            _inject(morning, fault, broker, gateway, link, env, samples)
        except Exception as exc:
            log.exception("fault %s could not be injected or recovered", fault.kind)
            fault.detail += f" injection failed: {exc}"
            fault.survived = False
        if fault.recovered_s is not None and fault.survived is None:
            fault.survived = True
        log.warning("fault %s: %s", fault.kind, fault.detail)


def _inject(morning: Morning, fault: Fault, broker: MosquittoBroker, gateway: GatewayRunner,
            link: CuttableLink | None, env: dict[str, str],
            samples: list[dict[str, Any]]) -> None:
    if fault.kind == "gate_kill":
        rig = morning.rigs[fault.target]
        # Aim at the worst moment: an applicant's frame taken, the decision not yet read. The
        # process that holds it is the check-in worker; the gate's supervisor restarts it.
        busy = rig.deciding.wait(min(30.0, 0.1 * morning.window_s))
        fault.started_s = morning.rel()
        before = rig.read_outbox() or {}
        ready_before = rig.log_count(CHECKIN_READY)
        pid = rig.kill_worker("checkin")
        deadline = time.monotonic() + 180
        while (rig.log_count(CHECKIN_READY) <= ready_before and time.monotonic() < deadline
               and not morning.stop.is_set()):
            time.sleep(0.1)
        fault.ended_s = morning.rel()
        rig.alive = True  # the camera's next read of the feed sets rig.up
        if rig.up.wait(60):
            fault.recovered_s = morning.rel()
        after = rig.read_outbox() or {}
        new_pid = rig.workers().get("checkin")
        fault.detail = (("killed while an applicant's frame was being judged"
                         if busy else "killed while nobody was at the door") +
                        f"; check-in worker pid {pid} killed with SIGKILL; the gate's "
                        f"supervisor restarted it (pid {new_pid}), judging again after "
                        f"{fault.ended_s - (fault.started_s or 0):.1f} s; the door, uplink and "
                        f"camera workers ran on; its outbox's next seq was "
                        f"{before.get('appended', '?')} before and "
                        f"{after.get('appended', '?')} after")
    elif fault.kind == "gate_power_cut":
        rig = morning.rigs[fault.target]
        busy = rig.deciding.wait(min(30.0, 0.1 * morning.window_s))
        fault.started_s = morning.rel()
        before = rig.read_outbox() or {}
        pid = rig.kill()
        morning.stop.wait(fault.duration_s)
        rig.start(env)
        fault.ended_s = morning.rel()
        if rig.up.wait(180):
            fault.recovered_s = morning.rel()
        after = rig.read_outbox() or {}
        fault.detail = (("cut while an applicant's frame was being judged"
                         if busy else "cut while nobody was at the door") +
                        f"; supervisor pid {pid} and all its workers killed with SIGKILL at "
                        f"once; started again after "
                        f"{fault.ended_s - (fault.started_s or 0):.1f} s; camera running "
                        f"{(fault.recovered_s or fault.ended_s) - fault.ended_s:.1f} s later; "
                        f"its outbox's next seq was {before.get('appended', '?')} before and "
                        f"{after.get('appended', '?')} after")
    elif fault.kind == "broker_restart":
        broker.stop()
        morning.stop.wait(fault.duration_s)
        broker.start()
        fault.ended_s = fault.recovered_s = morning.rel()
        fault.detail = (f"SIGTERM (state saved), down {fault.ended_s - (fault.started_s or 0):.1f}"
                        f" s, started again on port {broker.port} with the same data")
    elif fault.kind == "gateway_kill":
        pid = gateway.kill()
        morning.stop.wait(fault.duration_s)
        gateway.start(env)
        fault.ended_s = fault.recovered_s = morning.rel()
        fault.detail = (f"pid {pid} killed with SIGKILL; started again and serving after "
                        f"{fault.ended_s - (fault.started_s or 0):.1f} s")
    elif fault.kind == "network_cut":
        assert link is not None
        rig = morning.rigs[fault.target]
        link.cut()
        morning.stop.wait(fault.duration_s)
        link.restore()
        fault.ended_s = morning.rel()
        drained = wait_for(lambda: (rig.read_outbox() or {}).get("depth", 1) == 0, 180,
                           morning.stop)
        if drained:
            fault.recovered_s = morning.rel()
        until = fault.recovered_s if fault.recovered_s is not None else morning.rel()
        peak = max((s["outbox"].get(rig.device_id, 0) for s in list(samples)
                    if (fault.started_s or 0) <= s["t"] <= until), default=0)
        fault.detail = (f"relay stopped for {fault.ended_s - (fault.started_s or 0):.1f} s; "
                        f"up to {peak} check-ins waited in the gate's outbox (during the cut "
                        "and the reconnection); "
                        + (f"all delivered {fault.recovered_s - fault.ended_s:.1f} s after the "
                           "line came back (the gate retries its connection with a back-off of "
                           "up to 30 s)" if drained else "NOT delivered within 180 s"))
