"""Per-architecture facts of the export stage, in one table: GPT-2 and GPT-Neo differ here and
nowhere else (the runtime drives both through the same graph interface)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ortgen.errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    """How to read one family's transformers config."""

    name: str  # manifest `architecture` value, equal to transformers' model_type
    hub_ids: tuple[str, ...]  # released checkpoints known to export (others of the family work too)

    def local_window(self, config: Any) -> int | None:
        """Width of local attention layers, or None if every layer is global."""
        if "local" not in getattr(config, "attention_layers", []):
            return None
        return int(config.window_size)

    def manifest_fields(self, config: Any) -> dict[str, Any]:
        """Shape facts the runtime needs, read through transformers' uniform attribute names."""
        heads = int(config.num_attention_heads)
        return {
            "architecture": self.name,
            "num_layers": int(config.num_hidden_layers),
            "num_heads": heads,
            "head_dim": int(config.hidden_size) // heads,
            "hidden_size": int(config.hidden_size),
            "vocab_size": int(config.vocab_size),
            "max_positions": int(config.max_position_embeddings),
            "eos_token_id": config.eos_token_id,
            "bos_token_id": config.bos_token_id,
        }


ARCHITECTURES = {
    "gpt2": Architecture("gpt2", ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")),
    "gpt_neo": Architecture(
        "gpt_neo",
        ("EleutherAI/gpt-neo-125M", "EleutherAI/gpt-neo-1.3B", "EleutherAI/gpt-neo-2.7B"),
    ),
}


def architecture_of(config: Any, source: str) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r} in {source}: ortgen exports "
            f"{' and '.join(sorted(ARCHITECTURES))} checkpoints"
        )
    return ARCHITECTURES[model_type]
