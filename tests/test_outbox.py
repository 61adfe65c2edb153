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
