"""The report's PNG plots, drawn with OpenCV.

The morning (admissions, refusals, fault spans, outbox backlog), latency per gate, and the
machine's memory, CPU and load over the morning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

GREEN, RED, BLUE, GREY, ORANGE, BLACK = ((60, 160, 60), (60, 60, 210), (200, 110, 30),
                                         (150, 150, 150), (120, 200, 250), (30, 30, 30))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** np.floor(np.log10(raw))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _frame(image: np.ndarray, rect: tuple[int, int, int, int], xmax: float, ymax: float,
           xlabel: str, ylabel: str) -> None:
    """Axes with ticks around ``rect`` = (left, top, right, bottom) in pixels."""
    left, top, right, bottom = rect
    cv2.rectangle(image, (left, top), (right, bottom), GREY, 1)
    for value in np.arange(0, ymax + 1e-9, _nice_step(ymax, 5)):
        y = int(bottom - (bottom - top) * value / ymax)
        cv2.line(image, (left - 4, y), (right, y), (225, 225, 225), 1)
        cv2.putText(image, f"{value:g}", (4, y + 4), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    for value in np.arange(0, xmax + 1e-9, _nice_step(xmax, 10)):
        x = int(left + (right - left) * value / xmax)
        cv2.line(image, (x, bottom), (x, bottom + 4), BLACK, 1)
        cv2.putText(image, f"{value:g}", (x - 10, bottom + 18), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, xlabel, ((left + right) // 2 - 80, bottom + 40), FONT, 0.45, BLACK, 1,
                cv2.LINE_AA)
    cv2.putText(image, ylabel, (left, top - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)


def plot_morning(result: dict[str, Any], path: Path) -> None:
    """Admissions and refusals per interval, outbox backlog, fault spans, start and close."""
    width, height = 1200, 470
    image = np.full((height, width, 3), 255, np.uint8)
    rect = (60, 70, width - 70, height - 70)
    left, top, right, bottom = rect
    t_end = max([result["window_s"] + result["late_s"]]
                + [s["t"] for s in result["samples"]]) * 1.02
    buckets = 60
    width_s = t_end / buckets
    admitted = np.histogram(result["admissions"], bins=buckets, range=(0, t_end))[0]
    refused = np.histogram(result["refusal_times"], bins=buckets, range=(0, t_end))[0]
    ymax = max(4, int(max(admitted.max(initial=0), refused.max(initial=0)) * 1.2) + 1)
    _frame(image, rect, t_end, ymax, "seconds after doors open",
           f"per {width_s:.0f} s: admitted (green), refused (red); blue: check-ins waiting in "
           "gate outboxes (right axis)")

    def x_of(t: float) -> int:
        return int(left + (right - left) * t / t_end)

    for n, fault in enumerate(result["fault_rows"]):
        start = fault["started_s"] or fault["at_s"]
        end = fault["recovered_s"] or fault["ended_s"] or start + fault["duration_s"]
        overlay = image.copy()
        cv2.rectangle(overlay, (x_of(start), top + 1), (max(x_of(end), x_of(start) + 3),
                                                        bottom - 1), ORANGE, -1)
        cv2.addWeighted(overlay, 0.45, image, 0.55, 0, image)
        cv2.putText(image, fault["kind"].replace("_", " "), (x_of(start) + 2,
                                                             top + 14 + 14 * (n % 3)),
                    FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    bar = max(2, (right - left) // buckets // 2 - 1)
    for i in range(buckets):
        x = x_of(i * width_s)
        for count, colour, dx in ((admitted[i], GREEN, 0), (refused[i], RED, bar + 1)):
            if count:
                y = int(bottom - (bottom - top) * count / ymax)
                cv2.rectangle(image, (x + dx, y), (x + dx + bar, bottom - 1), colour, -1)
    outbox = [(s["t"], s["outbox_total"]) for s in result["samples"]]
    omax = max(4, max((v for _, v in outbox), default=0) * 1.2)
    points = np.array([(x_of(t), int(bottom - (bottom - top) * v / omax)) for t, v in outbox],
                      np.int32)
    if len(points) > 1:
        cv2.polylines(image, [points], False, BLUE, 2, cv2.LINE_AA)
    cv2.putText(image, f"{omax:.0f}", (right + 6, top + 4), FONT, 0.4, BLUE, 1, cv2.LINE_AA)
    cv2.putText(image, "0", (right + 6, bottom), FONT, 0.4, BLUE, 1, cv2.LINE_AA)
    for t, label in ((result["window_s"], "exam starts"),
                     (result["window_s"] + result["late_s"], "doors close")):
        cv2.line(image, (x_of(t), top), (x_of(t), bottom), BLACK, 2)
        cv2.putText(image, label, (x_of(t) + 4, bottom - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "The morning: check-ins, faults (shaded) and delivery backlog", (left, 28),
                FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Per gate: p95 bar, p50 dot, max tick (milliseconds from camera frame to decision)."""
    rows = [r for r in result["latency"] if r["n"]]
    width = max(700, 60 + 26 * len(rows) + 40)
    height = 420
    image = np.full((height, width, 3), 255, np.uint8)
    rect = (60, 60, width - 30, height - 80)
    left, top, right, bottom = rect
    ymax = max([50.0] + [r["max"] for r in rows]) * 1.1
    _frame(image, rect, 1, ymax, "", "ms, per gate: p95 (bar), p50 (dot), max (red tick)")
    cv2.rectangle(image, (0, bottom + 1), (width, bottom + 30), (255, 255, 255), -1)
    step = (right - left) / max(1, len(rows))
    for i, r in enumerate(rows):
        x = int(left + step * (i + 0.5))

        def y_of(v: float) -> int:
            return int(bottom - (bottom - top) * v / ymax)

        cv2.rectangle(image, (x - 8, y_of(r["p95"])), (x + 8, bottom - 1), (235, 200, 160), -1)
        cv2.circle(image, (x, y_of(r["p50"])), 4, BLUE, -1, cv2.LINE_AA)
        cv2.line(image, (x - 8, y_of(r["max"])), (x + 8, y_of(r["max"])), RED, 2)
        label = r["gate"].split("-", 1)[-1]
        cv2.putText(image, label[:6], (x - 11, bottom + 14 + 12 * (i % 2)), FONT, 0.33, BLACK,
                    1, cv2.LINE_AA)
    cv2.putText(image, "Check-in latency per gate (camera frame to recorded decision)",
                (left, 28), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def plot_resources(result: dict[str, Any], path: Path) -> None:
    """Total resident memory, total CPU and the load average over the morning."""
    width, height = 1200, 520
    image = np.full((height, width, 3), 255, np.uint8)
    samples = result["samples"]
    t_end = max([1.0] + [s["t"] for s in samples]) * 1.02
    panels = [((60, 60, width - 40, 250), "rss_total_mb", 1 / 1024,
               "GB memory (PSS), all processes", BLUE),
              ((60, 300, width - 40, height - 60), "cpu_total", 1.0,
               "CPU % of all processes (200 = both cores); grey: load average x 100", RED)]
    for rect, key, scale, label, colour in panels:
        values = [s[key] * scale for s in samples]
        ymax = max([1.0] + values + ([s["load"] * 100 for s in samples]
                                     if key == "cpu_total" else [])) * 1.1
        _frame(image, rect, t_end, ymax, "seconds after doors open" if key == "cpu_total"
               else "", label)

        def pts(vals: list[float], rect: tuple[int, int, int, int] = rect,
                ymax: float = ymax) -> np.ndarray:
            left, top, right, bottom = rect
            return np.array([(int(left + (right - left) * s["t"] / t_end),
                              int(bottom - (bottom - top) * v / ymax))
                             for s, v in zip(samples, vals, strict=True)], np.int32)

        if len(samples) > 1:
            if key == "cpu_total":
                cv2.polylines(image, [pts([s["load"] * 100 for s in samples])], False, GREY, 2,
                              cv2.LINE_AA)
            cv2.polylines(image, [pts(values)], False, colour, 2, cv2.LINE_AA)
    cv2.putText(image, "Resources on this machine during the morning", (60, 30), FONT, 0.6,
                BLACK, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)
