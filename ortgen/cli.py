"""The `ortgen` command line: thin commands (parse → one library call → print). User errors of
every kind become one line on stderr and a non-zero exit code, in one place (`_OneLineErrors`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ortgen import prompts as prompt_input
from ortgen.errors import (
    ExportError,
    InputError,
    InvalidOptionError,
    ModelFolderError,
    OrtgenError,
    OrtgenWarning,
    first_line,
)
from ortgen.options import GenerationOptions

EXIT_ERROR = 1  # the request could not be carried out
EXIT_USAGE = 2  # the command line itself is wrong


class _OneLineErrors(TyperGroup):
    """Runs commands with standalone mode off, so every failure passes through here."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", OrtgenWarning)
                warnings.showwarning = _show_warning_once({})
                code = super().main(*args, **kwargs)
        except typer.TyperException as err:  # typer's (vendored click) usage errors
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
                print(ctx.get_help())
                sys.exit(EXIT_USAGE)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            _fail(f"{_message(err)}{hint}", getattr(err, "exit_code", EXIT_USAGE))
        except InvalidOptionError as err:  # an option value out of range: the command line
            _fail(flag_names(str(err)), EXIT_USAGE)
        except ModelFolderError as err:  # names a file's keys, which are not flags
            _fail(str(err), EXIT_ERROR)
        except OrtgenError as err:
            _fail(flag_names(str(err)), EXIT_ERROR)
        except (typer.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.exit(EXIT_ERROR)
        except Exception as err:  # a bug: still one line, the traceback on request
            if os.environ.get("ORTGEN_DEBUG"):
                raise
            _fail(
                f"internal error ({type(err).__name__}: {first_line(err)}); rerun with "
                "ORTGEN_DEBUG=1 for the traceback and report it",
                EXIT_ERROR,
            )
        if code == 130:  # typer turns KeyboardInterrupt (Ctrl-C, SIGTERM in export) into 130
            _fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


def _message(err: Exception) -> str:
    format_message = getattr(err, "format_message", None)
    return (format_message() if format_message else str(err)).rstrip(".")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _show_warning_once(shown: dict):
    """A `warnings.showwarning` printing each distinct ortgen warning once, as one line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = flag_names(str(message))
        if text not in shown:
            shown[text] = True
            print(f"warning: {text}", file=sys.stderr)

    return show


# Library messages name options as Python does; the CLI speaks in flags.
_SPELLINGS = {
    "do_sample=True": "--do-sample",
    "do_sample=False": "--greedy",
    "truncate_prompt='left'": "--truncate-prompt left",
    'truncate_prompt="left"': "--truncate-prompt left",
}
_OPTION_NAMES = (
    "max_new_tokens|min_new_tokens|do_sample|temperature|top_k|top_p|repetition_penalty|"
    "no_repeat_ngram_size|num_return_sequences|seed|eos_token_id|ignore_eos|truncate_prompt|"
    "threads|block_size|accuracy_level|min_agreement|allow_partial|prompt_tokens|new_tokens|"
    "batch_size|pooling"
)
_OPTION = re.compile(rf"(?<![\w./-])({_OPTION_NAMES})(?:=(\S+?))?(?=[\s,;:)]|$)")


def flag_names(message: str) -> str:
    """`top_p must…` → `--top-p must…`, `max_new_tokens=10` → `--max-new-tokens 10`."""
    for python, flag in _SPELLINGS.items():
        message = message.replace(python, flag)

    def flag(match: re.Match) -> str:
        name = "--" + match.group(1).replace("_", "-")
        return f"{name} {match.group(2).strip(chr(39))}" if match.group(2) else name

    return _OPTION.sub(flag, message)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("ortgen")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        print(f"ortgen {version}")
        raise typer.Exit()


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: on/off flags shown as flags, not `--force <bool>`
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Export GPT-2 / GPT-Neo checkpoints to proven ONNX models and generate text with them.",
)


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Export GPT-2 / GPT-Neo checkpoints to proven ONNX models and generate text with them."""


ModelDir = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="Model folder written by `ortgen export` (default: bundled)."
    ),
]
Device = Annotated[str, typer.Option(help="Execution provider: cpu or cuda.")]
Threads = Annotated[int | None, typer.Option(help="Intra-op threads (default: ONNX Runtime's).")]


@app.command()
def export(
    source: Annotated[
        str,
        typer.Argument(help="Hub id (gpt2, EleutherAI/gpt-neo-125M…) or local checkpoint folder."),
    ],
    output_dir: Annotated[Path, typer.Argument(help="Model folder to create.")],
    precision: Annotated[
        str, typer.Option(help="fp32, fp16 (CUDA), int8 or int4 (int8 compute on CPU).")
    ] = "fp32",
    block_size: Annotated[
        int | None,
        typer.Option(help="Weights per scale, power of two ≥ 16 (int4: 32; int8 tied head: 128)."),
    ] = None,
    accuracy_level: Annotated[
        int, typer.Option(help="int8/int4: MatMulNBits compute, 4 = int8 activations, 0 = fp32.")
    ] = 4,
    optimize: Annotated[
        bool, typer.Option("--optimize/--no-optimize", help="Fuse operators (default on).")
    ] = True,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Accept a partly quantized model.")
    ] = False,
    min_agreement: Annotated[
        float | None,
        typer.Option(help="int8/int4: top-1 agreement required (default 0.90 / 0.80)."),
    ] = None,
    graph: Annotated[
        str, typer.Option(help="built (contrib ops, fast) or traced (optimum's exporter).")
    ] = "built",
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUTPUT_DIR if it exists.")
    ] = False,
) -> None:
    """Export a checkpoint to a model folder, proven equal to transformers."""
    try:
        from ortgen_export import ExportOptions, export_model
    except ImportError as err:
        raise ExportError(
            f"the export stage needs its extra ({err.name or err} is missing): "
            "pip install 'ortgen[export]'"
        ) from None
    from ortgen.progress import StageProgress

    options = ExportOptions(
        precision, block_size, accuracy_level, optimize, allow_partial, min_agreement, graph
    )
    with StageProgress() as progress:
        manifest = export_model(source, output_dir, options, force, on_stage=progress.start)
    report = manifest.parity
    print(
        f"exported {manifest.architecture} ({manifest.precision}) to {output_dir}: "
        f"max |Δ logits| {report['max_abs_diff']:.1e}, top-1 agreement "
        f"{report['top1_agreement']:.1%}, greedy agreement {report['greedy_agreement']:.1%} "
        f"against transformers on {len(report['prompts'])} prompts",
        file=sys.stderr,
    )


@app.command()
def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="Prompt text, or - to read it from stdin.")
    ] = None,
    model: ModelDir = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
    min_new_tokens: Annotated[
        int | None, typer.Option(help="Forbid EOS before this many tokens.")
    ] = None,
    do_sample: Annotated[
        bool | None, typer.Option("--do-sample/--greedy", help="Sample, or take the argmax.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Logits divisor when sampling.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Keep the k best ids when sampling (0: off).")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus mass when sampling, in (0, 1].")
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="> 1 discourages repeating ids (1.0: off).")
    ] = None,
    no_repeat_ngram_size: Annotated[
        int | None, typer.Option(help="Never repeat an n-gram of this size (0: off).")
    ] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop string (repeatable); output ends before it.")
    ] = None,
    num_return_sequences: Annotated[
        int | None, typer.Option(help="Samples per prompt (with --do-sample).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="RNG seed for reproducible sampling.")] = None,
    eos_token_id: Annotated[
        int | None, typer.Option(help="Stop at this id instead of the model's EOS.")
    ] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never stop at EOS.")] = False,
    truncate_prompt: Annotated[
        str | None, typer.Option(help="'left': drop the oldest prompt tokens to fit the context.")
    ] = None,
    num_beams: Annotated[
        int | None, typer.Option(help="Beam search over N beams (1: off).")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="Beam search: score ÷ length ** this.")
    ] = None,
    early_stopping: Annotated[
        str | None, typer.Option(help="Beam search: true, false or never.")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Prompt + new tokens at most (--max-new-tokens wins).")
    ] = None,
    min_length: Annotated[
        int | None, typer.Option(help="Forbid EOS until prompt + new tokens reach this.")
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(help="One prompt per line, or JSONL with a 'prompt' field; writes JSONL."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch with --prompts-file.")] = 8,
    device: Device = "cpu",
    threads: Threads = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"generated_text": …}] instead of streaming.')
    ] = False,
) -> None:
    """Continue PROMPT with the model, streaming the text to stdout as it is produced."""
    from ortgen.generator import Generator

    if (prompt is None) == (prompts_file is None):
        raise typer.BadParameter("give either PROMPT or --prompts-file FILE (one of them)")
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be ≥ 1, got {batch_size}")
    given = locals()
    options = {name: given[name] for name in GENERATION_OPTIONS}  # the dataclass's fields
    options |= dict(stop=tuple(stop) if stop else None, ignore_eos=ignore_eos or None)
    options["early_stopping"] = _early_stopping(early_stopping)
    text = None  # every prompt is read and checked before the model loads
    if prompt is not None:
        text = prompt_input.from_stdin() if prompt == "-" else prompt_input.from_argument(prompt)
    numbered = prompt_input.read_numbered_prompts(prompts_file) if prompts_file else []
    generator = Generator.from_dir(model, device=device, threads=threads)
    resolved = resolve_options(generator, options)  # validate before any output
    if prompts_file is not None:
        prompt_input.check_prompts(
            numbered, prompts_file, lambda p: generator.fit_context(generator.encode(p), resolved)
        )
        prompts = [p for _, p in numbered]
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            print_jsonl(batch, generator.generate(batch, **options))
        return
    if as_json:
        result = generator.generate(text, **options)
        outputs = result if isinstance(result, list) else [result]
        print(json.dumps([{"generated_text": text + c} for c in outputs], ensure_ascii=False))
        return
    if resolved.num_return_sequences > 1:
        raise typer.BadParameter("--num-return-sequences > 1 needs --json or --prompts-file")
    for piece in generator.stream(text, **options):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


# Every GenerationOptions field is a `generate` option of the same name, except these (the
# Python API's only): tests/test_cli.py checks the signature against the dataclass.
API_ONLY = ("pad_token_id",)
GENERATION_OPTIONS = tuple(
    f.name for f in dataclasses.fields(GenerationOptions) if f.name not in API_ONLY
)


def _early_stopping(value: str | None) -> bool | str | None:
    """--early-stopping true|false|never → transformers' True / False / "never"."""
    choices = {"true": True, "false": False, "never": "never", None: None}
    if value not in choices:
        raise typer.BadParameter(f"--early-stopping must be true, false or never, got {value!r}")
    return choices[value]


def resolve_options(generator, options: dict):
    """The generator's options with `options` applied, checked against its vocabulary; sampling
    controls given under greedy decoding are reported (once, on stderr), not silently dropped."""
    resolved = generator.options(**options)
    resolved.check_vocabulary(generator.manifest.vocab_size)
    ignored = resolved.ignored_options(options)
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} ignored: decoding is greedy (add do_sample=True to sample)",
            OrtgenWarning,
            stacklevel=2,
        )
    return resolved


ModelArgument = Annotated[
    Path | None,
    typer.Argument(help="Model folder written by `ortgen export` (default: bundled)."),
]


def _model_folder(argument: Path | None, option: Path | None) -> Path | None:
    if argument is not None and option is not None and argument != option:
        raise typer.BadParameter(f"give the model once: MODEL_DIR {argument} or --model {option}")
    return argument if argument is not None else option


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
    folder = _model_folder(model_dir, model)
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

    generator = Generator.from_dir(_model_folder(model_dir, model), device=device, threads=threads)
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
) -> None:
    """Serve the model over HTTP: OpenAI-style /v1/completions, /generate, /health, /metrics."""
    try:
        from ortgen.server import serve as run_server
    except ImportError as err:
        raise OrtgenError(
            f"serving needs its extra ({err.name or err} is missing): pip install 'ortgen[serve]'"
        ) from None
    from ortgen.engine import EngineLimits

    run_server(model, host, port, EngineLimits(max_batch, max_queue, timeout), threads)


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


def print_jsonl(prompts: list[str], results: list) -> None:
    """One line per returned sequence: prompt, sequence index, prompt + continuation."""
    for text, result in zip(prompts, results, strict=True):
        for index, continuation in enumerate(result if isinstance(result, list) else [result]):
            record = {"prompt": text, "sequence": index, "generated_text": text + continuation}
            print(json.dumps(record, ensure_ascii=False), flush=True)


def main() -> None:
    """Console-script entry point."""
    typer.main.get_command(app)(prog_name="ortgen")
