"""The graph written directly (no tracing) with ONNX Runtime's contrib ops: MultiHeadAttention with
past / present (its `scale` per layer), the MLP activation (activations.py),
LayerNormalization — a fraction of the traced graph's ~1,000 glue nodes.
Same interface and names as the traced graph (optimum's), so the runtime, the parity check and
the quantizer treat both alike. The attention bias (causal, padding, GPT-Neo's local window
counted on absolute key indices, as transformers does) is computed once per run."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortgen_export.activations import activate
from ortgen_export.architectures import Architecture, LayerWeights
from ortgen_export.pages import CheckpointPages

MS = "com.microsoft"
OPSET = 18
_MASKED = -1e30  # additive bias for masked keys: exp underflows to 0, no inf - inf


class _Graph:
    """Accumulates nodes and initializers with unique names. Weights are written straight into
    the model being built (`make_graph` / `make_model` would each copy them again)."""

    def __init__(self) -> None:
        self.model = onnx.ModelProto()
        self.nodes: list[onnx.NodeProto] = []
        self._names: set[str] = set()
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer; a name already given is reused (shared constants, one per graph)."""
        if name not in self._names:
            self._names.add(name)
            tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
            self.model.graph.initializer.append(tensor)  # one weight copied at a time
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs):
        self._count += 1
        names = [f"/{op_type.lower()}_{self._count}/{k}" for k in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain, **attrs
            )
        )
        return names[0] if outputs == 1 else names


def build(model: Any, arch: Architecture, config: Any, release: bool = False) -> onnx.ModelProto:
    """The decoder graph for `model` (a transformers GPT-2 / GPT-Neo, fp32). With `release`, each
    torch weight is freed once it is in the graph and `model` is left on the meta device
    (unusable): the weights are never held twice."""
    layers = range(config.num_hidden_layers)
    activations = [arch.activation_params(model, i) for i in layers]
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    pages = CheckpointPages() if release else None
    if release:
        model.to("meta")  # the modules let go of their weights: `state` holds the last references
    heads, width = config.num_attention_heads, config.hidden_size
    g = _Graph()
    eps = float(config.layer_norm_epsilon)
    act = getattr(config, "activation_function", "gelu_new")
    hidden = g.op(
        "Add",
        [
            g.op(
                "Gather",
                [g.const("transformer.wte.weight", state["transformer.wte.weight"]), "input_ids"],
            ),
            g.op(
                "Gather",
                [
                    g.const("transformer.wpe.weight", state["transformer.wpe.weight"]),
                    "position_ids",
                ],
            ),
        ],
    )  # [B, T, D]
    biases = _attention_biases(g, config, arch)
    presents = []
    for i in layers:
        layer = arch.layer(state, config, i)
        params = {
            key: g.const(f"transformer.h.{i}.mlp.act.{key}", value)
            for key, value in activations[i].items()
        }
        hidden, present = _block(
            g, hidden, layer, i, heads, width, eps, biases[layer.window], (act, params)
        )
        presents += present
        del layer  # with the layer's state entries: freed when released
        _release(state, f"transformer.h.{i}.", pages)
    gamma, beta = state["transformer.ln_f.weight"], state["transformer.ln_f.bias"]
    final = g.op(
        "LayerNormalization",
        [hidden, g.const("transformer.ln_f.weight", gamma), g.const("transformer.ln_f.bias", beta)],
        epsilon=eps,
    )
    # The head as the exporter writes it (x @ Wᵀ); when tied (W is the embedding),
    # store_tied_weights_once rewrites it onto the embedding table.
    g.nodes.append(
        helper.make_node(
            "MatMul",
            [final, g.const("lm_head.weight.T", state["lm_head.weight"].T)],
            ["logits"],
            name="lm_head/MatMul",
        )
    )
    _release(state, "", pages)
    return _model(g, config, presents)


def _release(state: dict[str, np.ndarray], prefix: str, pages: CheckpointPages | None) -> None:
    """Forget the weights under `prefix`, now in the graph: with `pages`, the last references to
    them go, and so do the checkpoint pages they were read from."""
    done = [key for key in state if key.startswith(prefix)]
    if pages is not None:
        pages.drop(state[key] for key in done)
    for key in done:
        del state[key]


def _attention_biases(g: _Graph, config: Any, arch: Architecture) -> dict[int | None, str]:
    """Additive attention bias [B, 1, T, P + T] per window (None: global)."""
    total = g.op("Shape", ["attention_mask"], start=1, end=2)  # [1] = P + T
    length = g.op("Shape", ["input_ids"], start=1, end=2)  # [1] = T
    past = g.op("Sub", [total, length])
    scalar = g.const("attn_mask/axes0", np.array([0], dtype=np.int64))
    start, stop = g.op("Squeeze", [past, scalar]), g.op("Squeeze", [total, scalar])
    one = g.const("attn_mask/one", np.array(1, dtype=np.int64))
    zero = g.const("attn_mask/zero", np.array(0, dtype=np.int64))
    queries = g.op(
        "Unsqueeze",
        [
            g.op("Range", [start, stop, one]),
            g.const("attn_mask/axes1", np.array([1], dtype=np.int64)),
        ],
    )
    keys = g.op("Unsqueeze", [g.op("Range", [zero, stop, one]), scalar])
    distance = g.op("Sub", [queries, keys])  # [T, P + T]: absolute query index − key index
    causal = g.op("GreaterOrEqual", [distance, zero])
    attend = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)  # [B, P + T]
    attend = g.op("Unsqueeze", [attend, g.const("attn_mask/axes12", np.array([1, 2], np.int64))])
    masked = g.const("attn_mask/masked", np.array(_MASKED, dtype=np.float32))
    free = g.const("attn_mask/free", np.array(0.0, dtype=np.float32))
    windows = {None} | {arch.layer_window(config, i) for i in range(config.num_hidden_layers)}
    biases = {}
    for window in sorted(windows, key=lambda w: w or 0):
        allowed = causal
        if window is not None:
            near = g.op(
                "Less",
                [distance, g.const(f"attn_mask/window{window}", np.array(window, dtype=np.int64))],
            )
            allowed = g.op("And", [causal, near])
        allowed = g.op("And", [attend, allowed])  # [B, 1, T, P + T]
        biases[window] = g.op("Where", [allowed, free, masked])
    return biases


def _block(
    g: _Graph,
    x: str,
    w: LayerWeights,
    i: int,
    heads: int,
    width: int,
    eps: float,
    bias: str,
    act: tuple[str, dict[str, str]],
) -> tuple[str, list[str]]:
    p = f"transformer.h.{i}"
    normed = g.op(
        "LayerNormalization",
        [x, g.const(f"{p}.ln_1.weight", w.ln1[0]), g.const(f"{p}.ln_1.bias", w.ln1[1])],
        epsilon=eps,
    )
    qkv = g.op("MatMul", [normed, g.const(f"{p}.attn.qkv.weight", w.qkv)])  # [B, T, 3D]
    if w.qkv_bias is not None:
        qkv = g.op("Add", [qkv, g.const(f"{p}.attn.qkv.bias", w.qkv_bias)])
    split = g.const(f"{p}.attn.split", np.array([width] * 3, dtype=np.int64))
    q, k, v = g.op("Split", [qkv, split], outputs=3, axis=-1)
    attended = f"{p}/attention"
    present = [f"present.{i}.key", f"present.{i}.value"]
    g.nodes.append(
        helper.make_node(
            "MultiHeadAttention",
            [q, k, v, "", "", bias, f"past_key_values.{i}.key", f"past_key_values.{i}.value"],
            [attended, *present],
            name=f"{p}/MultiHeadAttention",
            domain=MS,
            num_heads=heads,
            scale=w.scale,
        )
    )
    projected = g.op(
        "Add",
        [
            g.op("MatMul", [attended, g.const(f"{p}.attn.proj.weight", w.proj)]),
            g.const(f"{p}.attn.proj.bias", w.proj_bias),
        ],
    )
    x = g.op("Add", [x, projected])  # residual
    normed = g.op(
        "LayerNormalization",
        [x, g.const(f"{p}.ln_2.weight", w.ln2[0]), g.const(f"{p}.ln_2.bias", w.ln2[1])],
        epsilon=eps,
    )
    up = g.op("MatMul", [normed, g.const(f"{p}.mlp.fc.weight", w.fc)])
    act = activate(g, *act, up, g.const(f"{p}.mlp.fc.bias", w.fc_bias))
    down = g.op(
        "Add",
        [
            g.op("MatMul", [act, g.const(f"{p}.mlp.out.weight", w.out)]),
            g.const(f"{p}.mlp.out.bias", w.out_bias),
        ],
    )
    return g.op("Add", [x, down]), present


def _model(g: _Graph, config: Any, presents: list[str]) -> onnx.ModelProto:
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    kv = ["batch_size", heads, "past_sequence_length", head_dim]
    kv_out = ["batch_size", heads, "past_sequence_length + sequence_length", head_dim]
    inputs = [
        helper.make_tensor_value_info(
            "input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]
        ),
    ]
    for i in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv)
            )
    inputs += [
        helper.make_tensor_value_info(
            "attention_mask",
            TensorProto.INT64,
            ["batch_size", "past_sequence_length + sequence_length"],
        ),
        helper.make_tensor_value_info(
            "position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]
        ),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", config.vocab_size]
        )
    ]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, kv_out) for name in presents]
    model = g.model  # its initializers are in place already
    model.graph.name = "ortgen_decoder"
    model.graph.node.extend(g.nodes)
    model.graph.input.extend(inputs)
    model.graph.output.extend(outputs)
    model.ir_version = 10
    model.producer_name = "ortgen"
    model.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    return model
