"""The `ortgen` typer app and the one place where every failure becomes one line on stderr and a
non-zero exit code (`_OneLineErrors`); option aliases shared by the commands."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ortgen.cli.flags import flag_names
from ortgen.errors import (
    InvalidOptionError,
    ModelFolderError,
    OrtgenError,
    OrtgenWarning,
    first_line,
)

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


ModelArgument = Annotated[
    Path | None,
    typer.Argument(help="Model folder written by `ortgen export` (default: bundled)."),
]


def model_folder(argument: Path | None, option: Path | None) -> Path | None:
    """The model given as MODEL_DIR or --model (once)."""
    if argument is not None and option is not None and argument != option:
        raise typer.BadParameter(f"give the model once: MODEL_DIR {argument} or --model {option}")
    return argument if argument is not None else option


def main() -> None:
    """Console-script entry point."""
    typer.main.get_command(app)(prog_name="ortgen")
