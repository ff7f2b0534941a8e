"""The commands beside generate: eval, bench, serve, embed and batch — each parses, makes one
library call and prints."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ortgen import prompts as prompt_input
from ortgen.cli.app import Device, ModelArgument, ModelDir, Threads, app, model_folder
from ortgen.errors import InputError, InvalidOptionError, OrtgenError


@app.command(name="eval")
def evaluate(
    text: Annotated[Path, typer.Option(help="UTF-8 text file to measure perplexity on.")],
    model_dir: ModelArgument = None,
    model: ModelDir = None,
    window: Annotated[
        int | None, typer.Option(help="Tokens per forward pass (default: the model's context).")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Tokens a window advances by (default: half a window).")
    ] = None,
    device: Device = "cpu",
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Perplexity of a text file under the model, and tokens/s, to compare precisions."""

    from ortgen.evaluation import evaluate as run_evaluation
    from ortgen.generator import Generator

    try:
        content = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read --text {text}: {err}") from None
    folder = model_folder(model_dir, model)
    generator = Generator.from_dir(folder, device=device, threads=threads)
    result = run_evaluation(generator, generator.encode(content), window, stride)
    if as_json:
        record = {"precision": generator.manifest.precision, **dataclasses.asdict(result)}
        print(json.dumps(record))
        return
    print(
        f"perplexity {result.perplexity:.4f} over {result.tokens} tokens "
        f"({generator.manifest.precision}, {result.windows} windows, "
        f"{result.tokens_per_s:.0f} tokens/s)"
    )


@app.command()
def bench(
    model_dir: ModelArgument = None,
    model: ModelDir = None,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length.")] = 128,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per run.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Rows generated together.")] = 1,
    rounds: Annotated[int, typer.Option(help="Measured runs (after one warm-up).")] = 3,
    device: Device = "cpu",
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Prefill and decode speed of a model folder, with per-token latency percentiles."""

    from ortgen.benchmark import measure
    from ortgen.generator import Generator

    generator = Generator.from_dir(model_folder(model_dir, model), device=device, threads=threads)
    speed = measure(generator, prompt_tokens, new_tokens, batch_size, rounds)
    if as_json:
        print(json.dumps({"precision": generator.manifest.precision, **dataclasses.asdict(speed)}))
        return
    latency = ", ".join(f"{k} {v:.1f} ms" for k, v in speed.token_latency_ms.items())
    print(
        f"{generator.manifest.architecture} {generator.manifest.precision}, batch {batch_size}: "
        f"prefill {speed.prefill_tokens_per_s:.0f} tokens/s "
        f"(first token {speed.time_to_first_token_ms:.0f} ms), "
        f"decode {speed.decode_tokens_per_s:.1f} tokens/s (step {latency})"
    )


@app.command()
def serve(
    model: ModelDir = None,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: every interface).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Rows decoded together at most.")] = 16,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting at most; beyond it HTTP 429.")
    ] = 64,
    threads: Threads = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a request may take, queue included.")
    ] = None,
    prefill_chunk: Annotated[
        int,
        typer.Option(
            help="Prompt tokens cached between two decode steps while others decode: lower "
            "keeps their token rate steadier, higher gives new requests their first token sooner."
        ),
    ] = 128,
    spin: Annotated[
        bool | None,
        typer.Option(
            "--spin/--no-spin",
            help="--spin: idle ONNX Runtime threads busy-wait for the next step (they take the "
            "cores from the server's own HTTP and streaming threads: the running streams' p99 "
            "gap grows several-fold). --no-spin: they sleep at once (kindest to other processes "
            "on the cores). Neither: they busy-wait through a step's gaps between kernels "
            "(100 µs at most), then sleep.",
        ),
    ] = None,
    device: Device = "cpu",
) -> None:
    """Serve the model over HTTP: OpenAI-style /v1/completions, /generate, /health, /metrics."""
    try:
        from ortgen.server import serve as run_server
    except ImportError as err:
        raise OrtgenError(
            f"serving needs its extra ({err.name or err} is missing): pip install 'ortgen[serve]'"
        ) from None
    from ortgen.engine import EngineLimits

    limits = EngineLimits(max_batch, max_queue, timeout, prefill_chunk)
    from ortgen.session import SHORT_SPIN_US

    run_server(model, host, port, limits, threads, SHORT_SPIN_US if spin is None else spin, device)


@app.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed (one feature set each).")],
    model: ModelDir = None,
    pooling: Annotated[
        str, typer.Option(help="none (per token), mean (over the tokens) or last (last token).")
    ] = "none",
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise vectors.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write FILE.npy or FILE.json.")
    ] = None,
    device: Device = "cpu",
    threads: Threads = None,
) -> None:
    """Final hidden states of TEXTS (transformers' feature-extraction), JSON on stdout."""
    import numpy as np

    from ortgen.generator import Generator

    if output is not None and output.suffix not in (".npy", ".json"):
        raise typer.BadParameter(f"--output must end in .npy or .json, got {output}")
    text = [prompt_input.from_argument(t) for t in texts]
    generator = Generator.from_dir(model, device=device, threads=threads)
    features = generator.embed(text, pooling=pooling, normalize=normalize)
    if output is not None and output.suffix == ".npy":
        if pooling == "none" and len(features) > 1:
            raise InvalidOptionError(
                "per-token features of several texts differ in length: give one text, a "
                "--pooling (mean, last), or a .json output"
            )
        np.save(output, features[0] if pooling == "none" else features)
        return
    encoded = json.dumps([f.tolist() for f in features])
    if output is None:
        print(encoded)
    else:
        output.write_text(encoded + "\n", encoding="utf-8")


@app.command()
def batch(
    prompts: Annotated[
        Path, typer.Argument(help="JSONL or plain-lines file of prompts, or a folder of them.")
    ],
    output: Annotated[Path, typer.Argument(help="Folder of JSONL shards (rerun to resume).")],
    model: ModelDir = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="A generate option for all records: NAME=JSON."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed: a record without one gets its own.")] = 0,
    ray: Annotated[
        str | None, typer.Option(help="Run on Ray: local, auto or a cluster address.")
    ] = None,
    actors: Annotated[int, typer.Option(help="Processes (Ray: actors), a model each.")] = 1,
    threads_per_actor: Annotated[int, typer.Option(help="ONNX Runtime threads each.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Records per call and per shard.")] = 16,
    ship_model: Annotated[
        bool, typer.Option("--ship-model", help="Ray: send the model via the object store.")
    ] = False,
) -> None:
    """Generate for every record of PROMPTS into OUTPUT's JSONL shards, here or on Ray."""
    from ortgen.batch import BatchJob, parse_options, run_job

    options = parse_options(option or [])
    job = BatchJob(prompts, output, model, options, seed, actors, threads_per_actor, batch_size)
    job = dataclasses.replace(job, ray=ray, ship_model=ship_model)
    tty, shown = sys.stderr.isatty(), [0.0]

    def show(progress) -> None:
        if progress.done == progress.total or time.monotonic() - shown[0] >= 1.0:
            shown[0] = time.monotonic()
            print(progress.line(), end="\r" if tty else "\n", file=sys.stderr, flush=True)

    summary = run_job(job, show)
    end = "\n" if tty else ""  # after the progress line's \r
    print(
        f"{end}{summary.written} records written to {output} "
        f"({summary.errors} with errors, {summary.skipped} already there) "
        f"in {summary.seconds:.1f} s",
        file=sys.stderr,
    )
