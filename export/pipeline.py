"""The export stage end to end: load → export → optimize → check → write, reported by stage."""

from __future__ import annotations

import dataclasses
import gc
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ortgen.errors import InvalidOptionError
from ortgen.manifest import MANIFEST_NAME, PRECISIONS, Manifest, TensorNames
from ortgen_export import builder, features, fusion, graph, half, inplace, parity, quantize
from ortgen_export.architectures import architecture_of
from ortgen_export.folder import (
    export_lock,
    interrupt_on_signals,
    refuse_existing,
    staged_folder,
)
from ortgen_export.graph import EXTERNAL_DATA_THRESHOLD
from ortgen_export.source import Checkpoint, load_checkpoint, load_config, locate

STAGES = ("load", "export", "optimize", "check", "write")
StageCallback = Callable[[str], None]  # called with a stage name as it starts
_PACKAGES = ("ortgen", "torch", "transformers", "optimum-onnx", "onnx", "onnxruntime")
_BITS = {"int8": 8, "int4": 4}
GRAPHS = ("built", "traced")


@dataclass(frozen=True)
class ExportOptions:
    """What `ortgen export` builds."""

    precision: str = "fp32"  # fp32, fp16 (for CUDA), int8 or int4 (int8 compute on CPU)
    block_size: int | None = None  # weights per scale along K: default 32 (int4), 64 (int8)
    accuracy_level: int = 4  # int8 / int4: MatMulNBits compute type (4: int8 activations)
    optimize: bool = True  # run operator fusion (SkipLayerNormalization, FastGelu, …)
    allow_partial: bool = False  # accept a quantized model with some linear layers left float
    min_agreement: float | None = None  # int8 / int4: replaces the top-1 / greedy thresholds
    graph: str = "built"  # "built": written with contrib ops (fast); "traced": optimum's tracer
    # Weights above this many bytes are written to model.onnx.data (lowered by tests only)
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidOptionError(
                f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if self.precision in _BITS:
            self.quant_config()  # validates block size and accuracy level
        self.thresholds()  # validates min_agreement
        if self.graph not in GRAPHS:
            raise InvalidOptionError(
                f"--graph must be one of {', '.join(GRAPHS)}, got {self.graph!r}"
            )

    def thresholds(self) -> parity.Thresholds:
        return parity.thresholds_for(self.precision, self.min_agreement)

    def quant_config(self) -> quantize.QuantConfig:
        bits = _BITS[self.precision]
        block = self.block_size or (32 if bits == 4 else 64)
        return quantize.QuantConfig(bits, block, self.accuracy_level)


def export_model(
    source: str,
    output_dir: str | Path,
    options: ExportOptions | None = None,
    force: bool = False,
    on_stage: StageCallback | None = None,
) -> Manifest:
    """Export `source` (hub id or checkpoint folder) to the model folder `output_dir`."""
    options = options or ExportOptions()
    output = Path(output_dir).expanduser().absolute()
    local = Path(source).expanduser()
    refuse_existing(output, force, local if local.exists() else None)  # before any slow work
    with export_lock(output), interrupt_on_signals(), graph.quiet():
        return _export(source, output, options, force, on_stage or (lambda name: None))


def _export(
    source: str, output: Path, options: ExportOptions, force: bool, stage: StageCallback
) -> Manifest:
    stage("load")
    path = locate(source)
    config = load_config(path, source)
    arch = architecture_of(config, source)
    checkpoint = load_checkpoint(source, path, config)
    fields = arch.manifest_fields(config)
    # transformers' side of the parity check, now: the torch model is freed once the graph is
    # built, so the weights are never held by torch and ONNX Runtime at once.
    prompts = parity.parity_prompts(
        checkpoint.tokenizer, arch.local_window(config), config.max_position_embeddings
    )
    references = parity.reference_outputs(
        checkpoint.model, prompts, exact=options.precision == "fp32"
    )

    with staged_folder(output, force) as staging:
        kind, fallback = _graph_kind(checkpoint, arch, options.graph)
        stage(f"export (traced graph: {fallback})" if fallback else "export")
        model = _graph(checkpoint, arch, kind)
        checkpoint.model = None  # the references replace it; its weights are freed
        gc.collect()
        facts = {
            "graph": kind,
            **({"graph_fallback_reason": fallback} if fallback else {}),
            "tied_word_embeddings": bool(getattr(config, "tie_word_embeddings", True)),
            "hidden_state_output": features.expose_hidden_state(model),  # before the slice
            "logits_to_keep_input": graph.keep_last_logits(model),
            "tied_weights_stored_once": graph.store_tied_weights_once(model),
        }

        stage("optimize")
        model = _optimize(model, options, fields, facts)
        facts["node_counts"] = graph.node_counts(model)
        facts["files"] = graph.save(model, staging, threshold=options.external_data_threshold)
        # The runtime's fast graph: built graphs on CPU precisions (fp16 folders are for CUDA).
        in_place = {}
        if kind == "built" and options.precision != "fp16":
            in_place = inplace.write(staging, model)  # uses up the in-memory graph
            facts["files"] += [in_place["file"], *filter(None, [in_place.get("native_file")])]
        del model  # the weights now live in the folder only
        _copy_side_files(checkpoint, staging)
        tensors = TensorNames(
            logits_to_keep=graph.LOGITS_TO_KEEP if facts["logits_to_keep_input"] else None,
            hidden_state=features.HIDDEN_STATE if facts["hidden_state_output"] else None,
        )
        manifest = Manifest(
            **fields,
            tensors=tensors,
            precision=options.precision,
            opset=graph.OPSET,
            source=source,
            versions=_versions(),
            export=facts,
            inplace=in_place,
        )
        _write_manifest(manifest, staging)  # the runtime under test reads it

        stage("check")
        report = parity.check_parity(references, staging, options.precision, options.thresholds())

        stage("write")
        manifest = dataclasses.replace(manifest, parity=parity.report_dict(report))
        _write_manifest(manifest, staging)
    return manifest


def _graph_kind(checkpoint: Checkpoint, arch, wanted: str) -> tuple[str, str | None]:
    """The graph to write and, when the builder cannot express the checkpoint, why the traced
    graph replaces it (never a refusal: the traced graph exports whatever transformers runs)."""
    reason = arch.check_supported(checkpoint.config) if wanted == "built" else None
    if reason:
        return "traced", f"the graph builder cannot express {reason}"
    return wanted, None


def _graph(checkpoint: Checkpoint, arch, kind: str):
    if kind == "traced":
        return graph.trace(checkpoint.model)
    return builder.build(checkpoint.model, arch, checkpoint.config, release=True)


def _optimize(model, options: ExportOptions, fields: dict, facts: dict):
    """Fusion, then quantization or fp16 conversion; records what each did in `facts`."""
    facts["optimized"] = options.optimize
    if options.optimize:
        model, facts["fused_nodes"] = fusion.fuse(model, fields["num_heads"], fields["hidden_size"])
    if options.precision in _BITS:
        report = quantize.quantize(model, options.quant_config())
        quantize.require_complete(report, options.allow_partial)
        facts["quantization"] = dataclasses.asdict(report)
    elif options.precision == "fp16":
        model, facts["fp16_kept_fp32"] = half.convert(model)
    return model


def _copy_side_files(checkpoint: Checkpoint, folder: Path) -> None:
    """config.json, generation_config.json (when the source has one) and the tokenizer files."""
    checkpoint.config.save_pretrained(folder)
    source_generation = checkpoint.path / "generation_config.json"
    if source_generation.is_file():
        shutil.copyfile(source_generation, folder / "generation_config.json")
    checkpoint.tokenizer.save_pretrained(folder)


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
