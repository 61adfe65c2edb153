"""The outbox keeps every event durably, in seq order, until it is acknowledged."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from device.outbox import Outbox


def append(outbox: Outbox, body: bytes = b"x") -> int:
    return outbox.append(lambda seq: ("t", body + str(seq).encode()))


def test_seq_is_gapless_and_survives_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    assert [append(box) for _ in range(3)] == [0, 1, 2]
    box.remove([0, 1])
    box.close()
    box = Outbox(path)
    assert append(box) == 3  # never reuses a seq, even after deletions
    assert [e.seq for e in box.pending()] == [2, 3]
    assert box.pending(after_seq=2)[0].payload == b"x3"
    assert box.counters() == {"appended": 4, "acked": 2}


def test_a_failing_builder_leaves_no_row_and_no_seq(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")

    def broken(seq):
        raise ValueError("boom")

    try:
        box.append(broken)
    except ValueError:
        pass
    assert box.depth() == 0
    assert append(box) == 0


def test_committed_event_survives_kill_9(tmp_path):
    """Power-cut stand-in: the process dies right after commit, before any publish."""
    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        from device.outbox import Outbox
        box = Outbox({str(path)!r})
        for i in range(50):
            box.append(lambda seq: ("t", b"event-%d" % seq))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    box = Outbox(path)
    assert [e.seq for e in box.pending(limit=100)] == list(range(50))
    assert box.pending(after_seq=48)[0].payload == b"event-49"


def test_bound_alarms_once_near_full_and_drops_only_droppable(tmp_path):
    alarms = []
    box = Outbox(tmp_path / "o.sqlite", max_events=10, on_near_full=alarms.append)
    for _ in range(7):
        append(box)
    assert alarms == []
    append(box)  # 8 of 10: near full
    assert alarms == [8]
    append(box)
    append(box)
    assert alarms == [8]  # once, not on every event
    # At the bound: a frame without a face is dropped, a decision is still recorded.
    assert box.append(lambda seq: ("t", b"no-face"), droppable=True) is None
    assert box.dropped == 1
    assert box.append(lambda seq: ("t", b"accepted")) == 10
    assert box.depth() == 11
    box.remove(range(8))  # the broker is back: backlog below half re-arms the alarm
    for _ in range(5):
        append(box)
    assert alarms == [8, 8]
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite", max_events=10)
    assert reopened.depth() == 8  # the depth is counted again from disk on open


def test_near_full_alarm_fires_once_across_the_gates_processes(tmp_path):
    """The check-in, the gate controller and the uplink each open the same outbox: the alarm is
    raised by exactly one of them, and re-armed for all once the backlog falls below half."""
    alarms = []
    boxes = [Outbox(tmp_path / "o.sqlite", max_events=10,
                    on_near_full=lambda depth, n=n: alarms.append((n, depth))) for n in range(3)]
    for i in range(12):
        append(boxes[i % 3])
    assert alarms == [(1, 8)]  # the 8th event (box 1's turn) crossed 80 %
    boxes[2].remove(range(9))  # the uplink got PUBACKs: 3 left, below half
    for i in range(6):
        append(boxes[i % 3])
    assert alarms == [(1, 8), (1, 8)]  # 3 + 5 = 8 again, box 1's turn again
    for box in boxes:
        box.close()


def test_power_cut_mid_write_leaves_a_clean_database(tmp_path):
    """kill -9 at random moments while events are being committed: the database opens,
    passes SQLite's integrity check, and holds a gapless run of seqs."""
    import sqlite3

    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(f"""
        from device.outbox import Outbox
        box = Outbox({str(path)!r})
        while True:
            box.append(lambda seq: ("t", b"x" * 300 + str(seq).encode()))
    """)
    for delay in (0.3, 0.45, 0.6, 0.75):
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            proc.wait(timeout=delay + 1.5)  # interpreter start-up, then appending
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode == -9
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    box = Outbox(path)
    seqs = [e.seq for e in box.pending(limit=1_000_000)]
    assert seqs == list(range(len(seqs))) and len(seqs) > 10
    assert box.append(lambda seq: ("t", b"after")) == len(seqs)
