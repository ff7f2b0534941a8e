"""`ortgen batch` on one machine: local 1 process × 2 threads vs 2 processes × 1 thread vs Ray with
2 actors × 1 thread, on the same prompts (16–64 tokens → 64 new tokens, greedy, EOS ignored). Each
run is a fresh `ortgen batch` process into an empty OUTPUT (model loads and Ray's start counted);
rounds interleaved. Prints one table and writes JSON beside it in bench/results.

    python -m bench.batch_jobs MODEL_DIR [--prompts 2000] [--rounds 1] [--batch-size 16]
    python -m bench.batch_jobs /tmp/tiny-gpt2 --prompts 20      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = 64
# name → (ray address or None, actors, threads per actor): the same 2 cores each
SETUPS = {
    "local 1×2": (None, 1, 2),
    "local 2×1": (None, 2, 1),
    "ray 2×1": ("local", 2, 1),
}


def write_prompts(model: Path, count: int, path: Path, seed: int = 0) -> None:
    """`count` records whose prompts encode to 16–64 tokens: random words drawn from the model's
    own vocabulary, kept only while the text re-encodes to the drawn length (a random-weight
    checkpoint's synthetic vocabulary decodes to bytes: its filler tokens would not survive)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    letters = "abcdefghijklmnopqrstuvwxyz"
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as file:
        for i in range(count):
            want, text = rng.randint(16, 64), ""
            while len(tokenizer.encode(text).ids) < want:
                text += " " + "".join(rng.choice(letters) for _ in range(rng.randint(1, 6)))
            ids = tokenizer.encode(text).ids[:want]
            record = {"id": f"p{i}", "prompt": tokenizer.decode(ids)}
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def run(setup: str, model: Path, prompts: Path, batch_size: int) -> dict:
    """One fresh `ortgen batch` process: wall time, records and generated tokens."""
    ray, actors, threads = SETUPS[setup]
    output = Path(tempfile.mkdtemp(prefix="ortgen-batch-bench-"))
    command = [sys.executable, "-m", "ortgen", "batch", str(prompts), str(output / "out")]
    command += ["-m", str(model), "--actors", str(actors), "--threads-per-actor", str(threads)]
    command += ["--batch-size", str(batch_size), "-o", f"max_new_tokens={NEW_TOKENS}"]
    command += ["-o", "ignore_eos=true"] + (["--ray", ray] if ray else [])
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    results = [
        json.loads(line)
        for p in (output / "out").glob("shard-*.jsonl")
        for line in p.read_text().splitlines()
    ]
    shutil.rmtree(output)
    errors = sum("error" in r for r in results)
    # EOS ignored: every record makes exactly NEW_TOKENS (generated_tokens re-encodes the text)
    tokens = (len(results) - errors) * NEW_TOKENS
    return dict(seconds=seconds, records=len(results), tokens=tokens, errors=errors)


def header(model: Path, args: argparse.Namespace) -> str:
    import onnxruntime

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    manifest = json.loads((model / "ortgen.json").read_text())
    return (
        f"{cpu}; onnxruntime {onnxruntime.__version__}; ray {ray_version}; "
        f"{manifest.get('architecture')} {manifest.get('precision')} ({model}); "
        f"{args.prompts} prompts of 16–64 tokens → {NEW_TOKENS} tokens; batch {args.batch_size}; "
        f"{args.rounds} round(s), medians"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path, help="model folder (the 124M int8 export)")
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ortgen-batch-prompts-"))
    prompts = work / "prompts.jsonl"
    write_prompts(args.model, args.prompts, prompts)
    runs: dict[str, list[dict]] = {s: [] for s in SETUPS}
    for _ in range(args.rounds):
        for setup in SETUPS:  # the same order every round
            runs[setup].append(run(setup, args.model, prompts, args.batch_size))
    shutil.rmtree(work)
    lines = [header(args.model, args), ""]
    lines += [
        f"{'setup':<10} {'records/s':>10} {'tokens/s':>10} {'wall s':>8} {'vs local 2×1':>13} "
        f"{'errors':>7}"
    ]
    seconds = {s: statistics.median(r["seconds"] for r in runs[s]) for s in SETUPS}
    for setup, results in runs.items():
        records, tokens = results[0]["records"], results[0]["tokens"]
        overhead = seconds[setup] / seconds["local 2×1"] - 1
        lines.append(
            f"{setup:<10} {records / seconds[setup]:>10.1f} {tokens / seconds[setup]:>10.0f} "
            f"{seconds[setup]:>8.1f} {overhead:>+12.1%} {results[0]['errors']:>7}"
        )
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = dict(header=lines[0], runs=runs, median_seconds=seconds)
    (RESULTS / f"batch-jobs-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"batch-jobs-{stamp}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
