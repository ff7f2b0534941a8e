"""W1 idle and under load: the same measurements with nothing else running and with THREADS busy
processes (`while True: pass`) on the cores, interleaved in rounds; the share of its idle speed
each system keeps (issue 9: ortgen should degrade no worse than llama.cpp). ortgen runs with ONNX
Runtime's threads spinning (the Generator's default), sleeping at once (`spin=False`) and spinning
100 µs (`spin=100`, `ortgen serve`'s default). `python -m bench.under_load [--rounds 3]`; llama.cpp
needs `make bench-setup`."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench.measure import THREADS
from bench.prepare import PEERS, WORK
from bench.run import RESULTS, measure

OURS = (Path(sys.executable), WORK / "gpt2-int8")
SYSTEMS = {  # name → (python, folder)
    "ortgen-int8": OURS,
    "ortgen-int8+nospin": OURS,
    "ortgen-int8+spin100": OURS,
    "llamacpp-q8_0": (PEERS / "python", WORK / "gpt2-gguf" / "model-q8_0.gguf"),
}


@contextmanager
def busy(processes: int):
    """`processes` Python processes spinning on the CPU meanwhile."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def one(system: str) -> float:
    python, path = SYSTEMS[system]
    return measure(system, {"python": python, "path": path}, "w1")["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    systems = [s for s, (python, path) in SYSTEMS.items() if path.exists() and python.exists()]
    runs: dict[str, dict[str, list[float]]] = {s: {"idle": [], "loaded": []} for s in systems}
    for _ in range(args.rounds):
        for state in ("idle", "loaded"):
            with busy(THREADS if state == "loaded" else 0):
                for system in systems:
                    runs[system][state].append(one(system))
    kept = {
        s: statistics.median(b / a for a, b in zip(r["idle"], r["loaded"], strict=True))
        for s, r in runs.items()
    }
    lines = ["| system | idle tok/s | loaded tok/s | kept (median of rounds) |", "|---" * 4 + "|"]
    for system, r in runs.items():
        idle, loaded = (" / ".join(f"{v:.0f}" for v in r[k]) for k in ("idle", "loaded"))
        lines.append(f"| {system} | {idle} | {loaded} | {kept[system]:.0%} |")
    print("\n".join(lines))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"under-load-{stamp}.md").write_text(
        f"# W1 idle vs {THREADS} busy processes, gpt2-124M int8 / q8_0, {THREADS} threads, "
        f"{args.rounds} rounds (`python -m bench.under_load`)\\n\\n" + "\\n".join(lines) + "\\n"
    )
    (RESULTS / f"under-load-{stamp}.json").write_text(json.dumps({"runs": runs, "kept": kept}))


if __name__ == "__main__":
    main()
