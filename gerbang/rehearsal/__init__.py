"""The exam-day rehearsal (``gerbang-demo --scenario exam-day``), in :mod:`.run` for now."""

from gerbang.rehearsal.run import BROKER_NAME, provision_centre, run_rehearsal

__all__ = ["BROKER_NAME", "provision_centre", "run_rehearsal"]
