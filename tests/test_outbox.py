"""The outbox keeps every event durably, in seq order, until it is acknowledged."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from device.uplink.outbox import Outbox, OutboxRangeError

OTHER_STREAM = "00112233aabbccdd"


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
        from device.uplink.outbox import Outbox
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
        from device.uplink.outbox import Outbox
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


# --- streams, acknowledged rows kept for a resend, purging -------------------------------------

def test_acknowledged_rows_are_kept_but_no_longer_pending_or_counted(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(5):
        append(box)
    assert box.position() == {"stream": box.stream, "first_seq": 0, "next_seq": 5,
                              "acked_below": 0}
    assert box.remove([0, 1, 3]) == 3
    assert box.remove([1]) == 0  # a second PUBACK of the same row is not counted twice
    assert box.depth() == 2 and box.kept() == 3
    assert [e.seq for e in box.pending()] == [2, 4]
    assert box.position()["acked_below"] == 2  # 3 is acknowledged, but 2 is not yet
    box.remove([2, 4])
    assert box.position()["acked_below"] == 5 and box.depth() == 0 and box.kept() == 5
    assert box.counters() == {"appended": 5, "acked": 5}


def test_requeue_publishes_the_kept_range_again_and_counts_what_is_gone(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_events=100)
    for _ in range(120):
        append(box)
    box.remove(range(120))
    assert box.kept() == 100  # the bound: the 20 oldest acknowledged rows are purged
    done = box.requeue(box.stream, 10, 29)
    assert (done.count, done.asked, done.first, done.last, done.missing) == (10, 20, 20, 29, 10)
    assert [e.seq for e in box.pending(limit=1000)] == list(range(20, 30))
    assert box.depth() == 0  # re-queued rows were acknowledged: not backlog, no alarm
    assert box.position()["acked_below"] == 120  # and they stay acknowledged
    box.remove(range(20, 30))
    assert box.pending() == [] and box.counters()["acked"] == 120
    for stream, first, last, field in ((OTHER_STREAM, 0, 5, "stream"),
                                       (box.stream, 0, 120, "to_seq")):
        try:
            box.requeue(stream, first, last)
        except OutboxRangeError as exc:
            assert str(exc).startswith(field + ":")
            assert stream != box.stream or "120" in str(exc)
            if field == "stream":
                assert OTHER_STREAM in str(exc) and box.stream in str(exc)
        else:
            raise AssertionError(f"{field} not refused")


def test_kept_rows_are_purged_after_the_keep_time(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", keep_acked_s=0.3, purge_every_s=0.0)
    for _ in range(4):
        append(box)
    box.remove([0, 1])
    assert box.kept() == 2
    time.sleep(0.5)
    box.remove([2])  # the purge runs with the PUBACKs: 0 and 1 are past the keep time
    assert box.kept() == 1 and box.requeue(box.stream, 0, 2).missing == 2
    assert box.depth() == 1 and [e.seq for e in box.pending()] == [2, 3]  # 2 is re-queued
    time.sleep(0.5)
    assert box.purge() == 0  # a re-queued row stays until it went out again
    box.remove([2])  # its second PUBACK: now it is purged (acknowledged long enough ago)
    assert box.kept() == 0
    assert [e.seq for e in box.pending()] == [3]  # never an unacknowledged row


def test_purge_by_age_runs_at_most_every_purge_interval_and_on_demand(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", keep_acked_s=0.0, purge_every_s=3600)
    for _ in range(3):
        append(box)
    box.remove([0])  # the first PUBACK batch purges (nothing old yet) and sets the next time
    box.remove([1])
    box.remove([2])
    assert box.kept() >= 2  # not purged on every acknowledgement: that is the cheap path
    kept = box.kept()
    assert box.purge() == kept and box.kept() == 0


def test_stream_survives_reopen_and_a_new_file_is_a_new_stream(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    stream = box.stream
    assert len(stream) == 16 and int(stream, 16) >= 0 and box.first_seq == 0
    append(box)
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.stream == stream and append(again) == 1
    other = Outbox(tmp_path / "new" / "o.sqlite")
    assert other.stream != stream and other.first_seq == 0


def test_an_outbox_from_before_streams_is_upgraded_in_place(tmp_path):
    """The base firmware's schema (rows deleted on PUBACK, no meta): its unsent rows stay
    queued, it gets a stream starting at the seq it had reached."""
    import sqlite3

    path = tmp_path / "o.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL,
                                 payload BLOB NOT NULL, created REAL NOT NULL);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO counters VALUES ('next_seq', 7), ('acked', 5), ('near_full_armed', 1);
            INSERT INTO outbox VALUES (5, 't', x'35', 0), (6, 't', x'36', 0);
        """)
    box = Outbox(path)
    assert box.first_seq == 7 and box.depth() == 2
    assert [e.seq for e in box.pending()] == [5, 6]
    assert box.position() == {"stream": box.stream, "first_seq": 7, "next_seq": 7,
                              "acked_below": 7}
    assert append(box) == 7
    box.remove([5, 6, 7])
    assert box.depth() == 0 and box.kept() == 3


def test_high_water_marks_live_in_the_outbox_database(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert box.high_water("roster:S1/R01") is None
    box.set_high_water("roster:S1/R01", "3")
    box.set_high_water("roster:S1/R01", "4")
    box.close()
    assert Outbox(tmp_path / "o.sqlite").high_water("roster:S1/R01") == "4"
