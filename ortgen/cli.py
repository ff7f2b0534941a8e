"""The `ortgen` command line: thin commands (parse → one library call → print). User errors of
every kind become one line on stderr and a non-zero exit code, in one place (`_OneLineErrors`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ortgen.errors import ExportError, OrtgenError

EXIT_ERROR = 1  # the request could not be carried out
EXIT_USAGE = 2  # the command line itself is wrong


class _OneLineErrors(TyperGroup):
    """Runs commands with standalone mode off, so every failure passes through here."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except typer.TyperException as err:  # typer's (vendored click) usage errors
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
                print(ctx.get_help())
                sys.exit(EXIT_USAGE)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            _fail(f"{_message(err)}{hint}", getattr(err, "exit_code", EXIT_USAGE))
        except OrtgenError as err:
            _fail(str(err), EXIT_ERROR)
        except (typer.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else 0)


def _message(err: Exception) -> str:
    format_message = getattr(err, "format_message", None)
    return (format_message() if format_message else str(err)).rstrip(".")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Export GPT-2 / GPT-Neo checkpoints to proven ONNX models and generate text with them.",
)

ModelDir = Annotated[
    Path, typer.Option("--model", "-m", help="Model folder written by `ortgen export`.")
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
    precision: Annotated[str, typer.Option(help="Weight precision: fp32.")] = "fp32",
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUTPUT_DIR if it exists.")
    ] = False,
) -> None:
    """Export a checkpoint to a model folder, proven equal to transformers."""
    try:
        from ortgen_export import export_model
    except ImportError as err:
        raise ExportError(
            f"the export stage needs its extra ({err.name or err} is missing): "
            "pip install 'ortgen[export]'"
        ) from None
    from ortgen.progress import StageProgress

    with StageProgress() as progress:
        manifest = export_model(source, output_dir, precision, force, on_stage=progress.start)
    report = manifest.parity
    print(
        f"exported {manifest.architecture} ({manifest.precision}) to {output_dir}: "
        f"parity max |Δ logits| {report['max_abs_diff']:.1e} ≤ {report['atol']:.0e}, "
        f"greedy identical on {len(report['prompts'])} prompts",
        file=sys.stderr,
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text, or - to read it from stdin.")],
    model: ModelDir,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
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
    seed: Annotated[int | None, typer.Option(help="RNG seed for reproducible sampling.")] = None,
    device: Device = "cpu",
    threads: Threads = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"generated_text": …}] instead of streaming.')
    ] = False,
) -> None:
    """Continue PROMPT with the model, streaming the text to stdout as it is produced."""
    from ortgen.generator import Generator

    text = sys.stdin.read() if prompt == "-" else prompt
    generator = Generator.from_dir(model, device=device, threads=threads)
    options = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    generator.options(**options)  # validate before any output
    if as_json:
        continuation = generator.generate(text, **options)
        print(json.dumps([{"generated_text": text + continuation}], ensure_ascii=False))
        return
    for piece in generator.stream(text, **options):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def main() -> None:
    """Console-script entry point."""
    typer.main.get_command(app)(prog_name="ortgen")
