"""The overload benchmark's record: a section of <output-dir>/BENCHMARKS.md and overload.json.

The section sits between two markers, so the capacity benchmark (bench/capacity_report.py),
which rewrites BENCHMARKS.md, carries it over, and a new overload run replaces only it.
Every number is read from the results the benchmark measured.
"""

from __future__ import annotations

from pathlib import Path

from bench.record import fmt, write_json

BEGIN, END = "<!-- overload:begin -->", "<!-- overload:end -->"
# CPU per refusal is a difference of two CPU figures over the refusals: shown only over enough of them.
MIN_REFUSALS = 100
TARGETS = {
    "goodput_1.5x_2x": 0.85,
    "goodput_5x": 0.60,
    "refusal_p99_ms": 20.0,
    "refused_at_0.8x": 0.001,
    "recovery_s": 5.0,
    "capacity_drop": 0.03,
    "cpu_per_refusal_ms": 0.3,
}


def check_targets(results: dict) -> dict:
    """The issue's targets, each as {value, target, met}, from the median steps of the budget-on server."""
    cap = results["capacity_rps"]
    budget = results["budget_ms"]
    steps = {s["name"]: s for s in results["median"]["budget_on"]}
    out: dict = {}

    def add(key: str, value, target, met: bool | None) -> None:
        out[key] = {"value": value, "target": target, "met": met}

    for name, key in (("1.5x", "goodput_1.5x_2x"), ("2x", "goodput_1.5x_2x"), ("5x", "goodput_5x")):
        share = steps[name]["goodput_rps"] / cap if steps.get(name) and steps[name]["goodput_rps"] is not None else None
        add(f"goodput_{name}", share, TARGETS[key], None if share is None else share >= TARGETS[key])
    overload = [steps[n] for n in ("1.5x", "2x", "5x") if n in steps]
    worst_p95 = max((s["answered_p95_ms"] for s in overload if s["answered_p95_ms"] is not None), default=None)
    add("answered_p95_ms", worst_p95, budget, None if worst_p95 is None else worst_p95 <= budget)
    worst_refusal = max((s["refusal_p99_ms"] for s in steps.values() if s["refusal_p99_ms"] is not None), default=None)
    add(
        "refusal_p99_ms",
        worst_refusal,
        TARGETS["refusal_p99_ms"],
        None if worst_refusal is None else worst_refusal <= TARGETS["refusal_p99_ms"],
    )
    low = steps.get("0.8x", {}).get("refused_share")
    add("refused_at_0.8x", low, TARGETS["refused_at_0.8x"], None if low is None else low <= TARGETS["refused_at_0.8x"])
    rounds = results["rounds"]["budget_on"]
    recoveries = [r[-1]["recovery_s"] for r in rounds]
    worst = None if any(v is None for v in recoveries) else max(recoveries, default=None)
    # A round that never recovered within its step fails the target; it is not "n/a".
    add(
        "recovery_s",
        worst,
        TARGETS["recovery_s"],
        bool(recoveries) and worst is not None and worst <= TARGETS["recovery_s"],
    )
    per_refusal = steps.get("5x", {}).get("server_cpu_ms_per_refusal")
    add(
        "cpu_per_refusal_ms",
        per_refusal,
        TARGETS["cpu_per_refusal_ms"],
        None if per_refusal is None else per_refusal <= TARGETS["cpu_per_refusal_ms"],
    )
    on, off = (results["capacity"][k]["capacity_rps"] for k in ("budget_on", "budget_off"))
    drop = 1 - on / off if off else None
    add("capacity_drop", drop, TARGETS["capacity_drop"], None if drop is None else drop <= TARGETS["capacity_drop"])
    return out


def render_section(results: dict) -> str:
    cap, budget = results["capacity_rps"], results["budget_ms"]
    machine = results["machine"]
    targets = results["targets"]
    lines = [
        BEGIN,
        "## Overload: the latency budget on and off",
        "",
        f"Measured {machine['date_utc']} UTC on {machine['cpu_model']} ({machine['logical_cpus']} CPUs), commit "
        f"{machine.get('git_commit')}, ONNX Runtime {machine['onnxruntime']}: `{results['command']}`.",
        f"{results['texts']['count']} reviews ({results['texts']['source']}), one per request, open-loop Poisson "
        f"arrivals, {results['step_s']:g} s per step, {len(results['rounds']['budget_on'])} round(s); each figure is "
        "the median over rounds.",
        "",
        f"Capacity (the normal search: p95 <= {budget:g} ms, errors <= "
        f"{results['config']['max_error_rate']:.0%}): budget off "
        f"**{fmt(results['capacity']['budget_off']['capacity_rps'])} req/s**, budget on "
        f"**{fmt(results['capacity']['budget_on']['capacity_rps'])} req/s**. Steps are multiples of "
        f"the budget-off capacity, {cap:.1f} req/s; the recovery step follows the 5x step at once.",
        "",
        "| server | step | offered req/s | goodput req/s (share of capacity) | refused | refusal p50 / p99 ms | "
        "answered p50 / p95 / p99 ms | other errors | server cores (event loop) | server CPU ms per refusal | "
        "generator cores | "
        "p95 back under budget after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("budget_on", "budget_off"):
        label = f"budget {budget:g} ms" if name == "budget_on" else "budget off"
        for s in results["median"][name]:
            share = s["goodput_rps"] / cap if cap and s["goodput_rps"] is not None else None
            recovery = fmt(s.get("recovery_s"), ".0f", " s") if s["name"].startswith("recovery") else ""
            if s["name"].startswith("recovery") and s.get("recovery_s") is None:
                recovery = "not within the step"
            per_refusal = s.get("server_cpu_ms_per_refusal") if (s["refused"] or 0) >= MIN_REFUSALS else None
            lines.append(
                f"| {label} | {s['name']} | {fmt(s['rate'])} | {fmt(s['goodput_rps'])} ({fmt(share, '.0%')}) | "
                f"{fmt(s['refused_share'], '.1%')} | {fmt(s['refusal_p50_ms'])} / {fmt(s['refusal_p99_ms'])} | "
                f"{fmt(s['answered_p50_ms'], '.0f')} / {fmt(s['answered_p95_ms'], '.0f')} / "
                f"{fmt(s['answered_p99_ms'], '.0f')} | {fmt(s['other_errors'], '.0f')} | "
                f"{fmt(s['server_cpu_cores'], '.2f')} ({fmt(s.get('loop_cpu_cores'), '.2f')}) | "
                f"{fmt(per_refusal, '.2f')} | {fmt(s['client_cpu_cores'], '.2f')} | {recovery} |"
            )
    lines += [
        "",
        "Targets (budget-on server, medians over rounds):",
        "",
        "| target | measured | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    names = {
        "goodput_1.5x": ("goodput at 1.5x, share of capacity", ".0%", ">= "),
        "goodput_2x": ("goodput at 2x, share of capacity", ".0%", ">= "),
        "goodput_5x": ("goodput at 5x, share of capacity", ".0%", ">= "),
        "answered_p95_ms": ("worst p95 of answered requests at 1.5x-5x, ms", ".0f", "<= "),
        "refusal_p99_ms": ("worst refusal p99, ms", ".1f", "<= "),
        "refused_at_0.8x": ("refused at 0.8x", ".2%", "<= "),
        "recovery_s": ("seconds until p95 is back under budget after 5x (worst round)", ".0f", "<= "),
        "cpu_per_refusal_ms": (
            "server CPU per refusal at 5x, ms (the event loop's CPU, less each answer's as "
            "measured at 0.8x, over the refusals)",
            ".2f",
            "<= ",
        ),
        "capacity_drop": ("capacity search, budget on against off (drop)", ".1%", "<= "),
    }
    for key, (label, spec, sign) in names.items():
        t = targets[key]
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {label} | {fmt(t['value'], spec)} | {sign}{fmt(t['target'], spec)} | {met} |")
    lines += [
        "",
        f"Server CPU per refusal is shown for steps with at least {MIN_REFUSALS} refusals. Per-round figures "
        "and every step of both capacity searches are in overload.json.",
        END,
        "",
    ]
    return "\n".join(lines)


def merge_section(existing: str, section: str) -> str:
    """`existing` with its overload section replaced by `section` (appended when it has none)."""
    if BEGIN in existing and END in existing:
        head, rest = existing.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + section + tail
    return existing.rstrip("\n") + ("\n\n" if existing.strip() else "") + section


def current_section(text: str) -> str:
    """The overload section of a BENCHMARKS.md ('' when it has none), for the capacity report to carry over."""
    if BEGIN in text and END in text:
        return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    return ""


def write_overload_report(out_dir: Path, results: dict) -> list[Path]:
    results = {**results, "targets": check_targets(results)}
    json_path = write_json(out_dir, "overload.json", results)
    md_path = Path(out_dir) / "BENCHMARKS.md"
    existing = md_path.read_text() if md_path.is_file() else ""
    md_path.write_text(merge_section(existing, render_section(results)))
    return [md_path, json_path]
