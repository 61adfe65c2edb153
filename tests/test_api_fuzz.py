"""schemathesis against the gateway's OpenAPI document: no request, valid or not, gets a 5xx.

Every operation in ``/openapi.json`` is exercised in-process (ASGI) as a logged-in manager on
both store back-ends, through schemathesis's engine (what ``schemathesis run`` drives): its
examples, coverage and fuzzing phases, with positive and negative data and a bounded number of
fuzzed examples per operation, so both back-ends together stay well under two minutes on two
cores. Path parameters are drawn both at random and from the ids that exist in the store
(session, applicant, gate, alert), so fuzzed bodies and queries also reach the code behind the
404s. The only check is ``not_a_server_error``; an exception escaping the app (a 500 behind
uvicorn) counts as a failure too.

(schemathesis's pytest plugin is not used: its ``from_fixture`` loader breaks on pytest 9.2.)
"""

from __future__ import annotations

import re
import secrets
import time
from collections import Counter
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")

from hypothesis import strategies as st  # noqa: E402
from schemathesis.engine import events, from_schema  # noqa: E402

from gateway.alerts import current_alerts  # noqa: E402
from gateway.auth import add_user, token_digest  # noqa: E402
from gateway.web import create_app  # noqa: E402
from gerbang import wire  # noqa: E402

PASSWORD = "correct-horse-battery"
MAX_EXAMPLES = 15  # fuzzed examples per operation (the examples and coverage phases add theirs)
SESSION = {"session_id": "S1", "centre": "c1", "name": "SKD sesi 1",
           "doors_open": "2026-12-01T06:30:00+07:00", "starts_at": "2026-12-01T07:30:00+07:00",
           "doors_close": "2026-12-01T08:00:00+07:00"}


def _event(seq: int, outcome: str, applicant: str, reason: str | None = None,
           ) -> wire.CheckinEvent:
    return wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id="c1-r01-a", centre="c1", room="R01",
        session="S1", seq=seq, ts="2026-12-01T00:10:00.000Z", outcome=outcome,
        applicant_id=applicant if outcome == "accepted" else None, card_id=applicant,
        reason=reason, score=0.6, latency_ms=40.0)


def _seed(store: Any) -> dict[str, str]:
    """One of everything the API reads; returns the ids that exist."""
    add_user(store, "fuzz-manager", PASSWORD, "manager")
    store.upsert_session(SESSION)
    store.replace_roster("S1", [
        {"applicant_id": "A1", "name": "Siti Rahayu", "room": "R01", "seat": "01"},
        {"applicant_id": "A2", "name": "Budi Santoso", "room": "R01", "seat": "02"}])
    store.insert_events([_event(0, "accepted", "A1"),
                         _event(1, "refused", "A2", "spoof_suspected")])
    store.record_status("c1-r01-a", "c1", {"state": "offline", "ts": "2026-12-01T00:11:00Z"})
    store.record_telemetry("c1-r01-a", "c1", {"fps": 12.0, "outbox_depth": 0})
    store.record_alarms([wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id="c1-r01-a",
                                         seq=9, centre="c1", ts="2026-12-01T00:12:00.000Z",
                                         alarm="door_forced")])
    store.record_reject("gerbang/v1/c1/x/events", "bad JSON")
    return {"session_id": "S1", "applicant_id": "A2", "device_id": "c1-r01-a",
            "alert_key": current_alerts(store)[0]["key"]}


def _login_token(store: Any) -> str:
    """A manager's login token, made the way auth.login makes one (without the Argon2 cost)."""
    token = secrets.token_urlsafe(32)
    store.put_token(token_digest(token), "fuzz-manager", time.time() + 3600)
    return token


def test_openapi_operations_never_answer_5xx(store):
    known = _seed(store)
    commands: list[tuple[Any, ...]] = []
    app = create_app(store, commander=lambda *a: commands.append(a))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.checks.update(included_check_names=["not_a_server_error"])
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none")
    token = _login_token(store)

    @schema.auth()
    class ManagerToken:
        def get(self, case: Any, ctx: Any) -> str:
            return token

        def set(self, case: Any, data: str, ctx: Any) -> None:
            if case.path == "/api/logout":  # it would end the shared login: give it its own
                data = _login_token(store)
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    @schema.hook
    def flatmap_path_parameters(context: Any, params: dict[str, Any] | None) -> Any:
        # Random ids (404s) or ids that exist (the code behind them).
        if not params:
            return st.just(params)
        return st.sampled_from([params, {k: known.get(k, v) for k, v in params.items()}])

    operations = {f"{op.ok().method.upper()} {op.ok().path}"
                  for op in schema.get_all_operations()}
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    problems: dict[tuple[str, str], str] = {}  # (operation, kind) -> first example
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.recorder.label:
            cases[event.recorder.label] += len(event.recorder.cases)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        problems.setdefault((event.recorder.label, check.name),
                                            f"{check.failure_info.failure.title}\n"
                                            f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            # An exception out of the app: behind uvicorn, a 500.
            problems.setdefault((event.label, type(event.value).__name__), repr(event.value))
        elif isinstance(event, events.FatalError):
            problems.setdefault(("engine", "fatal"), repr(event.exception))
    elapsed = time.monotonic() - started
    print(f"schemathesis ({store.dialect}): {len(cases)} of {len(operations)} operations, "
          f"{sum(cases.values())} requests in {elapsed:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert not problems, "\n\n".join(f"{op} [{kind}]: {example}"
                                      for (op, kind), example in problems.items())
    assert set(cases) == operations, f"not exercised: {operations - set(cases)}"
    assert all(code < 500 for code in statuses)
    # the fuzzed ids and bodies reached the real rows too, not only 404s and 422s
    assert statuses[200] > len(operations) and statuses[201] > 0


JSON = {"Content-Type": "application/json"}
# Inputs schemathesis's generators do not produce (NUL in URLs, unpaired surrogates in JSON,
# non-Latin-1 rooms in a download's file name, a CSV field over the csv module's limit), each
# of which answered 500 on one back-end or both: (method, path, request kwargs, status).
HOSTILE = [
    ("POST", "/api/login", {"content": b'{"username": "a\\u0000", "password": "x"}'}, 422),
    ("POST", "/api/login", {"content": b'{"username": "a\\ud800", "password": "x"}'}, 422),
    ("POST", "/api/login", {"content": b'{"username": "m", "password": "\\ud800"}'}, 422),
    ("POST", "/api/users", {"content": b'{"username": "u1", "password": "abcdefghij\\udc00",'
                                       b' "role": "viewer"}'}, 422),
    ("POST", "/api/sessions/S1/applicants/A2/actions",
     {"content": b'{"action": "manual_admit", "reason": "KTP \\u0000"}'}, 422),
    ("POST", "/api/sessions/S1/applicants/A2/actions",
     {"content": b'{"action": "manual_admit", "reason": "KTP \\udc00"}'}, 422),
    ("PUT", "/api/sessions/S2", {"content": b'{"centre": "c1", "name": "x\\u0000", "doors_open":'
                                            b' "2026-12-01T06:30:00+07:00", "starts_at": '
                                            b'"2026-12-01T07:30:00+07:00", "doors_close": '
                                            b'"2026-12-01T08:00:00+07:00"}'}, 422),
    ("POST", "/api/alerts/x/ack", {"content": b'{"note": "\\ud800"}'}, 422),
    ("GET", "/api/sessions/S%00/attendance", {}, 400),
    ("GET", "/api/sessions/S1/roster?room=%00", {}, 400),
    ("GET", "/api/public/sessions/%00", {}, 400),
    ("GET", "/board/%00", {}, 400),
    ("GET", "/sessions/S1/rooms/%00", {}, 400),
    ("GET", "/api/sessions/S1/export.csv?room=%F0%9F%98%80%22%0D%0A", {}, 200),
    ("GET", "/api/sessions/S1/export.pdf?room=R%C3%BC%E2%80%99ang", {}, 200),
    ("POST", "/api/sessions/S1/roster", {"content": b"no_peserta,nama,ruang\nA9,De\x00wi,R01\n",
                                         "headers": {"Content-Type": "text/csv"}}, 422),
    ("POST", "/api/sessions/S1/roster",
     {"content": b"no_peserta,nama,ruang\nA9," + b"x" * 200_000 + b",R01\n",
      "headers": {"Content-Type": "text/csv"}}, 422),
    ("POST", "/login", {"data": {"username": "a\x00", "password": "x\x00"}}, 401),
]


def test_hostile_text_gets_a_4xx_not_a_500(store):
    from fastapi.testclient import TestClient

    _seed(store)
    client = TestClient(create_app(store), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {_login_token(store)}"
    answers, downloads = [], []
    # The login form's double-submit token, as a browser has it (cookie + hidden field).
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    for method, path, kwargs, _ in HOSTILE:
        headers = kwargs.get("headers", JSON if "content" in kwargs else {})
        if path == "/login":
            kwargs = {**kwargs, "data": {**kwargs["data"], "csrf": csrf}}
        response = client.request(method, path, **{**kwargs, "headers": headers})
        answers.append((method, path[:50], response.status_code))
        downloads.append(response.headers.get("content-disposition", ""))
    assert answers == [(method, path[:50], status) for method, path, _, status in HOSTILE]
    assert all(d.isascii() and d.count('"') in (0, 2) for d in downloads)
    # and what was refused left no trace but the audit of the failed login
    assert store.exam_session("S2") is None and store.overrides("S1") == []
    assert [a["username"] for a in store.audit_log() if a["action"] == "login_failed"] == [
        "a\\0"]
