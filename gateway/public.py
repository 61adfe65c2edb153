"""The public board's own listener (``[gateway] public_http_port``): for the screens in the
lobby, reachable by anyone on the centre's network.

It serves the board page (``/board/{session}``), its live stream (``/live/board``), the board's
JSON (``/api/public/sessions/{session}``) and the static files, and nothing else: no login, no
API, no OpenAPI document, and a dashboard cookie sent there is ignored. The live streams are
bounded in total and per client address (``public_stream_max``, ``public_stream_per_address``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI, HTTPException

from gateway.attendance import public_board, session_attendance
from gateway.pages import add_pages
from gateway.ratelimit import BodyLimit, StreamLimiter
from gateway.store import Store
from gateway.webcontext import RejectNul, WebContext


def create_public_app(store: Store, *, poll_s: float = 0.3, display_utc_offset_h: float = 7.0,
                      board_streams: StreamLimiter | None = None) -> FastAPI:
    """The public board's application over ``store`` (``board_streams`` may be shared with
    the dashboard's app, so the limits count every board stream of the process)."""
    app = FastAPI(title="Gerbang public board", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(RejectNul)
    app.add_middleware(BodyLimit)
    ctx = WebContext(store=store, poll_s=poll_s,
                     board_streams=board_streams or StreamLimiter(100, 4))
    app.state.ctx = ctx

    @app.get("/api/public/sessions/{session_id}")
    def board(session_id: str) -> dict[str, Any]:
        """Counts per room for one session; no names, ids or devices."""
        attendance = session_attendance(store, session_id)
        if attendance is None:
            raise HTTPException(404, f"no exam session {session_id!r}")
        return public_board(attendance)

    add_pages(app, timedelta(hours=display_utc_offset_h), public_only=True)
    return app
