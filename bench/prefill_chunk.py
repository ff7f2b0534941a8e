"""What chunked prefill buys: 4 streams decode, then a long prompt arrives. For each
`prefill_chunk`, the newcomer's time to first token and the running streams' gaps between tokens
(medians of rounds), through the Engine API. `python -m bench.prefill_chunk --chunks 100000 64 128`
(100000: whole prompts, as without chunking)."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from ortgen import Generator
from ortgen.engine import Engine, EngineLimits

DEFAULT_MODEL = Path(__file__).parent / "work" / "gpt2-int8"  # bench.prepare builds it


def one_round(generator: Generator, chunk: int, newcomer: list[int], streams: int) -> tuple:
    engine = Engine(generator, EngineLimits(max_batch=streams + 1, prefill_chunk=chunk))
    try:
        engine.generate("warm up", max_new_tokens=2)
        options = dict(max_new_tokens=160, min_new_tokens=160, do_sample=False)
        running = [engine.submit(list(range(200 + i, 240 + i)), **options) for i in range(streams)]
        stamps: list[list[float]] = [[] for _ in running]
        settled = threading.Event()  # the streams are well into their decoding

        def read(i: int) -> None:
            for _ in running[i]:
                stamps[i].append(time.perf_counter())
                if len(stamps[i]) == 30:
                    settled.set()

        readers = [threading.Thread(target=read, args=(i,)) for i in range(streams)]
        for reader in readers:
            reader.start()
        settled.wait()
        start = time.perf_counter()
        next(iter(engine.submit(newcomer, max_new_tokens=4, do_sample=False)))
        ttft = time.perf_counter() - start
        for reader in readers:
            reader.join()
    finally:
        engine.close()
    gaps = np.concatenate([np.diff(s) for s in stamps]) * 1e3
    return ttft * 1e3, gaps.max(), np.percentile(gaps, 99), np.percentile(gaps, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--chunks", type=int, nargs="+", default=[100000, 32, 64, 128, 256])
    parser.add_argument("--prompt-tokens", type=int, default=800, help="the newcomer's")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.model / "ortgen.json").is_file():
        raise SystemExit(f"{args.model} is no ortgen folder: build it with bench.prepare first")
    generator = Generator.from_dir(args.model, threads=args.threads)
    rng = np.random.default_rng(0)
    newcomer = rng.integers(100, 5000, args.prompt_tokens).tolist()
    print("chunk   newcomer TTFT ms   streams' gap max / p99 / p50 ms")
    for chunk in args.chunks:
        rounds = [one_round(generator, chunk, newcomer, args.streams) for _ in range(args.rounds)]
        ttft, worst, p99, p50 = np.median(np.array(rounds), axis=0)
        print(f"{chunk:>6}{ttft:>18.0f}{worst:>16.0f} / {p99:.0f} / {p50:.1f}")


if __name__ == "__main__":
    main()
