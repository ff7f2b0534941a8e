"""The export stage end to end: load → export → check → write, reported stage by stage."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from ortgen_export import graph, parity
from ortgen_export.architectures import architecture_of
from ortgen_export.folder import refuse_existing, staged_folder
from ortgen_export.source import load_checkpoint, load_config, locate

from ortgen.errors import InvalidOptionError
from ortgen.manifest import MANIFEST_NAME, PRECISIONS, Manifest

STAGES = ("load", "export", "check", "write")
StageCallback = Callable[[str], None]  # called with a stage name as it starts
_PACKAGES = ("ortgen", "torch", "transformers", "optimum-onnx", "onnx", "onnxruntime")


def export_model(
    source: str,
    output_dir: str | Path,
    precision: str = "fp32",
    force: bool = False,
    on_stage: StageCallback | None = None,
) -> Manifest:
    """Export `source` (hub id or checkpoint folder) to the model folder `output_dir`."""
    stage = on_stage or (lambda name: None)
    output = Path(output_dir).expanduser().absolute()
    if precision not in PRECISIONS:
        raise InvalidOptionError(f"precision {precision!r} is not available yet: use {PRECISIONS}")
    refuse_existing(output, force)  # before any slow work
    with graph.quiet():
        return _export(source, output, precision, force, stage)


def _export(source: str, output: Path, precision: str, force: bool, stage: StageCallback):
    stage("load")
    path = locate(source)
    config = load_config(path, source)
    arch = architecture_of(config, source)
    checkpoint = load_checkpoint(source, path, config)

    with staged_folder(output, force) as staging:
        stage("export")
        model = graph.trace(checkpoint.model)
        tied = graph.store_tied_weights_once(model)
        files = graph.save(model, staging)
        _copy_side_files(checkpoint, staging)

        manifest = Manifest(
            **arch.manifest_fields(config),
            precision=precision,
            opset=graph.OPSET,
            source=source,
            versions=_versions(),
            export={
                "files": files,
                "tied_weights_stored_once": tied,
                "node_counts": graph.node_counts(model),
            },
        )
        _write_manifest(manifest, staging)  # the runtime under test reads it

        stage("check")
        prompts = parity.parity_prompts(
            checkpoint.tokenizer, arch.local_window(config), config.max_position_embeddings
        )
        report = parity.check_parity(checkpoint.model, staging, prompts, precision)

        stage("write")
        manifest = dataclasses.replace(manifest, parity=parity.report_dict(report))
        _write_manifest(manifest, staging)
    return manifest


def _copy_side_files(checkpoint, folder: Path) -> None:
    """config.json, generation_config.json (when the source has one) and the tokenizer files."""
    checkpoint.config.save_pretrained(folder)
    source_generation = checkpoint.path / "generation_config.json"
    if source_generation.is_file():
        shutil.copyfile(source_generation, folder / "generation_config.json")
    checkpoint.tokenizer.save_pretrained(folder)
    if not (folder / "tokenizer.json").is_file():  # pragma: no cover - fast tokenizers write it
        raise InvalidOptionError("the tokenizer could not be saved as tokenizer.json")


def _write_manifest(manifest: Manifest, folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
