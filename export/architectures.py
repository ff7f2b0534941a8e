"""Per-architecture facts of the export stage, in one place: how to read GPT-2's and GPT-Neo's
configs and weights. Everything downstream (graph builder, runtime) is architecture-neutral."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ortgen.errors import UnsupportedModelError
from ortgen_export.activations import ACTIVATIONS


@dataclass(frozen=True)
class LayerWeights:
    """One transformer block, normalised: matrices as [in, out] for `x @ W`."""

    ln1: tuple[np.ndarray, np.ndarray]  # LayerNorm gamma, beta [D]
    qkv: np.ndarray  # [D, 3D]: q | k | v
    qkv_bias: np.ndarray | None  # [3D] (GPT-Neo has none)
    proj: np.ndarray  # [D, D] attention output
    proj_bias: np.ndarray  # [D]
    ln2: tuple[np.ndarray, np.ndarray]
    fc: np.ndarray  # [D, F]: F = n_inner / intermediate_size, 4D by default
    fc_bias: np.ndarray
    out: np.ndarray  # [F, D]
    out_bias: np.ndarray
    window: int | None  # local attention window (GPT-Neo local layers), None = global
    scale: float  # q·kᵀ multiplier of this layer (MultiHeadAttention's `scale`)


@dataclass(frozen=True)
class Architecture:
    """How to read one family's transformers config and weights."""

    name: str  # manifest `architecture` value, equal to transformers' model_type
    hub_ids: tuple[str, ...]  # released checkpoints known to export (others of the family work)

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

    def attention_scale(self, config: Any, i: int) -> float:
        """q·kᵀ multiplier of layer `i`."""
        raise NotImplementedError

    def layer_window(self, config: Any, i: int) -> int | None:
        """Local attention window of layer `i` (None: global)."""
        return None

    def layer(self, state: dict[str, np.ndarray], config: Any, i: int) -> LayerWeights:
        raise NotImplementedError

    def activation_params(self, model: Any, i: int) -> dict[str, np.ndarray]:
        """Learned constants of layer `i`'s activation, as its forward uses them: prelu's slope;
        xielu's softplus-ed coefficients, computed in the parameters' own dtype (bf16)."""
        import torch

        act = model.transformer.h[i].mlp.act
        with torch.no_grad():
            if isinstance(act, torch.nn.PReLU):
                found = {"slope": act.weight}
            elif type(act).__name__ == "XIELUActivation":
                softplus = torch.nn.functional.softplus
                found = {
                    "alpha_p": softplus(act.alpha_p),
                    "alpha_n": act.beta + softplus(act.alpha_n),
                    "beta": act.beta,
                    "eps": act.eps,
                }
            else:
                found = {}
            return {k: v.detach().float().numpy() for k, v in found.items()}

    def check_supported(self, config: Any) -> str | None:
        """Why the graph builder cannot express this config (None: it can)."""
        activation = getattr(config, "activation_function", "gelu_new")
        if activation not in ACTIVATIONS:
            return f"activation {activation!r}"
        if getattr(config, "pruned_heads", None):
            return "pruned attention heads"
        return None


class GPT2(Architecture):
    def attention_scale(self, config: Any, i: int) -> float:
        head_dim = config.hidden_size // config.num_attention_heads
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        # reorder_and_upcast_attn only changes where fp16 / bf16 training upcasts: the fp32 graph
        # computes the same scores.
        return scale / (i + 1) if config.scale_attn_by_inverse_layer_idx else scale

    def layer(self, state: dict[str, np.ndarray], config: Any, i: int) -> LayerWeights:
        p = f"transformer.h.{i}."
        return LayerWeights(  # Conv1D weights are already [in, out]
            ln1=(state[p + "ln_1.weight"], state[p + "ln_1.bias"]),
            qkv=state[p + "attn.c_attn.weight"],
            qkv_bias=state[p + "attn.c_attn.bias"],
            proj=state[p + "attn.c_proj.weight"],
            proj_bias=state[p + "attn.c_proj.bias"],
            ln2=(state[p + "ln_2.weight"], state[p + "ln_2.bias"]),
            fc=state[p + "mlp.c_fc.weight"],
            fc_bias=state[p + "mlp.c_fc.bias"],
            out=state[p + "mlp.c_proj.weight"],
            out_bias=state[p + "mlp.c_proj.bias"],
            window=None,
            scale=self.attention_scale(config, i),
        )


class GPTNeo(Architecture):
    def attention_scale(self, config: Any, i: int) -> float:
        return 1.0  # GPT-Neo does not scale q·kᵀ by 1/√head_dim

    def layer_window(self, config: Any, i: int) -> int | None:
        return int(config.window_size) if config.attention_layers[i] == "local" else None

    def layer(self, state: dict[str, np.ndarray], config: Any, i: int) -> LayerWeights:
        p = f"transformer.h.{i}."
        a = p + "attn.attention."
        qkv = [state[a + f"{name}_proj.weight"].T for name in ("q", "k", "v")]  # Linear: [out, in]
        return LayerWeights(
            ln1=(state[p + "ln_1.weight"], state[p + "ln_1.bias"]),
            qkv=np.concatenate(qkv, axis=1),
            qkv_bias=None,
            proj=state[a + "out_proj.weight"].T,
            proj_bias=state[a + "out_proj.bias"],
            ln2=(state[p + "ln_2.weight"], state[p + "ln_2.bias"]),
            fc=state[p + "mlp.c_fc.weight"].T,
            fc_bias=state[p + "mlp.c_fc.bias"],
            out=state[p + "mlp.c_proj.weight"].T,
            out_bias=state[p + "mlp.c_proj.bias"],
            window=self.layer_window(config, i),
            scale=self.attention_scale(config, i),
        )


ARCHITECTURES = {
    "gpt2": GPT2("gpt2", ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")),
    "gpt_neo": GPTNeo(
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
