"""`ortgen.json`: the manifest that makes a model folder self-describing. Export writes it, the
runtime reads it; precision, shapes and tensor names come from here and are never guessed."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortgen.errors import ModelFolderError
from ortgen.folder import check_fields, read_json_object, require_folder

MANIFEST_NAME = "ortgen.json"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8", "int4")
ARCHITECTURES = ("gpt2", "gpt_neo")
# The oldest onnxruntime that runs exported graphs right: GatherBlockQuantized's `bits` (int4 /
# int8 folders) needs 1.23; before 1.22 MultiHeadAttention broadcasts a [B, 1, T, P+T] bias wrongly
# for B > 1 (batched fp32 logits silently off). pyproject's onnxruntime pins say the same.
MIN_ONNXRUNTIME = "1.23"
_SIZES = ("num_layers", "num_heads", "head_dim", "hidden_size", "vocab_size", "max_positions")


@dataclass(frozen=True)
class TensorNames:
    """Graph tensor names (optimum's convention); `{i}` is the layer index."""

    input_ids: str = "input_ids"  # [B, T] int64
    attention_mask: str = "attention_mask"  # [B, P + T] int64, 1 = attend
    position_ids: str = "position_ids"  # [B, T] int64
    logits_to_keep: str | None = None  # [1] int64, optional: logits of the last N positions only
    past_key: str = "past_key_values.{i}.key"  # [B, H, P, D]
    past_value: str = "past_key_values.{i}.value"  # [B, H, P, D]
    logits: str = "logits"  # [B, T, V]
    present_key: str = "present.{i}.key"  # [B, H, P + T, D]
    present_value: str = "present.{i}.value"  # [B, H, P + T, D]
    hidden_state: str | None = None  # [B, T, D] final hidden states (after ln_f); None: absent


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to drive a model folder."""

    architecture: str  # "gpt2" or "gpt_neo"
    num_layers: int  # transformer blocks, one KV pair each
    num_heads: int  # attention heads (KV heads: same, no GQA in these families)
    head_dim: int  # size of one head
    hidden_size: int  # model width
    vocab_size: int  # rows of the embedding / columns of the logits
    max_positions: int  # context limit: position ids must stay below it
    eos_token_id: int | None = None  # stops generation unless overridden
    bos_token_id: int | None = None  # informational; GPT-2-style prompts carry no BOS
    precision: str = "fp32"  # fp32; fp16 (KV cache fp16 too); int8 / int4 (quantized weights)
    opset: int = 18  # ONNX opset of model.onnx
    model_file: str = "model.onnx"  # graph file inside the folder
    tensors: TensorNames = field(default_factory=TensorNames)  # graph I/O names
    source: str = ""  # hub id or path the export started from
    versions: dict[str, str] = field(default_factory=dict)  # packages used by the export
    export: dict[str, Any] = field(default_factory=dict)  # graph facts: tied weights, node counts
    parity: dict[str, Any] = field(default_factory=dict)  # parity report against transformers
    # The in-place KV graph beside model.onnx (GroupQueryAttention on preallocated cache buffers
    # shared by past and present; the same weights): {"file", "seqlens_k", "total_length",
    # "weights", and "native_file" + "native_kv_dtype" + "native_kv_layout" ("BHLD": caches
    # [B, H, L, ·]; "BLHD": [B, L, H, ·]; absent: [B, H, L, ·]) where its variant on ortgen's
    # kernels exists}; {} none
    inplace: dict[str, Any] = field(default_factory=dict)
    min_onnxruntime: str = MIN_ONNXRUNTIME  # oldest onnxruntime that runs these graphs right
    format_version: int = FORMAT_VERSION  # bumped on incompatible changes

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ModelFolderError(
                f"model folder has manifest format {self.format_version}, this ortgen reads "
                f"{FORMAT_VERSION}: re-export it with this version of ortgen"
            )
        if self.architecture not in ARCHITECTURES:
            raise ModelFolderError(f"manifest names unknown architecture {self.architecture!r}")
        if self.precision not in PRECISIONS:
            raise ModelFolderError(
                f"manifest names precision {self.precision!r}, this ortgen runs {PRECISIONS}: "
                "upgrade ortgen or re-export the model"
            )
        for name in _SIZES:
            if getattr(self, name) < 1:
                raise ModelFolderError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("eos_token_id", "bos_token_id"):
            token = getattr(self, name)
            if token is not None and not 0 <= token < self.vocab_size:
                raise ModelFolderError(
                    f"{name} {token} is outside the vocabulary [0, {self.vocab_size})"
                )

    @property
    def kv_dtype(self) -> str:
        """numpy dtype name of the KV cache tensors."""
        return "float16" if self.precision == "fp16" else "float32"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFolderError(
                f"manifest has unknown fields {unknown}: it was written by a newer ortgen, upgrade"
            )
        data = dict(data)
        data["tensors"] = TensorNames(**data.get("tensors", {}))
        try:
            return cls(**data)
        except TypeError as err:
            raise ModelFolderError(f"manifest is incomplete ({err}): re-export the model") from None


def read_manifest(folder: Path) -> Manifest:
    """Read and validate `folder/ortgen.json`: its shape, field types and values."""
    path = require_folder(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"{folder} is not an ortgen model folder (no {MANIFEST_NAME}): "
            f"export one with `ortgen export SOURCE OUTPUT_DIR`"
        )
    data = read_json_object(path)
    check_fields(Manifest, data, path)
    check_fields(TensorNames, data.get("tensors", {}), path)
    try:
        return Manifest.from_dict(data)
    except ModelFolderError as err:
        raise ModelFolderError(f"{path}: {err}") from None
