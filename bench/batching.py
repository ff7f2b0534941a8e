"""Batching gain in one run: W3's 8 × 16-token prompts → 64 tokens as one left-padded batch,
beside the same prompts one at a time (ortgen, each measurement in a fresh process, rounds
interleaved). Uses the folders `make bench` exported.

    python -m bench.batching [--rounds 5] [--precisions fp32 int8]
"""

from __future__ import annotations

import argparse
import random
import statistics

from bench.run import WORK, measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arch", default="gpt2")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    args = parser.parse_args()
    import sys
    from pathlib import Path

    runs = [(p, w) for p in args.precisions for w in ("w3", "w3seq")] * args.rounds
    random.Random(0).shuffle(runs)
    results: dict = {}
    for precision, workload in runs:
        spec = dict(python=Path(sys.executable), path=WORK / f"{args.arch}-{precision}")
        value = measure(f"ortgen-{precision}", spec, workload)["value"]
        results.setdefault((precision, workload), []).append(value)
    print(
        f"\n{args.arch}, 8 × 16-token prompts → 64 tokens each, total tokens/s, median (min–max)\n"
    )
    print("| precision | one batch of 8 | one at a time | ratio |")
    print("|---|---|---|---|")
    for precision in args.precisions:
        batch, alone = results[precision, "w3"], results[precision, "w3seq"]
        print(
            f"| {precision} | {statistics.median(batch):.0f} ({min(batch):.0f}–{max(batch):.0f}) "
            f"| {statistics.median(alone):.0f} ({min(alone):.0f}–{max(alone):.0f}) "
            f"| {statistics.median(batch) / statistics.median(alone):.2f}× |"
        )


if __name__ == "__main__":
    main()
