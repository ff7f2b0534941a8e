"""W1 (16-token prompt → 128 greedy tokens, batch 1, 2 threads): ortgen fp32 beside transformers
PyTorch, each measurement in a fresh process, rounds interleaved in shuffled order.

    python -m bench.w1 [--rounds 5] [--arch gpt2 gpt_neo]
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


def prompt_ids() -> list[int]:
    return list(range(1000, 1000 + PROMPT_TOKENS))


def measure_ortgen(folder: Path) -> float:
    from ortgen import Generator

    generator = Generator.from_dir(folder, threads=THREADS)
    generator.generate_ids(prompt_ids(), max_new_tokens=8, ignore_eos=True)  # warm-up
    start = time.perf_counter()
    out = generator.generate_ids(prompt_ids(), max_new_tokens=NEW_TOKENS, ignore_eos=True)
    return len(out) / (time.perf_counter() - start)


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
    rate = measure_ortgen(Path(path)) if system == "ortgen" else measure_torch(Path(path))
    print(json.dumps({"tokens_per_s": rate}))


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
        runs = [("ortgen", folder), ("torch", checkpoint)] * args.rounds
        random.Random(0).shuffle(runs)
        rates: dict[str, list[float]] = {"ortgen": [], "torch": []}
        for system, path in runs:
            out = subprocess.run(
                [sys.executable, "-m", "bench.w1", "--one", system, str(path)],
                check=True,
                capture_output=True,
                text=True,
            )
            rates[system].append(json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"])
        results[arch] = {"export_s": seconds, "folder_mb": size_mb(folder), "w1_tok_s": rates}
    print(
        f"\nW1: {PROMPT_TOKENS}-token prompt → {NEW_TOKENS} greedy tokens, batch 1, "
        f"{THREADS} threads, {args.rounds} interleaved rounds, fresh process each; "
        f"{platform.processor() or platform.machine()}"
    )
    print("| model | export s | folder MB | ortgen fp32 tok/s | PyTorch tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for arch, r in results.items():
        o, t = (statistics.median(r["w1_tok_s"][s]) for s in ("ortgen", "torch"))
        print(
            f"| {arch} | {r['export_s']:.0f} | {r['folder_mb']:.0f} | {o:.1f} "
            f"({min(r['w1_tok_s']['ortgen']):.0f}–{max(r['w1_tok_s']['ortgen']):.0f}) | "
            f"{t:.1f} ({min(r['w1_tok_s']['torch']):.0f}–{max(r['w1_tok_s']['torch']):.0f}) "
            f"| {o / t:.2f}× |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "w1-fp32.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
