"""The exam-day rehearsal (``gerbang-demo --scenario exam-day``), put together in :mod:`.run`."""

from gerbang.rehearsal.run import run_rehearsal
from gerbang.rehearsal.transport import BROKER_NAME, provision_centre

__all__ = ["BROKER_NAME", "provision_centre", "run_rehearsal"]
