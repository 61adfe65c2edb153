"""Logging set-up shared by every Gerbang command: timestamps, level, component."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(component: str, verbose: bool = False) -> None:
    """Log to stderr as ``2026-11-28T07:01:02 INFO gate-r01 device.decide.checkin: ...``.

    journald adds its own timestamps on a Pi, but the same line must also read well in a
    terminal at 7 a.m. ``GERBANG_LOG_LEVEL`` overrides the level.
    """
    level = os.environ.get("GERBANG_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S")
    for noisy in ("paho", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
