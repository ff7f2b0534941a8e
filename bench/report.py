"""The bench report: one table per model, ratios to llama.cpp and CTranslate2, the bandwidth
efficiency of int8 decode, the decode-step scaling table and the goals (issue 9 and earlier)."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.measure import STEPS
from bench.prepare import PASTS, PROBE, SCALED_SYSTEMS, SCALING, WORKLOAD_NAMES

COLUMNS = ("W1 tok/s", "W2 TTFT ms", "W3 tok/s", "W4 tok/s", "W5 tok/s")
HIGHER_IS_BETTER = {"w1": True, "w2": False, "w3": True, "w4": True, "w5": True}
# (ortgen system, peer): the same bits in both, or CTranslate2's int8 for every precision
PAIRS = (
    ("ortgen-int8", "llamacpp-q8_0"),
    ("ortgen-int4", "llamacpp-q4_0"),
    ("ortgen-int8", "ct2-int8"),
    ("ortgen-int4", "ct2-int8"),
)


def median(runs: list[dict]) -> float:
    return statistics.median(r["value"] for r in runs)


def cell(runs: list[dict] | None, digits: int = 0) -> str:
    if not runs:
        return "–"
    values = [r["value"] for r in runs]
    shown = (min(values), statistics.median(values), max(values))
    low, mid, high = (f"{v:.{digits}f}" for v in shown)
    return f"{mid} ({low}–{high})"


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def all_runs(runs: dict) -> list[dict]:
    return [r for results in runs.values() for r in results]


def table(arch: str, systems: dict, results: dict) -> list[str]:
    lines = [
        f"\n### {arch}\n",
        "| system | " + " | ".join(COLUMNS) + " | peak RSS MB | load s | disk MB |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for system, runs in results.items():
        if system == PROBE:
            continue
        rss = max(r["peak_rss_mb"] for r in all_runs(runs))
        load = statistics.median(r["load_s"] for r in all_runs(runs))
        cells = " | ".join(cell(runs.get(w)) for w in WORKLOAD_NAMES)
        disk = size_mb(Path(systems[system]["path"]))
        lines.append(f"| {system} | {cells} | {rss:.0f} | {load:.1f} | {disk:.0f} |")
    return lines


def ratio(
    results: dict,
    system: str,
    peer: str,
    workload: str,
    peer_workload: str = "",
    peer_results: dict | None = None,
) -> float | None:
    """system's workload ÷ peer's (peer_workload: another workload of it; peer_results: another
    model's): the median of the rounds' ratios, each round's two measurements made back to back
    (bench.run.unit); runs of unequal counts (older results) → the ratio of the medians."""
    mine = results.get(system, {}).get(workload)
    theirs = (peer_results or results).get(peer, {}).get(peer_workload or workload)
    if not mine or not theirs:
        return None
    if len(mine) != len(theirs):
        return median(mine) / median(theirs)
    return statistics.median(m["value"] / t["value"] for m, t in zip(mine, theirs, strict=True))


def ratios(results: dict) -> list[str]:
    """ortgen ÷ peer per workload (W2 is a time: below 1 is better there)."""
    pairs = [(s, p) for s, p in PAIRS if s in results and p in results]
    if not pairs:
        return []
    lines = ["\n| ortgen ÷ peer | W1 | W2 (time) | W3 | W4 | W5 |", "|---|---|---|---|---|---|"]
    for system, peer in pairs:
        values = [ratio(results, system, peer, w) for w in WORKLOAD_NAMES]
        cells = " | ".join("–" if v is None else f"{v:.2f}" for v in values)
        lines.append(f"| {system} ÷ {peer} | {cells} |")
    return lines


def weight_bytes_per_token(folder: Path) -> float:
    """Bytes of weights one decode step reads: every initializer of model.onnx except the
    position embedding, of which a step gathers one row (the token embedding is the tied LM
    head's weight, read whole every step)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
    total = 0
    for tensor in graph.initializer:
        if "wpe" in tensor.name or "position" in tensor.name:
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        total += count * tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return float(total)


def bandwidth(systems: dict, results: dict) -> tuple[list[str], float | None]:
    """The probe's GB/s and the share of it that ortgen int8's W1 weight streaming reaches."""
    probe, w1 = results.get(PROBE, {}).get("bw"), results.get("ortgen-int8", {}).get("w1")
    if not probe:
        return [], None
    gbps = median(probe)
    lines = [f"\nRead-bandwidth probe (2 threads, same rounds): {cell(probe)} GB/s."]
    if not w1:
        return lines, None
    per_token = weight_bytes_per_token(Path(systems["ortgen-int8"]["path"]))
    streamed = median(w1) * per_token / 1e9
    share = ratio(results, "ortgen-int8", PROBE, "w1", "bw") * per_token / 1e9  # per round
    lines.append(
        f"ortgen int8 W1: {median(w1):.0f} tok/s × {per_token / 1e6:.1f} MB of weights per "
        f"token = {streamed:.1f} GB/s; {share:.0%} of the probe (median of the rounds' shares; "
        f"bound at the median probe: {gbps * 1e9 / per_token:.0f} tok/s)."
    )
    return lines, share


def scaling(results: dict) -> tuple[list[str], float | None]:
    """Decode step time (median) by past length; → lines, ortgen's past-900 ÷ past-16."""
    systems = [s for s in SCALED_SYSTEMS if any(w in results.get(s, {}) for w in SCALING)]
    if not systems:
        return [], None
    both = len(systems) == 2
    lines = [
        f"\nDecode step time, ms (median of {STEPS} steps; medians over rounds) by past length:\n",
        "| past | " + " | ".join(systems) + (" | ortgen ÷ llama.cpp |" if both else " |"),
        "|---" * (len(systems) + 1 + both) + "|",
    ]
    for workload in SCALING:
        steps = [median(results[s][workload]) if workload in results[s] else None for s in systems]
        cells = " | ".join("–" if v is None else f"{v:.2f}" for v in steps)
        if both:
            cells += " | –" if None in steps else f" | {steps[0] / steps[1]:.2f}"
        lines.append(f"| {workload.removeprefix('past')} | {cells} |")
    apart = ratio(results, "ortgen-int8", "ortgen-int8", SCALING[-1], SCALING[0])  # per round
    alternated = results.get("ortgen-int8", {}).get("flat")
    if not alternated:  # older results: the two past lengths' separate processes
        return lines, apart
    flat = median(alternated)
    lines.append(
        f"\nortgen-int8 step at past {PASTS[-1]} ÷ past {PASTS[0]}, the two decode states' steps "
        f"alternated in one process ({STEPS} each): {cell(alternated, 2)} (median (min–max) over "
        "rounds; the goal's measurement)"
        + ("" if apart is None else f"; from the separate processes above: {apart:.2f}")
        + "."
    )
    return lines, flat


def goals(
    results: dict, share: float | None, flat: float | None, neo: dict | None = None
) -> list[str]:
    """Each goal as (text, measured, bound, at least?) where this run measured both sides.
    results: gpt2's; neo: gpt_neo's (its int8 within 10 % of gpt2's int8 on every workload)."""
    checks = []
    for system, peer, bits in (
        ("ortgen-int8", "llamacpp-q8_0", 8),
        ("ortgen-int4", "llamacpp-q4_0", 4),
    ):
        for w in ("w1", "w4", "w5"):
            checks.append(
                (f"int{bits} {w.upper()} ≥ 1.5× {peer}", ratio(results, system, peer, w), 1.5, True)
            )
        checks.append(
            (f"int{bits} W2 TTFT ≤ 0.5× {peer}", ratio(results, system, peer, "w2"), 0.5, False)
        )
    checks += [
        (
            "int8 W2 TTFT ≤ 0.7× ct2-int8",
            ratio(results, "ortgen-int8", "ct2-int8", "w2"),
            0.7,
            False,
        ),
        ("int8 W1 weight streaming ≥ 60 % of the probe", share, 0.6, True),
        ("int8 step at past 900 ≤ 1.2× past 16", flat, 1.2, False),
        # earlier targets (the CTranslate2 comparison)
        ("int8 W1 ≥ 2.0× ct2-int8", ratio(results, "ortgen-int8", "ct2-int8", "w1"), 2.0, True),
        ("int4 W1 ≥ 2.5× ct2-int8", ratio(results, "ortgen-int4", "ct2-int8", "w1"), 2.5, True),
        ("int8 W3 ≥ 1.3× ct2-int8", ratio(results, "ortgen-int8", "ct2-int8", "w3"), 1.3, True),
        ("fp32 W1 ≥ 1.0× ct2-fp32", ratio(results, "ortgen-fp32", "ct2-fp32", "w1"), 1.0, True),
    ]
    for system, peer in (
        ("ortgen-int8", "llamacpp-q8_0"),
        ("ortgen-int4", "llamacpp-q4_0"),
        ("ortgen-int8", "ct2-int8"),  # an earlier target
    ):
        rss = [
            max((r["peak_rss_mb"] for r in all_runs(results.get(s, {}))), default=None)
            for s in (system, peer)
        ]
        if None not in rss:
            name = f"{system.removeprefix('ortgen-')} peak RSS ≤ 1.0× {peer}"
            checks.append((name, rss[0] / rss[1], 1.0, False))
    for w in WORKLOAD_NAMES if neo else ():
        within = ratio(neo, "ortgen-int8", "ortgen-int8", w, peer_results=results)
        up = HIGHER_IS_BETTER[w]  # W2 a time: the bound is above 1 there
        name = f"gpt_neo int8 {w.upper()} {'≥ 0.9' if up else '≤ 1.1'}× gpt2 int8"
        checks.append((name, within, 0.9 if up else 1.1, up))
    rows = [(n, v, b, up) for n, v, b, up in checks if v is not None]
    return ["", *goal_lines(rows)] if rows else []


def holds(value: float, bound: float, at_least: bool) -> bool:
    return value >= bound if at_least else value <= bound


def goal_lines(rows: list[tuple[str, float, float, bool]]) -> list[str]:
    """A Markdown goal table from (goal, measured, bound, at least?) rows."""
    lines = ["| goal | measured | holds |", "|---|---|---|"]
    for name, value, bound, at_least in rows:
        shown = f"{value:.3f}" if abs(value - bound) < 0.005 else f"{value:.2f}"  # 0.598 < 0.6
        lines.append(f"| {name} | {shown} | {'yes' if holds(value, bound, at_least) else 'no'} |")
    return lines


def report(header: str, systems_by_arch: dict, all_results: dict) -> str:
    lines = [header]
    for arch, results in all_results.items():
        lines += table(arch, systems_by_arch[arch], results)
        lines += ratios(results)
    gpt2 = all_results.get("gpt2", {})
    probe_lines, share = bandwidth(systems_by_arch.get("gpt2", {}), gpt2)
    scale_lines, flat = scaling(gpt2)
    neo = all_results.get("gpt_neo")
    return "\n".join(lines + probe_lines + scale_lines + goals(gpt2, share, flat, neo))
