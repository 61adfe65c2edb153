"""``report.md`` for the centre manager: the verdict first, then every table behind it.

Written from the figures :func:`gerbang.rehearsal.truth.analyse` gathered (also in
``summary.json``), with the plots of :mod:`gerbang.rehearsal.plots`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from gerbang.rehearsal.plots import plot_latency, plot_morning, plot_resources
from gerbang.rehearsal.scenario import (
    CENTRE,
    GATE_KEEPALIVE_S,
    MAX_GENUINE_TRIES,
    REAL_BOOT_S,
    RESTART_SEC,
)
from gerbang.rehearsal.transport import BROKER_NAME


def transport_rows(t: dict[str, Any]) -> list[str]:
    """The report's Broker and Transport rows of the setup table."""
    if t["mode"] == "plain":
        return ["| Broker | Mosquitto with the project's local config "
                f"(`gerbang/conf/mosquitto-local.conf`) on {t['listener']} |",
                "| Transport | **plain MQTT** on loopback (`--plain-mqtt`, for debugging only): "
                "no TLS, no client certificates, no ACL |"]
    checks = ", ".join(what for what, on in (("`require_certificate`", t["require_certificate"]),
                                             ("CRL", t["crl"])) if on)
    return [
        f"| Broker | Mosquitto with the centre's generated config (`{t['broker_config']}`, "
        f"from `provisioning/broker_config.py`): one TLS listener on {t['listener']} "
        f"(TLS ≥ 1.2, {checks}), client identity = certificate CN, a role per device "
        "(dynamic-security plugin: publishes and subscriptions checked); "
        "the broker-restart fault starts it again from the same config |",
        f"| Transport | **mutual TLS** ({t['negotiated'] or 'TLS'}): centre CA `{t['ca_subject']}`"
        f", SHA-256 fingerprint `{t['ca_sha256']}`; **{t['client_certificates']} client "
        f"certificates** ({t['gate_certificates']} gates, each from a CSR made with its key in "
        f"the gate's folder, and the gateway), provisioned in {t['provision_s']:.1f} s; every "
        f"client checks the broker's certificate for `{t['server_name']}`. The broker knew "
        f"{t['clients_authenticated']} of {t['client_certificates']} clients by their "
        "certificate; a client without one was "
        + ("refused" if t["refuses_without_certificate"] else "**ACCEPTED**") + " |",
    ]


def _clock(t: float, compression: float) -> str:
    """A rehearsal time as the clock of a real morning whose doors open at 06:30."""
    real = datetime(2026, 12, 1, 6, 30) + timedelta(seconds=t * compression)
    return real.strftime("%H:%M")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def write_report(result: dict[str, Any], workdir: Path) -> Path:
    """``report.md`` (and its plots) for the centre manager: the verdict first."""
    plots = workdir / "plots"
    plots.mkdir(exist_ok=True)
    plot_morning(result, plots / "morning.png")
    plot_latency(result, plots / "latency.png")
    plot_resources(result, plots / "resources.png")
    setup = result["setup"]
    k = setup["compression"]
    rooms = result["rooms"]
    faults = result["fault_rows"]
    out: list[str] = []
    add = out.append
    add(f"# Exam-day rehearsal: {result['verdict']}\n")
    if result["verdict"] == "PASS":
        add(f"**PASS.** Attendance at the gateway equals the ground truth in all {len(rooms)} "
            f"rooms ({setup['applicants']} applicants: {result['present']} present of whom "
            f"{result['late']} late, {result['absent']} absent). "
            f"{result['lost']} check-ins lost, {result['duplicated']} duplicated. "
            f"{result['proxies'] - result['proxies_admitted']} of {result['proxies']} proxies "
            f"refused; nobody on no roster got in. "
            + (f"{result['faults_survived']} of {len(faults)} faults injected and survived."
               if faults else "No faults injected (--no-faults).") + "\n")
    else:
        add("**FAIL.** " + "; ".join(result["failures"]) + ".\n")
    add(f"Rehearsed {datetime.now().strftime('%Y-%m-%d %H:%M')} on this machine in "
        f"{result['wall_s'] / 60:.1f} minutes: {len(rooms)} rooms × {setup['gates_per_room']} "
        f"gates, {setup['applicants']} applicants, doors open for {result['window_s']:.0f} s "
        f"standing for 30 minutes ({k:.1f}× faster than real time); late arrivals until doors "
        f"closed {result['late_s']:.0f} s after the start. Times below are seconds after doors "
        f"opened, with the clock of a real morning whose doors open at 06:30 and exam starts at "
        f"07:00.\n")
    add("| | |\n|---|---|")
    add(f"| Gates | {setup['gates']} device-service processes (one per gate), "
        f"camera at {setup['camera_fps']:g} frame/s |")
    add(f"| Gateway | one process, {setup['backend']} |")
    for row in transport_rows(setup["transport"]):
        add(row)
    add(f"| Rosters | {setup['applicants']} applicants enrolled from 3 photos each"
        + (f" ({setup['not_enrolled']} left off: no usable photo)" if setup["not_enrolled"]
           else "") + ", "
        + ("session-wide T-norm cohort (`gerbang-provision cohort`)" if setup["cohort"]
           else "plain cosine scores (fewer than 100 applicants: no cohort)") + " |")
    add(f"| Faces | `{setup['faces']}`; {setup['outsiders']} other people play proxies and "
        "people on no roster |")
    arrivals = setup["arrivals"]
    add("\n**The morning's mix**\n")
    add("| who | how many | what they do |\n|---|---|---|")
    add(f"| on the roster, on time | {arrivals.get('on_time', 0)} | card and face at a gate of "
        f"their room; up to {MAX_GENUINE_TRIES} tries, then the proctor checks the KTP |")
    add(f"| … of whom the camera cannot see well at first | {len(result['poor_capture_rows'])} | "
        "a dark, blurred or cut-off frame first, then a good one |")
    add(f"| at the wrong room first | {arrivals.get('wrong_room', 0)} | their card at another "
        "room's gate, then their own room |")
    add(f"| late | {arrivals.get('late', 0)} | arrive after the exam started |")
    add(f"| no-shows | {setup['no_shows']} | never come |")
    add(f"| proxies (*joki*) | {result['proxies']} | someone else with an applicant's card "
        "(that applicant stays home); tries twice |")
    add(f"| people on no roster | {result['strangers']} | with another session's card, or none "
        "(1:N search) |")
    add(f"| photo attacks | {result['photo_attacks']} | an applicant's own enrollment photo shown "
        "with their card after they went in (see Notes: liveness) |")

    add("\n## Attendance per room\n")
    add("Ground truth is what happened at the doors (who went in, when); the gateway column is "
        "its own derivation (`GET /api/sessions/{id}/attendance`, logged in as the manager) "
        "after the doors closed.\n")
    add("| Room | Expected | Present truth / gateway | Late truth / gateway | "
        "Absent truth / gateway | Proctor admits | Refused attempts | Wrong-room attempts | "
        "Duplicate identity | Equal |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rooms:
        add(f"| {r['room']} | {r['expected']} | {r['truth_present']} / {r['gateway_present']} | "
            f"{r['truth_late']} / {r['gateway_late']} | {r['truth_absent']} / "
            f"{r['gateway_absent']} | {r['proctor_admits']} | {r['refused']} | "
            f"{r['wrong_room_attempts']} | {r['duplicate_identity']} | "
            f"{'yes' if r['match'] else '**NO**'} |")
    if result["mismatches"]:
        add("\n**Applicants whose status differs**\n")
        add("| Applicant | Room | Truth | Gateway | Admitted by |\n|---|---|---|---|---|")
        for m in result["mismatches"]:
            add(f"| {m['applicant_id']} | {m['room']} | {m['truth']} | {m['gateway']} | "
                f"{m['admitted_by'] or '–'} |")

    add("\n## Proxies, photo attacks and people on no roster\n")

    def table(rows: list[dict[str, Any]], who: str, extra: str | None = None,
              admitted_means: str = "**YES**") -> None:
        if not rows:
            add("None in this rehearsal.\n")
            return
        head = f"| T+ s (clock) | Gate | {who} | Card shown |" + (f" {extra} |" if extra else "")
        add(head + " What the gate decided | Admitted |")
        add("|" + "---|" * (head.count("|") + 1))
        for r in rows:
            cells = [f"{r['at_s']:.0f} ({_clock(r['at_s'], k)})", r["gate"], r["person"],
                     r["card"] or "none"]
            if extra:
                cells.append(str(r.get(extra.lower().replace(" ", "_"), "")))
            cells += ["; ".join(r["outcomes"]) or "–", admitted_means if r["admitted"] else "no"]
            add("| " + " | ".join(cells) + " |")
        add("")

    add(f"### Proxies: {result['proxies'] - result['proxies_admitted']} of {result['proxies']} "
        "refused\n")
    add("A different person holding an applicant's card. The gate compares the face with that "
        "card's template (1:1) and with the whole room (`duplicate_identity` when it matches "
        "someone else better).\n")
    table(result["proxy_rows"], "Person (not on any roster)", "Victim")
    add(f"### People on no roster: {result['strangers'] - result['strangers_admitted']} of "
        f"{result['strangers']} refused\n")
    table(result["stranger_rows"], "Person")
    add(f"### Photo attacks: {result['photo_attacks_admitted']} of {result['photo_attacks']} "
        "admitted, as expected with liveness off\n")
    add("The gates here replay still photos, so their liveness step is off (a still cannot "
        "blink or turn). A photo attack is therefore shown as the applicant's own enrollment "
        "photo with their card, after the applicant went in; with liveness off the gate "
        "admits it, and attendance is unchanged because the applicant is already present. "
        "**This rehearsal does not measure liveness.** At a real door `[liveness] enabled = "
        "true` asks for a random action; its resistance to photo attacks is measured by "
        "`gerbang-device pad-eval` (docs/liveness.md).\n")
    table(result["photo_attack_rows"], "Photo of", "Target",
          admitted_means="yes (liveness off)")
    add("### At the wrong room's door\n")
    table(result["wrong_room_rows"], "Person", "Own room")
    add("### Faces the camera could not see well\n")
    if result["poor_capture_rows"]:
        add("| T+ s | Gate | Applicant's face | Capture | First frame | Then |\n"
            "|---|---|---|---|---|---|")
        for r in result["poor_capture_rows"]:
            add(f"| {r['at_s']:.0f} | {r['gate']} | {r['person']} | {r['capture']} | "
                f"{r['first']} | {r['then']} |")
        add("")
    else:
        add("None in this rehearsal.\n")
    add(f"### Admitted by a proctor: {len(result['proctor_rows'])}\n")
    add(f"Genuine applicants the gate refused {MAX_GENUINE_TRIES} times; the proctor checked "
        "their KTP and admitted them on the dashboard (`manual_admit`, audited).\n")
    if result["proctor_rows"]:
        add("| Applicant | Gate | Attempts | What the gate decided |\n|---|---|---|---|")
        for r in result["proctor_rows"]:
            add(f"| {r['applicant_id']} | {r['gate']} | {r['attempts']} | "
                f"{'; '.join(r['outcomes'])} |")
        add("")
    d = result["decisions"]
    add("### Every identity decision against the truth\n")
    add(f"{d['true_accepts']} genuine accepted, {d['false_rejects']} genuine refused (they "
        f"tried again), {d['true_rejects']} impostors or wrong-room cards refused, "
        f"**{d['false_accepts']} false accepts**; {d['no_event']} frames gave no decision (no "
        f"face found, or the gate went down while judging: {d['gate_went_down']}) and the "
        "person stepped up again. Poor captures and photo attacks are in their own tables "
        "above.\n")

    lat = result["latency_ms"]
    add("## Check-in latency per gate\n")
    add(f"From the camera frame to the decision committed in the gate's outbox, over "
        f"{lat['n']} decisions: p50 {_ms(lat['p50'])} ms, p95 {_ms(lat['p95'])} ms, max "
        f"{_ms(lat['max'])} ms (all {setup['gates']} gates share this 2-core machine with the "
        "gateway and the broker; a Pi has its gate to itself).\n")
    add("![latency per gate](plots/latency.png)\n")
    add("| Gate | Decisions | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for r in result["latency"]:
        add(f"| {r['gate']} | {r['n']} | {_ms(r['p50'])} | {_ms(r['p95'])} | {_ms(r['max'])} |")

    add("\n## Delivery: lost and duplicated check-ins\n")
    add(f"**{result['lost']} lost, {result['duplicated']} duplicated, {result['undelivered']} "
        "still waiting in a gate.** Every gate numbers its check-ins (and alarms) 0, 1, 2, … in "
        "its outbox (`seq`); each number must be stored at the gateway exactly once. 'Logged' "
        "counts the decisions the gate wrote in its log (a gate killed between committing and "
        "logging has more stored than logged, never fewer).\n")
    add("| Gate | Appended | Acked | Stored | Lost | Duplicated | Left in outbox | Logged | "
        "Process starts |\n|---|---|---|---|---|---|---|---|---|")
    for r in result["delivery"]:
        add(f"| {r['gate']} | {r['appended']} | {r['acked']} | {r['stored']} | {r['lost']} | "
            f"{r['duplicated'] + r['unknown']} | {r['depth']} | {r['logged']} | {r['starts']} |")

    add("\n## Faults\n")
    if faults:
        add(f"{result['faults_survived']} of {len(faults)} survived: each component came back "
            "by itself, and the checks above include everything that happened during them.\n")
        add("| T+ s (clock) | Fault | Target | Came back after | What happened | Survived |\n"
            "|---|---|---|---|---|---|")
        for f in faults:
            start = f["started_s"] if f["started_s"] is not None else f["at_s"]
            back = (f"{f['recovered_s'] - start:.1f} s" if f["recovered_s"] is not None
                    else "**not**")
            add(f"| {start:.0f} ({_clock(start, k)}) | {f['title']} | {f['target']} | {back} | "
                f"{f['detail']} | {'yes' if f['survived'] else '**NO**'} |")
    else:
        add("None injected (`--no-faults`).")
    if setup["broker_errors"]:
        add("\nMosquitto logged errors: " + "; ".join(f"`{e}`" for e in setup["broker_errors"]))
    add("\n![the morning](plots/morning.png)\n")

    res = result["resources"]
    add("## Resources\n")
    load = res["load"]
    add(f"Peak memory (PSS: shared pages counted once) of all processes together: "
        f"**{res['peak_total_rss_mb'] / 1024:.1f} GB**; mean CPU "
        f"{res['mean_total_cpu_pct']:.0f} % (200 % = both cores). Load average "
        f"during the morning {load.get('min', 0):.1f}–{load.get('max', 0):.1f} (mean "
        f"{load.get('mean', 0):.1f}); this machine is shared, so other work counts in it.\n")
    add("![resources](plots/resources.png)\n")
    rows = res["per_process"]
    gates = [r for r in rows if r["process"].startswith(CENTRE + "-")]
    others = [r for r in rows if r not in gates]
    add("| Process | Peak PSS MB | Mean CPU % | Peak CPU % | CPU s | Processes (a restart "
        "adds one) |\n|---|---|---|---|---|---|")
    for r in others:
        add(f"| {r['process']} | {r['peak_rss_mb']:.0f} | {r['mean_cpu_pct']:.1f} | "
            f"{r['peak_cpu_pct']:.0f} | {r['cpu_s']:.0f} | {r['pids']} |")
    if gates:
        rss = [r["peak_rss_mb"] for r in gates]
        add(f"| gates (each, median / max of {len(gates)}) | {np.median(rss):.0f} / "
            f"{max(rss):.0f} | {np.median([r['mean_cpu_pct'] for r in gates]):.1f} / "
            f"{max(r['mean_cpu_pct'] for r in gates):.1f} | "
            f"{max(r['peak_cpu_pct'] for r in gates):.0f} | "
            f"{sum(r['cpu_s'] for r in gates):.0f} (all) | "
            f"{sum(r['pids'] for r in gates)} |")
        add("\n<details><summary>Every gate</summary>\n")
        add("| Gate | Peak PSS MB | Mean CPU % | Peak CPU % | CPU s | Processes |\n"
            "|---|---|---|---|---|---|")
        for r in gates:
            add(f"| {r['process']} | {r['peak_rss_mb']:.0f} | {r['mean_cpu_pct']:.1f} | "
                f"{r['peak_cpu_pct']:.0f} | {r['cpu_s']:.0f} | {r['pids']} |")
        add("\n</details>")
    t = result["timings"]
    add(f"\nWall time {t.get('wall_s', 0):.0f} s: setting up (enrollment, rosters, starting "
        f"every process) {t.get('setup_s', 0):.0f} s, the morning {t.get('morning_s', 0):.0f} s"
        f" (of which waiting for the last deliveries {t.get('settle_s', 0):.0f} s), then "
        "stopping and this report.\n")

    add("## Notes and limits\n")
    add(f"- **Time is compressed {k:.1f}×.** The 5-minute network cut lasts "
        f"{300 / k:.0f} s, a Pi's boot {max(RESTART_SEC + 1, REAL_BOOT_S / k):.0f} s; "
        f"systemd's 2 s restart delay is not compressed. The gates' MQTT keep-alive is "
        f"{GATE_KEEPALIVE_S} s here (30 s at a centre) so that the cut is long enough for both "
        "ends to notice it, as they would in 5 minutes.")
    add("- **Liveness is off** (the gates replay stills); photo attacks are shown but not "
        "defended here. Liveness is measured by `gerbang-device pad-eval` (docs/liveness.md).")
    if setup["transport"]["mode"] == "plain":
        add("- **MQTT is plain, on loopback** (`--plain-mqtt`, for debugging only), with the "
            "project's local Mosquitto config: no TLS, no client certificates, no ACL. Without "
            "the flag the rehearsal provisions the centre and runs everything over mutual TLS.")
    else:
        add("- **Mutual TLS as at a centre, on one machine.** The centre was provisioned for "
            "this run with the project's own code (`provisioning/pki.py`, "
            "`provisioning/broker_config.py`): a new CA, the broker's certificate, the "
            "gateway's, and one per gate whose key was made in the gate's own folder (at a "
            "centre: on the Pi, `gerbang-provision device add --csr-from-host`). Every process "
            "runs on loopback; the broker is reached at 127.0.0.1 and its certificate checked "
            f"for `{BROKER_NAME}`. The private keys were deleted when the run ended.")
    add("- The network cut is a relay between that gate and the broker that stops moving bytes "
        "and refuses new connections; a power cut is `kill -9` (the machine's page cache "
        "survives it, a Pi's would not: the outbox's fsync on every commit is tested on its own "
        "in tests/test_outbox.py).")
    add("- Each gate's camera is a replayed feed: an empty hallway at "
        f"{setup['camera_fps']:g} frame/s, and a person's frame when they step up. The "
        "applicant reads the gate's decision from its log, as they would read its screen; "
        "every figure above comes from the gateway, the outboxes and the stored events.")
    add("\n## Files\n")
    add("- `summary.json`: every figure in this report; `rehearsal.log`: the run's log")
    add("- `run/logs/`: each gate's, the gateway's log; `run/broker/mosquitto.log`")
    if setup["transport"]["mode"] != "plain":
        add("- `run/broker/`: the generated `mosquitto.conf` and `dynamic-security.json` (the "
            "broker's rules) it ran, `certs/`; "
            "`run/centre/`: the centre CA's certificate, CRL and every certificate it issued; "
            "`run/gateway/tls/`, `run/gates/<gate>/tls/`: each client's certificate and CSR "
            "(the private keys were deleted at the end of the run)")
    add("- `run/gates/<gate>/`: config, roster, outbox, camera frames; `run/rosters/`: room "
        "rosters (biometric templates: delete them with the work directory)")
    add("- `enrollment/templates.json`: the enrollment cache (templates, mode 0600) that makes "
        "a re-run with the same `--workdir` start faster")
    path = workdir / "report.md"
    path.write_text("\n".join(out) + "\n")
    return path
