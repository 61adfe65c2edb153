"""The exam-day rehearsal, a module a job: scenario, fleet, faults, doors, truth, report; see .run.
It may import the gerbang core, simulation, device, gateway, provisioning; never the demo."""

from gerbang.rehearsal.run import run_rehearsal
from gerbang.rehearsal.transport import BROKER_NAME, provision_centre

__all__ = ["BROKER_NAME", "provision_centre", "run_rehearsal"]
