"""Generation throughput, 2 threads, greedy, random weights with the real configs; each measurement
in a fresh process, rounds interleaved in shuffled order, medians with min–max.

- W1: 16-token prompt → 128 tokens, batch 1 (decode tokens/s): ortgen fp32 and transformers PyTorch.
- W3: 8 × 16-token prompts → 64 tokens each as one left-padded batch (total tokens/s), beside the
  same 8 prompts run one at a time (ortgen).

    python -m bench.generation [--rounds 5] [--arch gpt2 gpt_neo]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).parent / "work"
RESULTS = Path(__file__).parent / "results"
PROMPT_TOKENS, NEW_TOKENS, THREADS = 16, 128, 2
BATCH, BATCH_NEW_TOKENS = 8, 64
SYSTEMS = ("ortgen-w1", "torch-w1", "ortgen-w3", "ortgen-w3-seq")


def prompt_ids(offset: int = 0) -> list[int]:
    return list(range(1000 + offset, 1000 + offset + PROMPT_TOKENS))


def measure_ortgen(folder: Path, workload: str) -> float:
    """Generated tokens per second for `workload` (w1, w3 or w3-seq)."""
    from ortgen import Generator

    generator = Generator.from_dir(folder, threads=THREADS)
    generator.generate_ids(prompt_ids(), max_new_tokens=8, ignore_eos=True)  # warm-up
    prompts = [prompt_ids(100 * i) for i in range(BATCH)]
    start = time.perf_counter()
    if workload == "w1":
        out = [generator.generate_ids(prompt_ids(), max_new_tokens=NEW_TOKENS, ignore_eos=True)]
    elif workload == "w3":
        out = generator.generate_ids(prompts, max_new_tokens=BATCH_NEW_TOKENS, ignore_eos=True)
    else:
        out = [
            generator.generate_ids(p, max_new_tokens=BATCH_NEW_TOKENS, ignore_eos=True)
            for p in prompts
        ]
    return sum(map(len, out)) / (time.perf_counter() - start)


def measure_torch(checkpoint: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.tensor([prompt_ids()])
    config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, generation_config=config)  # warm-up
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, generation_config=config)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def export(arch: str) -> tuple[Path, Path, float]:
    from bench.checkpoints import build

    checkpoint = build(WORK / f"{arch}-random", arch)
    folder = WORK / f"{arch}-fp32"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ortgen", "export", str(checkpoint), str(folder), "--force"],
        check=True,
    )
    return checkpoint, folder, time.perf_counter() - start


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def one(system: str, path: str) -> None:
    if system == "torch-w1":
        rate = measure_torch(Path(path))
    else:
        rate = measure_ortgen(Path(path), system.removeprefix("ortgen-"))
    print(json.dumps({"tokens_per_s": rate}))


def run_rounds(checkpoint: Path, folder: Path, rounds: int) -> dict[str, list[float]]:
    runs = [(s, checkpoint if s.startswith("torch") else folder) for s in SYSTEMS] * rounds
    random.Random(0).shuffle(runs)
    rates: dict[str, list[float]] = {s: [] for s in SYSTEMS}
    for system, path in runs:
        out = subprocess.run(
            [sys.executable, "-m", "bench.generation", "--one", system, str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        rates[system].append(json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"])
    return rates


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.0f}–{max(values):.0f})"


def print_table(results: dict, rounds: int) -> None:
    import onnxruntime

    print(
        f"\n{platform.machine()}, onnxruntime {onnxruntime.__version__}, {THREADS} threads, "
        f"{rounds} interleaved rounds, fresh process each; tokens/s, median (min–max)\n"
        f"W1: {PROMPT_TOKENS}-token prompt → {NEW_TOKENS} tokens, batch 1. "
        f"W3: {BATCH} × {PROMPT_TOKENS}-token prompts → {BATCH_NEW_TOKENS} tokens each.\n"
    )
    print(
        "| model | export s | folder MB | W1 ortgen fp32 | W1 PyTorch | W1 ratio "
        "| W3 ortgen batch | W3 one at a time | W3 ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, r in results.items():
        rates = r["tok_s"]
        med = {s: statistics.median(v) for s, v in rates.items()}
        print(
            f"| {arch} | {r['export_s']:.0f} | {r['folder_mb']:.0f} "
            f"| {cell(rates['ortgen-w1'])} | {cell(rates['torch-w1'])} "
            f"| {med['ortgen-w1'] / med['torch-w1']:.2f}× "
            f"| {cell(rates['ortgen-w3'])} | {cell(rates['ortgen-w3-seq'])} "
            f"| {med['ortgen-w3'] / med['ortgen-w3-seq']:.2f}× |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arch", nargs="+", default=["gpt2", "gpt_neo"])
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(*args.one)
    results = {}
    for arch in args.arch:
        checkpoint, folder, seconds = export(arch)
        rates = run_rounds(checkpoint, folder, args.rounds)
        results[arch] = {"export_s": seconds, "folder_mb": size_mb(folder), "tok_s": rates}
    print_table(results, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generation-fp32.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
