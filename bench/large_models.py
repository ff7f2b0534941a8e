"""Large checkpoints through `ortgen export` and the runtime: gpt2-large (774M) and gpt-neo-1.3B,
random weights with the real configs, each at fp32 / int8 / int4. Per export (a fresh process):
wall time, peak RSS and its ratio to the fp32 weight bytes, folder size; per folder: W1 (16 → 128
greedy tokens, 2 threads, `bench.measure` in a fresh process) tokens/s. One table in bench/results.

    python -m bench.large_models [--models gpt2-large gpt-neo-1.3B] [--precisions fp32 int8 int4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.checkpoints import build
from bench.prepare import export_command
from bench.run import measure

BENCH = Path(__file__).parent
WORK, RESULTS = BENCH / "work", BENCH / "results"
MODELS = ("gpt2-large", "gpt-neo-1.3B")
PRECISIONS = ("fp32", "int8", "int4")


def export(checkpoint: Path, folder: Path, precision: str) -> dict:
    """One `ortgen export` process: wall seconds, its own peak RSS (wait4), success."""
    start = time.perf_counter()
    process = subprocess.Popen(
        export_command(checkpoint, folder, precision),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    failed = os.waitstatus_to_exitcode(status) != 0
    if failed:
        print(f"export {folder.name} failed:\n{errors[-2000:]}", file=sys.stderr)
    return dict(ok=not failed, export_s=seconds, peak_rss_gb=usage.ru_maxrss / 1e6)


def tokens_per_s(folder: Path) -> float:
    return measure("ortgen", {"python": sys.executable, "path": folder}, "w1")["value"]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def measure_model(name: str, precisions: list[str]) -> list[dict]:
    checkpoint = build(WORK / f"{name}-random", name)
    # fp32 as saved, tied weights once (shards summed)
    weights = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))
    rows = []
    for precision in precisions:
        folder = WORK / f"{name}-{precision}"
        row = dict(model=name, precision=precision, fp32_weight_gb=weights / 1e9)
        row |= export(checkpoint, folder, precision)
        if row["ok"]:
            row |= dict(folder_gb=folder_bytes(folder) / 1e9, w1_tok_s=tokens_per_s(folder))
        row["rss_over_fp32"] = row["peak_rss_gb"] / row["fp32_weight_gb"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = "model          precision  export s  peak RSS GB  ×fp32 bytes  folder GB  W1 tok/s"
    lines = [head]
    for r in rows:
        if not r["ok"]:
            lines.append(
                f"{r['model']:14} {r['precision']:9}  failed (peak {r['peak_rss_gb']:.1f} GB)"
            )
            continue
        lines.append(
            f"{r['model']:14} {r['precision']:9} {r['export_s']:9.0f} {r['peak_rss_gb']:12.2f}"
            f" {r['rss_over_fp32']:12.2f} {r['folder_gb']:10.2f} {r['w1_tok_s']:9.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    args = parser.parse_args()
    rows = [row for name in args.models for row in measure_model(name, args.precisions)]
    import onnxruntime

    text = (
        f"{platform.processor() or platform.machine()}; onnxruntime {onnxruntime.__version__}; "
        "random weights, real configs; one export process each (peak RSS from wait4); W1 = "
        "16 → 128 greedy tokens, 2 threads, prefill included\n\n" + table(rows)
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M")
    (RESULTS / f"large-models-{stamp}.md").write_text(text + "\n", encoding="utf-8")
    (RESULTS / f"large-models-{stamp}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
