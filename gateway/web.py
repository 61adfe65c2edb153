"""The gateway's web side: live attendance dashboard, JSON API, server-sent events stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, StreamingResponse

from gateway.ingest import IngestStats
from gateway.store import Store

_PAGE = (Path(__file__).parent / "templates" / "dashboard.html").read_text()


def create_app(store: Store, stats: IngestStats | None = None,
               poll_s: float = 0.3) -> FastAPI:
    """The FastAPI application over ``store`` (``stats`` from a running ingest, if any)."""
    app = FastAPI(title="Gerbang gateway", version="0.1.0",
                  description="Live exam-room attendance from Gerbang gate devices.")

    def snapshot() -> dict[str, Any]:
        return {"rooms": store.room_summary(), "recent": store.recent_events(15),
                "counts": store.counts()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        # The first picture is embedded in the page; live updates arrive over /api/stream.
        return _PAGE.replace("{{initial}}", json.dumps(snapshot()).replace("</", "<\\/"))

    @app.get("/api/rooms")
    def rooms() -> list[dict[str, Any]]:
        """Attendance per session and room, derived from the stored events."""
        return store.room_summary()

    @app.get("/api/events")
    def events(limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        """The newest check-in events, newest first."""
        return store.recent_events(limit)

    @app.get("/api/devices")
    def devices() -> list[dict[str, Any]]:
        """Gate devices and their last birth / last-will status."""
        return store.devices()

    @app.get("/api/stats")
    def api_stats() -> dict[str, Any]:
        """Ingest counters since start plus totals in the store."""
        live = stats.__dict__ if stats else {}
        return {**store.counts(), "ingest": live}

    @app.get("/api/stream", include_in_schema=False)
    async def stream() -> StreamingResponse:
        async def gen() -> AsyncIterator[str]:
            last, quiet = None, 0
            while True:
                snap = await asyncio.to_thread(snapshot)
                key = (snap["counts"]["events"], len(snap["rooms"]))
                if key != last:
                    last, quiet = key, 0
                    yield f"data: {json.dumps(snap)}\n\n"
                elif (quiet := quiet + 1) * poll_s >= 15:
                    quiet = 0
                    yield ": keep-alive\n\n"  # keeps proxies from closing an idle stream
                await asyncio.sleep(poll_s)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
