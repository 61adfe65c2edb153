"""``Store``: everything the gateway asks of its storage, composed from one query class per
idea (events, rejects, devices and their streams, admission, exam sessions, alarms, accounts,
commands, monitoring). The back-ends (gateway/store/sqlite.py, gateway/store/postgres.py)
subclass it and supply only connections and dialect; every query is the same SQL on both.
"""

from __future__ import annotations

from gateway.store.accounts import AccountQueries
from gateway.store.alarms import AlarmQueries
from gateway.store.commands import CommandQueries
from gateway.store.devices import DeviceQueries
from gateway.store.events import EventQueries
from gateway.store.exam_sessions import ExamSessionQueries
from gateway.store.monitoring import MonitoringQueries
from gateway.store.rejects import RejectQueries


class Store(EventQueries, RejectQueries, DeviceQueries, ExamSessionQueries, AlarmQueries,
            AccountQueries, CommandQueries, MonitoringQueries):
    """What the gateway needs from storage; subclasses supply connections and dialect."""
