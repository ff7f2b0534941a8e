"""Serving benchmark: 1, 4, 16, 64 concurrent streaming clients (httpx, asyncio) against `ortgen
serve` on the 124M int8 folder (random weights), optionally against llama.cpp's `llama-server` on
the same GGUF: aggregate tokens/s, p50/p99 time to first token and inter-token latency; a table,
and JSON and Markdown beside it. Smoke run:
`python -m bench.serving --model DIR --clients 1 4 --new-tokens 8` (a small folder may need
`--prompt-tokens 16 64`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from tokenizers import Tokenizer

BENCH = Path(__file__).parent
DEFAULT_MODEL = BENCH / "work" / "gpt2-int8"  # bench.prepare builds it (bench/checkpoints.py)


@dataclass(frozen=True)
class Result:
    system: str  # "ortgen" | "llama-server"
    clients: int  # concurrent streaming clients
    tokens_per_s: float  # all clients' streamed tokens / wall time
    ttft_p50_ms: float  # request sent → first token
    ttft_p99_ms: float
    itl_p50_ms: float  # gap between a client's consecutive tokens
    itl_p99_ms: float


def prompt_text(rng: np.random.Generator, lengths: tuple[int, int], tokenizer) -> str:
    """A prompt of lengths[0]–lengths[1] tokens of `tokenizer` (words cut at a token boundary)."""
    words = ["the", "sea", "old", "man", "told", "us", "of", "a", "storm", "and", "ship"]
    wanted = int(rng.integers(lengths[0], lengths[1] + 1))
    ids = tokenizer.encode(" ".join(rng.choice(words, 2 * wanted))).ids[:wanted]
    return tokenizer.decode(ids)


async def one_client(client: httpx.AsyncClient, body: dict) -> tuple[float, list[float], int]:
    """(TTFT, inter-token gaps, tokens) of one streamed completion; one SSE chunk = one token."""
    start, stamps = time.perf_counter(), []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"{response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            data = line[6:] if line.startswith("data: ") else "[DONE]"
            if data != "[DONE]" and json.loads(data).get("choices"):
                stamps.append(time.perf_counter())
    return stamps[0] - start, list(np.diff(stamps)), len(stamps)


async def run_clients(url: str, clients: int, new_tokens: int, seed: int, args) -> tuple:
    rng = np.random.default_rng(seed)
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    bodies = [
        {"model": "m", "prompt": prompt_text(rng, args.prompt_tokens, tokenizer)}
        | {"max_tokens": new_tokens}
        | {"stream": True}
        | {"temperature": 0, "min_tokens": new_tokens}  # llama-server: "min_tokens" too
        for _ in range(clients)
    ]
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, b) for b in bodies))
        wall = time.perf_counter() - start
    return results, wall


def summarise(system: str, clients: int, results: list, wall: float) -> Result:
    ttft = np.array([r[0] for r in results]) * 1e3
    gaps = np.array([g for r in results for g in r[1]] or [0.0]) * 1e3
    tokens = sum(r[2] for r in results)
    p = np.percentile
    return Result(
        system, clients, tokens / wall, p(ttft, 50), p(ttft, 99), p(gaps, 50), p(gaps, 99)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    """Poll /health (bounded) until the server answers 200."""
    pause, deadline = threading.Event(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        pause.wait(0.2)
    raise SystemExit(f"{url} not healthy after {seconds} s")


def ortgen_command(args, port: int, clients: int) -> list[str]:
    ortgen = Path(sys.executable).parent / "ortgen"
    return [
        *(str(ortgen), "serve", "--model", str(args.model), "--port", str(port)),
        *("--threads", str(args.threads), "--max-batch", str(max(clients, 1))),
        *("--max-queue", str(max(clients, 1))),
        *("--prefill-chunk", str(args.prefill_chunk)),
        *([] if args.spin else ["--no-spin"]),
    ]


def llama_command(args, port: int, clients: int) -> list[str]:
    return [
        *(str(args.llama_server), "-m", str(args.gguf), "--port", str(port)),
        *("--parallel", str(clients), "-cb", "-t", str(args.threads)),
        *("-c", str(clients * 1024)),  # 1024 tokens of context per slot, as GPT-2 has
    ]


def measure(system: str, command, args) -> list[Result]:
    """One fresh server per concurrency level, so none inherits another's warm state."""
    results = []
    for clients in args.clients:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        quiet = subprocess.DEVNULL
        process = subprocess.Popen(command(args, port, clients), stdout=quiet, stderr=quiet)
        try:
            wait_healthy(url, process)
            asyncio.run(run_clients(url, 1, 4, 99, args))  # warm-up
            work = run_clients(url, clients, args.new_tokens, clients, args)
            runs, wall = asyncio.run(work)
            results.append(summarise(system, clients, runs, wall))
        finally:
            process.terminate()
            process.wait(timeout=60)
    return results


def table(results: list[Result], args) -> str:
    import onnxruntime

    head = (
        f"{platform.processor() or platform.machine()}, onnxruntime {onnxruntime.__version__}, "
        f"threads {args.threads}, prompts {args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, "
        f"{args.new_tokens} new tokens, ortgen --prefill-chunk {args.prefill_chunk}"
    )
    rows = [
        f"{'system':<13}{'clients':>8}{'tok/s':>9}{'TTFT p50':>10}{'p99':>8}"
        f"{'ITL p50':>9}{'p99':>8}"
    ]
    for r in results:
        rows.append(
            f"{r.system:<13}{r.clients:>8}{r.tokens_per_s:>9.1f}{r.ttft_p50_ms:>10.0f}"
            f"{r.ttft_p99_ms:>8.0f}{r.itl_p50_ms:>9.1f}{r.itl_p99_ms:>8.1f}"
        )
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(16, 128))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill-chunk", type=int, default=128, help="ortgen serve's")
    parser.add_argument(
        "--no-spin", dest="spin", action="store_false", help="ortgen serve --no-spin"
    )
    parser.add_argument("--llama-server", type=Path, help="llama-server binary to compare with")
    parser.add_argument(
        "--gguf", type=Path, help="GGUF (q8_0) of the same checkpoint (default: bench.prepare's)"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if args.llama_server is not None and args.gguf is None and args.model != DEFAULT_MODEL:
        raise SystemExit("give --gguf: the GGUF of the checkpoint behind --model")
    missing = args.model == DEFAULT_MODEL and not (DEFAULT_MODEL / "ortgen.json").is_file()
    if missing or (args.llama_server is not None and args.gguf is None):
        from bench.prepare import prepare  # the random gpt2 checkpoint, its folder and GGUF

        wanted = {"ortgen-int8"} | ({"llamacpp-q8_0"} if args.llama_server else set())
        built = prepare("gpt2", wanted)
        if args.model == DEFAULT_MODEL:
            args.model = built["ortgen-int8"]["path"]
        if args.llama_server is not None and args.gguf is None:
            args.gguf = built["llamacpp-q8_0"]["path"]
    if not (args.model / "ortgen.json").is_file():
        raise SystemExit(f"{args.model} is no ortgen folder: build it with bench.prepare first")
    if args.gguf is not None and args.llama_server is None:
        raise SystemExit("--gguf needs --llama-server (the llama-server binary)")
    results = measure("ortgen", ortgen_command, args)
    if args.llama_server is not None:
        results += measure("llama-server", llama_command, args)
    report = table(results, args)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"header": report.splitlines()[0], "results": [asdict(r) for r in results]}
    (args.out / f"serving-{stamp}.json").write_text(json.dumps(record, indent=2))
    (args.out / f"serving-{stamp}.md").write_text(f"```\n{report}\n```\n")


if __name__ == "__main__":
    main()
