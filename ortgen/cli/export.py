"""`ortgen export`: the build stage (torch, transformers, onnx), imported only when it runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ortgen.cli.app import app
from ortgen.errors import ExportError


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
        typer.Option(help="Weights per scale, power of two ≥ 16 (int4: 32; int8: 64)."),
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
    print(
        f"exported {manifest.architecture} ({manifest.precision}) to {output_dir}: "
        + parity_summary(manifest.parity),
        file=sys.stderr,
    )


def parity_summary(report: dict) -> str:
    """The export's check in one line; the float64 figures when the fp32 bound needed them."""
    rounding = ""
    limit = report["thresholds"]["max_abs_diff"]
    if (
        report.get("rounding_ratio") is not None
        and limit is not None
        and report["max_abs_diff"] > limit
    ):
        rounding = (
            f" (rounding: transformers fp32 itself is {report['reference_error']:.1e} from "
            f"float64, ONNX {report['exact_max_abs_diff']:.1e})"
        )
    return (
        f"max |Δ logits| {report['max_abs_diff']:.1e}{rounding}, top-1 agreement "
        f"{report['top1_agreement']:.1%}, greedy agreement {report['greedy_agreement']:.1%} "
        f"against transformers on {len(report['prompts'])} prompts"
    )
