"""Plain-text report of ``pad-eval --video`` (the JSON is the full record)."""

from __future__ import annotations

from typing import Any


def _pct(ratio: dict[str, Any] | None) -> str:
    if not ratio or ratio.get("rate") is None:
        return "-"
    return f"{ratio['count']}/{ratio['n']} ({100 * ratio['rate']:.1f}%)"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def format_video(result: dict[str, Any]) -> str:
    """Per clip, then totals, in the words of docs/liveness.md "On real video"."""
    mirrored = "; clips read as mirrored" if result["mirror"] else ""
    first = f"; first {result['max_frames']} frames" if result["max_frames"] else ""
    lines = [f"pad-eval --video {result['root']}  (passive threshold "
             f"{_num(result['passive_threshold'], 4)}; challenge from {result['lead_s']} s "
             f"before each labelled action{mirrored}{first})"]
    if result["unlabelled"]:
        lines.append("not in the label file (no action figures): "
                     + ", ".join(result["unlabelled"]))
    for name, clip in result["clips"].items():
        p = clip["passive"]
        q = p["percentiles"] or {}
        err = (f"BPCER {100 * p['bpcer']:.1f}%" if "bpcer" in p
               else f"APCER {100 * p['apcer']:.1f}%" if "apcer" in p else "")
        lines.append("")
        lines.append(f"{name}  [{clip['kind']}]  {clip['frames']} frames, {clip['seconds']} s at "
                     f"{clip['fps']:g} fps; face {clip['face_frames']}, tracked "
                     f"{clip['tracked_frames']}")
        lines.append(f"  passive p5/p50/p95 {_num(q.get('p5'))} / {_num(q.get('p50'))} / "
                     f"{_num(q.get('p95'))}  per-frame {err}")
        for e in clip["actions"]:
            when = (f"at frame {e['answered_at']} (+{e['latency_s']:.2f} s)" if e["detected"]
                    else "NOT detected" + (f" (passed at frame {e['answered_at']})"
                                           if e["answered_at"] is not None else ""))
            depth = e.get("depth_labelled")
            depth_text = f"; 3-D {depth['verdict']}" if depth else ""
            if depth and "residual" in depth:
                depth_text += f" (res {depth['residual']}, ×noise {depth['noise_ratio']})"
            lines.append(f"  {e['action']:<10} {e['first']}-{e['last']} ({e['seconds']:.2f} s): "
                         f"{when}; challenge {e['challenge']}; gate {e['gate']}{depth_text}")
        for action, c in clip.get("challenged", {}).items():
            lines.append(f"  challenged {action:<10} gate {c['gate']}")
        fa = clip["false_actions"]
        lines.append("  false actions: " + ", ".join(f"{a} {v['false']}" for a, v in fa.items())
                     + f" in {clip['seconds']} s")
    t = result["total"]
    lines += ["", "TOTAL", f"  clips {t['clips']} ({t['bona_fide_clips']} bona fide, "
              f"{t['attack_clips']} attack); frames {t['frames']}, tracked {t['tracked_frames']}",
              f"  labelled actions detected (frontal): {_pct(t['actions_detected'])}; gate "
              f"accepts {_pct(t['gate_accepts_labelled_actions'])}"]
    for action, a in t["per_action"].items():
        dur, lat = a["duration_s"] or {}, a["latency_s"] or {}
        lines.append(f"    {action:<10} detected {_pct(a['detected'])}, gate accepts "
                     f"{_pct(a['gate_accepts'])}; duration p50/p95 {_num(dur.get('p50'))}/"
                     f"{_num(dur.get('p95'))} s; latency p50/p95 {_num(lat.get('p50'))}/"
                     f"{_num(lat.get('p95'))} s")
    lines.append(f"  3-D check accepts labelled turns {_pct(t['depth_accepts_turns'])}, nods "
                 f"{_pct(t['depth_accepts_nods'])}")
    lines.append("  passive per-frame BPCER over bona fide frames "
                 f"{_pct(t['passive_bpcer_frames'])}")
    for group, fa in t["false_actions_per_minute"].items():
        lines.append(f"  false actions per minute ({group}, {fa['minutes']} min): "
                     + ", ".join(f"{a} {fa[a]}" for a in fa if a != "minutes"))
    for name, a in t["attacks"].items():
        apcer = a["passive_apcer"]
        lines.append(f"  attack {name}: passive per-frame APCER "
                     f"{'-' if apcer is None else f'{100 * apcer:.1f}%'}; challenged: "
                     + ", ".join(f"{k} {v}" for k, v in a["challenged"].items()))
    return "\n".join(lines)
