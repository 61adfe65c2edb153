"""The rosters' templates from each applicant's three registration photos, cached between runs.

A re-run with the same ``--workdir`` enrolls only the people whose photos or embedder changed;
the cache holds biometric templates, so it is written mode 0600.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from gerbang.files import write_atomic
from gerbang.progress import progress

log = logging.getLogger("rehearsal")


def _stamp(photos: list[Path]) -> list[list[Any]]:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in photos]


def enroll_cached(pipeline: Any, embedder_sha256: str, people: dict[str, list[Path]],
                  cache_dir: Path, show_progress: bool = True,
                  ) -> tuple[dict[str, np.ndarray], dict[str, list[tuple[str, str]]]]:
    """Templates from each person's three enrollment photos, reusing earlier runs' work.

    The cache (``cache_dir/templates.json``, mode 0600: templates are biometric data) is keyed
    by the embedder's sha256 and each photo's path, size and mtime, so a changed photo or model
    is enrolled again. Returns person → template and person → (photo, reason) for rejected
    photos; people with no usable photo have no template.
    """
    from provisioning.enroll import template_from_photos

    path = cache_dir / "templates.json"
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("embedder_sha256") == embedder_sha256:
                cache = data.get("people", {})
        except (OSError, ValueError):
            log.warning("enrollment cache %s unreadable; enrolling again", path)
    templates: dict[str, np.ndarray] = {}
    problems: dict[str, list[tuple[str, str]]] = {}
    todo = []
    for person, photos in people.items():
        entry = cache.get(person)
        if entry and entry.get("stamp") == _stamp(photos[:3]):
            if entry.get("template"):
                templates[person] = np.asarray(entry["template"], dtype=np.float32)
            problems[person] = [tuple(p) for p in entry.get("problems", [])]
        else:
            todo.append(person)
    log.info("enrollment: %d applicants cached, %d to enroll from 3 photos each",
             len(people) - len(todo), len(todo))
    items = progress(todo, label="enrolling") if show_progress and todo else todo
    for person in items:
        photos = people[person][:3]
        template, rejected = template_from_photos(pipeline, photos)
        problems[person] = rejected
        cache[person] = {"stamp": _stamp(photos), "problems": rejected,
                         "template": None if template is None else
                         [round(float(x), 7) for x in template]}
        if template is not None:
            templates[person] = template
    if todo:
        write_atomic(path, json.dumps({"embedder_sha256": embedder_sha256,
                                       "people": cache}).encode(), mode=0o600)
    return templates, problems
