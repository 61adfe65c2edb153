"""The eval report as readable lines (``gerbang-device eval`` without ``--json``)."""

from __future__ import annotations

from typing import Any

from device.infer.metrics import FARS, far_key


def format_report(report: dict[str, Any]) -> str:
    """The whole report: protocol, re-fitted figures, shipped thresholds, groups."""
    pooled = report.get("pooled")
    pooled_text = (" (pooled: " + ", ".join(f"{k} {v}" for k, v in pooled.items()) + ")"
                   if pooled else "")
    lines = [f"{report['dataset']}: {report['people']} people, {report['images']} images, "
             f"protocol {report['protocol']}{pooled_text}"]
    if report["protocol"] == "gate":
        lines.append(f"  enrolled {report['people_enrolled']} (failed {report['failures_to_enrol']}"
                     f"), probes {report['probes']}, FTA {report['fta']:.2%} "
                     f"{report['fta_reasons']}, scores {report['score']}")
    else:
        lines.append(f"  failures to detect {report['failures_to_detect']}")
    lines.append(f"  pairs genuine {report['genuine_pairs']} impostor {report['impostor_pairs']}"
                 f"  AUC {report['auc']:.5f}  EER {report['eer']:.4f}")
    lines.append("  thresholds re-fitted on this set:")
    for far, r in report["tar_at_far"].items():
        lines.append(f"    FAR {far}: TAR {r['tar']:.4f} at threshold {r['threshold']:.4f}"
                     if r["supported"] else f"    FAR {far}: not measurable ({r['reason']})")
    if "shipped" in report:
        lines += shipped_lines(report["shipped"])
    if "groups" in report:
        lines += groups_lines(report["groups"], report.get("score", "cosine"))
    return "\n".join(lines)


def rate(value: float | None) -> str:
    """A FAR as ``1.23e-04`` (``–`` when there were no pairs)."""
    return "–" if value is None else f"{value:.2e}"


def interval(ci: list[float] | None) -> str:
    """``[low, high]`` in FAR notation, ``–`` when there is none."""
    return "–" if ci is None else f"[{ci[0]:.1e}, {ci[1]:.1e}]"


def verdict(far: dict[str, Any]) -> str:
    """The clear line: does the measured FAR exceed its target beyond its interval?"""
    if far["rate"] is None:
        return "no impostor pairs"
    target = far["target"]
    if far["exceeds_target"]:
        head = f"EXCEEDS TARGET (lower bound {far['ci'][0]:.1e} > {target:g})"
    else:
        head = ("below target" if far["ci"][1] < target else "target within the interval")
        if far["exceeds_target_exact"]:
            head += " (the exact interval alone, pairs taken as independent, is above target)"
    two = ("within 2x of target" if far["within_2x"]
           else f"NOT within 2x of target ({far['rate'] / target:.2f}x)")
    if not far["resolvable"]:
        two += f"; too few pairs to resolve {target:g}: read the interval"
    return f"{head}; {two}"


def shipped_lines(shipped: dict[str, Any]) -> list[str]:
    """TAR and FAR at the bundle's thresholds, one line per score kind and FAR."""
    if not shipped["available"]:
        return [f"  shipped thresholds: none ({shipped['reason']})"]
    cal = shipped["calibration"]
    where = (f"at the thresholds of {cal['source']} (not the bundle's)" if cal.get("source")
             else "at the shipped thresholds")
    dataset = f"on {cal['dataset']}" if cal.get("dataset") else "on an unnamed set"
    fitted = f"{cal['date']} {dataset}" if cal.get("date") else dataset
    lines = [f"  {where} (calibrated {fitted}, {cal['enroll']}-photo "
             "templates; a gate accepts score >= threshold):"]
    if "note" in shipped:
        lines.append(f"    note: {shipped['note']}")
    lines.append(f"    intervals {shipped['interval']}")
    for kind, by_far in shipped["by_score"].items():
        for far, e in by_far.items():
            f, t = e["far"], e["tar"]
            lines.append(
                f"    {kind:6s} FAR {far} @ {e['threshold']:.4f}: TAR {t['rate']:.4f}  "
                f"FAR {rate(f['rate'])} ({f['hits']}/{f['trials']} pairs, {f['people']} people) "
                f"exact {interval(f['ci_exact'])} by person {interval(f['ci_by_person'])}")
            lines.append(f"           {verdict(f)}")
    for kind, reason in shipped["not_applicable"].items():
        lines.append(f"    {kind}: not applicable ({reason})")
    if shipped["by_score"]:
        lines.append("    overall: " + ("a measured FAR EXCEEDS its target beyond its interval"
                                        if shipped["exceeds_target"] else
                                        "no measured FAR exceeds its target beyond its interval")
                     + ("; all within 2x of target" if shipped["within_2x"] else
                        "; NOT all within 2x of target"))
    return lines


def groups_lines(groups: dict[str, Any], primary: str) -> list[str]:
    """Per group and between groups, for the score kind the gate would use."""
    lines = [f"  groups from {groups['file']}: {groups['people_matched']} people labelled, "
             f"{groups['unlabelled_people']} not in the file (group \"unlabelled\"), "
             f"{groups['people_not_in_data']} in the file but not scored in this protocol; "
             f"scores from {groups['scores_from']}"]
    for attribute, by_kind in groups["attributes"].items():
        report = by_kind[primary]
        lines.append(f"  attribute {attribute!r} ({primary} scores; others in --json):")
        shipped_fars = list(next(iter(report["groups"].values()))["shipped"])
        header = (f"    {'group':16s} {'people':>6s} {'AUC':>7s} "
                  + " ".join(f"{'TAR@' + far_key(f):>9s}" for f in FARS) + "  (re-fitted)"
                  + "".join(f" | shipped {far}: TAR, FAR" for far in shipped_fars))
        lines.append(header)
        for label, g in report["groups"].items():
            refit = " ".join(f"{g['tar_at_far'][far_key(f)]['tar']:9.4f}"
                             if g["tar_at_far"][far_key(f)]["supported"] else f"{'–':>9s}"
                             for f in FARS)
            shipped = "".join(
                f" | {e['tar']['rate'] or 0:.4f}, {rate(e['far']['rate'])}"
                f"{' EXCEEDS' if e['far']['exceeds_target'] else ''}"
                for e in g["shipped"].values())
            auc = f"{g['auc']:7.4f}" if g["auc"] == g["auc"] else f"{'–':>7s}"  # nan: no pairs
            lines.append(f"    {label:16s} {g['people']:6d} {auc} {refit}"
                         f"{' ' * 13}{shipped}")
        for far, between in report["between"].items():
            labels = between["labels"]
            lines.append(f"    FAR between groups at the shipped {far} threshold "
                         f"({between['threshold']:.4f}); rows and columns are the two people's "
                         "groups:")
            lines.append("      " + " " * 16 + "".join(f"{label:>14s}" for label in labels))
            for i, label in enumerate(labels):
                cells = "".join(f"{'':>14s}" if j < i else f"{rate(between['far'][i][j]):>14s}"
                                for j in range(len(labels)))
                lines.append(f"      {label:16s}{cells}")
    return lines
