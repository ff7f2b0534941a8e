"""Serving benchmark: 1, 4, 16, 64 concurrent streaming clients (httpx, asyncio) against `ortgen
serve` on the 124M int8 folder (random weights), optionally against llama.cpp's `llama-server` on
the same GGUF: aggregate tokens/s, p50/p99 time to first token and inter-token latency, medians of
interleaved rounds, and issue 10's goals as within-round ratios; a table, and JSON and Markdown
beside it. Every level sends at least --requests requests (a client sends its share one after
another), so a single client's p99 rests on as many gaps as 16 clients' do, not on one stream's
second-longest. Smoke run:
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

from bench.report import goal_lines, holds

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


async def run_clients(
    url: str, clients: int, new_tokens: int, seed: int, args, requests: int = 1
) -> tuple:
    """`clients` concurrent clients, each sending its share of at least `requests` requests one
    after another. → (each request's one_client result, wall seconds)"""
    rng = np.random.default_rng(seed)
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    each = -(-max(requests, clients) // clients)  # requests per client
    bodies = [
        {"model": "m", "prompt": prompt_text(rng, args.prompt_tokens, tokenizer)}
        | {"max_tokens": new_tokens}
        | {"stream": True}
        | {"temperature": 0, "min_tokens": new_tokens}  # llama-server: "min_tokens" too
        for _ in range(clients * each)
    ]

    async def sequential(client: httpx.AsyncClient, mine: list[dict]) -> list:
        return [await one_client(client, body) for body in mine]

    # a fresh connection per request: llama-server drops a kept-alive one after a couple of
    # streamed responses ("Server disconnected without sending a response")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        shares = [bodies[c * each : (c + 1) * each] for c in range(clients)]
        done = await asyncio.gather(*(sequential(client, mine) for mine in shares))
        wall = time.perf_counter() - start
    return [result for share in done for result in share], wall


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
        *(["--spin"] if args.spin else []),
        *("--device", args.device),
    ]


def llama_command(args, port: int, clients: int) -> list[str]:
    return [
        *(str(args.llama_server), "-m", str(args.gguf), "--port", str(port)),
        *("--parallel", str(clients), "-cb", "-t", str(args.threads)),
        *("-c", str(clients * 1024)),  # 1024 tokens of context per slot, as GPT-2 has
    ]


def measure_one(system: str, command, args, clients: int) -> Result:
    """One fresh server for one measurement, so none inherits another's warm state."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    quiet = subprocess.DEVNULL
    process = subprocess.Popen(command(args, port, clients), stdout=quiet, stderr=quiet)
    try:
        wait_healthy(url, process)
        asyncio.run(run_clients(url, 1, 4, 99, args))  # warm-up
        work = run_clients(url, clients, args.new_tokens, clients, args, args.requests)
        runs, wall = asyncio.run(work)
        return summarise(system, clients, runs, wall)
    finally:
        process.terminate()
        process.wait(timeout=60)


def measure(commands: dict, args) -> list[list[Result]]:
    """`args.rounds` rounds; in each, every concurrency level with the systems one after the other,
    the order turning each round (the machine's speed drifts: ratios are taken within a round).
    → each round's Results."""
    rounds = []
    for r in range(args.rounds):
        names = list(commands)
        order = names[r % len(names) :] + names[: r % len(names)]
        results = [
            measure_one(name, commands[name], args, clients)
            for clients in args.clients
            for name in order
        ]
        rounds.append(results)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    return rounds


def pick(results: list[Result], system: str, clients: int) -> Result | None:
    return next((r for r in results if (r.system, r.clients) == (system, clients)), None)


def medians(rounds: list[list[Result]]) -> list[Result]:
    """Each (system, clients)'s median of every figure over the rounds."""
    out = []
    for first in rounds[0]:
        same = [pick(results, first.system, first.clients) for results in rounds]
        figures = [np.median([getattr(r, f) for r in same]) for f in FIGURES]
        out.append(Result(first.system, first.clients, *map(float, figures)))
    return sorted(out, key=lambda r: (r.system != "ortgen", r.clients))


FIGURES = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")


def goals(rounds: list[list[Result]], args) -> list[tuple[str, float, float, bool]]:
    """Issue 10's goals as (goal, median over rounds of the round's ratio, bound, at least?)."""

    def ratio(a: tuple, b: tuple, figure: str) -> float | None:
        values = []
        for results in rounds:
            x, y = pick(results, *a), pick(results, *b)
            if x is None or y is None:
                return None
            values.append(getattr(x, figure) / getattr(y, figure))
        return float(np.median(values))

    wanted = [
        (
            "ortgen 16 clients ≥ 4× 1 client, tok/s",
            ("ortgen", 16),
            ("ortgen", 1),
            "tokens_per_s",
            4.0,
            True,
        ),
        (
            "ortgen ITL p99 at 16 clients ≤ 3× 1 client's",
            ("ortgen", 16),
            ("ortgen", 1),
            "itl_p99_ms",
            3.0,
            False,
        ),
    ]
    for c in args.clients:
        wanted.append(
            (
                f"ortgen ≥ 1.5× llama-server at {c} client{'s' * (c > 1)}, tok/s",
                ("ortgen", c),
                ("llama-server", c),
                "tokens_per_s",
                1.5,
                True,
            )
        )
        wanted.append(
            (
                f"ortgen TTFT p99 ≤ llama-server's at {c} client{'s' * (c > 1)}",
                ("ortgen", c),
                ("llama-server", c),
                "ttft_p99_ms",
                1.0,
                False,
            )
        )
    out = []
    for name, a, b, figure, bound, at_least in wanted:
        value = ratio(a, b, figure)
        if value is not None:
            out.append((name, value, bound, at_least))
    return out


def table(results: list[Result], rounds: int, args) -> str:
    import onnxruntime

    head = (
        f"{platform.processor() or platform.machine()}, onnxruntime {onnxruntime.__version__}, "
        f"device {args.device}, threads {args.threads}, "
        f"prompts {args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, "
        f"{args.new_tokens} new tokens, at least {args.requests} requests a level (clients send "
        f"theirs one after another), ortgen --prefill-chunk {args.prefill_chunk}, "
        f"medians of {rounds} interleaved rounds"
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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    parser.add_argument(
        "--requests",
        type=int,
        default=16,
        help="requests per level at least: fewer clients send theirs one after another, so "
        "every level's percentiles rest on as many gaps",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill-chunk", type=int, default=128, help="ortgen serve's")
    parser.add_argument("--spin", action="store_true", help="ortgen serve --spin")
    parser.add_argument("--device", default="cpu", help="ortgen serve --device (cpu or cuda)")
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
    if args.rounds < 1 or args.requests < 1:
        raise SystemExit("--rounds and --requests must be at least 1")
    if not (args.model / "ortgen.json").is_file():
        raise SystemExit(f"{args.model} is no ortgen folder: build it with bench.prepare first")
    if args.gguf is not None and args.llama_server is None:
        raise SystemExit("--gguf needs --llama-server (the llama-server binary)")
    commands = {"ortgen": ortgen_command}
    if args.llama_server is not None:
        commands["llama-server"] = llama_command
    rounds = measure(commands, args)
    results, checked = medians(rounds), goals(rounds, args)
    report = table(results, len(rounds), args)
    print(report)
    goal_table = "\n".join(goal_lines(checked))
    print(goal_table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {
        "header": report.splitlines()[0],
        "results": [asdict(r) for r in results],
        "goals": [
            {"goal": n, "measured": v, "holds": holds(v, bound, up)} for n, v, bound, up in checked
        ],
        "rounds": [[asdict(r) for r in results] for results in rounds],
    }
    (args.out / f"serving-{stamp}.json").write_text(json.dumps(record, indent=2))
    (args.out / f"serving-{stamp}.md").write_text(f"```\n{report}\n```\n\n{goal_table}\n")


if __name__ == "__main__":
    main()
