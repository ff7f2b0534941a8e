"""`make bench`: ortgen (fp32, int8, int4) beside transformers PyTorch, optimum's
ORTModelForCausalLM, CTranslate2 (int8, fp32) and llama.cpp (q8_0, q4_0; CTranslate2 and llama.cpp
have no GPT-Neo), on random-weight checkpoints with the real gpt2 (124M) and gpt-neo-125M configs.
Each measurement runs in a fresh process; rounds are interleaved in shuffled order, one workload's
measurements back to back (both models', every system's), each with a read-bandwidth probe beside
W1; medians with min–max, and ratios as medians of each round's ratio. Prints one
markdown table per model, ratios to llama.cpp and CTranslate2, the int8 bandwidth efficiency, a
decode-step scaling table and the goals, and writes the raw results to bench/results/.

    python -m bench.run [--rounds 5] [--arch gpt2 gpt_neo] [--systems ortgen-int8 llamacpp-q8_0 …]
                        [--workloads w1 w4 past16 …]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time

from bench.measure import THREADS, W1, W2, W3, W4, W5
from bench.prepare import BENCH, PROBE, WORK, prepare  # noqa: F401 (WORK: bench.batching)
from bench.report import report

RESULTS = BENCH / "results"


def measure(system: str, spec: dict, workload: str) -> dict:
    out = subprocess.run(
        [str(spec["python"]), "-m", "bench.measure", system, str(spec["path"]), workload],
        capture_output=True,
        text=True,
        cwd=BENCH.parent,
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.splitlines()[-15:])
        raise SystemExit(f"{system} {workload} failed:\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def unit(workload: str) -> str:
    """Measurements made back to back in a round: one workload's, every system and model alike
    (the probe beside W1, the decode-step scaling's past lengths and ortgen's flatness together),
    so the ratios the report takes per round compare measurements made minutes apart at most."""
    if workload == "bw":
        return "w1"
    return "past" if workload.startswith("past") or workload == "flat" else workload


def run_rounds(systems_by_arch: dict, workloads: set[str] | None, rounds: int, seed: int) -> dict:
    """arch → system → workload → one result per round. Each round runs the units (see `unit`)
    in shuffled order, each unit's measurements shuffled: both models' in one order, so ratios
    across models (GPT-Neo against GPT-2) are interleaved too."""
    units: dict[str, list] = {}
    for arch, systems in systems_by_arch.items():
        for s, spec in systems.items():
            for w in spec["workloads"]:
                if s == PROBE or workloads is None or w in workloads:
                    units.setdefault(unit(w), []).append((arch, s, w))
    results: dict = {arch: {s: {} for s in systems} for arch, systems in systems_by_arch.items()}
    rng = random.Random(seed)
    order = list(units.values())
    for round_index in range(rounds):
        rng.shuffle(order)
        for measurements in order:
            rng.shuffle(measurements)
            for arch, system, workload in measurements:
                result = measure(system, systems_by_arch[arch][system], workload)
                results[arch][system].setdefault(workload, []).append(result)
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr)
    return results


def header(rounds: int, filters: list[str]) -> str:
    import onnxruntime

    partial = f" Partial run: {' '.join(filters)}." if filters else ""
    return (
        f"## ortgen bench — {platform.machine()}, {platform.processor() or 'cpu'}, onnxruntime "
        f"{onnxruntime.__version__}, {THREADS} threads, {rounds} rounds (fresh process per "
        f"measurement, shuffled, interleaved, one workload's measurements back to back); median "
        f"(min–max); ratios and goals: medians of the rounds' ratios\n\n"
        f"W1: batch {W1['batch']}, {W1['prompt']}-token prompt → {W1['new']} greedy tokens. "
        f"W2: {W2['prompt']}-token prompt → first token. W3: batch {W3['batch']} × "
        f"{W3['prompt']}-token prompts → {W3['new']} tokens each. W4: {W4['prompt']}-token prompt "
        f"→ {W4['new']} greedy tokens, decode only (prefill + first token timed apart and "
        f"subtracted). W5: {W5['prompt']} → {W5['new']} tokens, nucleus sampling (top_p "
        f"{W5['sampling']['top_p']}, temperature {W5['sampling']['temperature']}, top-k off). "
        f"Random weights, real configs. llama.cpp: llama-cpp-python built from source with "
        f"native flags, n_batch 512, reset before every call.{partial}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arch", nargs="+", default=["gpt2", "gpt_neo"])
    parser.add_argument("--systems", nargs="+", help="only these systems")
    parser.add_argument("--workloads", nargs="+", help="only these workloads (w1…w5, past16…)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started, systems_by_arch = time.time(), {}
    wanted = set(args.systems) if args.systems else None
    workloads = set(args.workloads) if args.workloads else None
    for arch in args.arch:
        print(f"{arch}: preparing artefacts", file=sys.stderr)
        systems_by_arch[arch] = prepare(arch, wanted)
    all_results = run_rounds(systems_by_arch, workloads, args.rounds, args.seed)
    filters = sys.argv[1:] if args.systems or args.workloads else []
    text = report(header(args.rounds, filters), systems_by_arch, all_results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(all_results, indent=1, default=str))
    (RESULTS / f"bench-{stamp}.md").write_text(text + "\n")
    print(
        f"\n{time.time() - started:.0f} s; results in bench/results/bench-{stamp}.*",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
