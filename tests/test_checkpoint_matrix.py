"""Every config option of GPT2Config / GPTNeoConfig that released checkpoints use, one tiny random
checkpoint each, exported with the default command: the built graph (no fallback), equal to
transformers' eager attention (prefill logits, greedy ids). Every activation transformers
implements, checked alone against its torch module; what the builder cannot express falls back to
the traced graph on its own, said and recorded."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from checkpoints import random_checkpoint, train_tokenizer
from onnx import TensorProto, helper
from reference import assert_equal_to_transformers
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2CLS

from ortgen.manifest import read_manifest
from ortgen_export import ExportOptions, activations, export_model
from ortgen_export.architectures import ARCHITECTURES
from ortgen_export.builder import MS, OPSET, _Graph

VOCAB = 397  # a multiple of nothing: no block or tile size divides it

CASES = {  # name → (architecture, config options)
    "gpt2-inverse-layer-idx": ("gpt2", dict(scale_attn_by_inverse_layer_idx=True)),
    # Stanford CRFM's GPT-2s set both
    "gpt2-reorder-and-upcast": (
        "gpt2",
        dict(reorder_and_upcast_attn=True, scale_attn_by_inverse_layer_idx=True),
    ),
    "gpt2-unscaled-attention": ("gpt2", dict(scale_attn_weights=False)),
    "gpt2-untied-head": ("gpt2", dict(tie_word_embeddings=False)),
    # MLP width, LayerNorm epsilon, an n_ctx that is not n_positions (old configs)
    "gpt2-sizes": ("gpt2", dict(n_inner=48, layer_norm_epsilon=1e-2, n_ctx=1024, n_positions=40)),
    "gpt2-prelu": ("gpt2", dict(activation_function="prelu")),  # a learned activation constant
    "gpt_neo-untied-head": ("gpt_neo", dict(tie_word_embeddings=False)),
    "gpt_neo-sizes": ("gpt_neo", dict(intermediate_size=48, layer_norm_epsilon=1e-2)),
    "gpt_neo-all-local": ("gpt_neo", dict(attention_types=[[["local"], 2]], window_size=5)),
    "gpt_neo-local-then-global": (
        "gpt_neo",
        dict(attention_types=[[["local", "global"], 1]], window_size=3),
    ),
    "gpt_neo-xielu": ("gpt_neo", dict(activation_function="xielu")),  # bf16 learned constants
}
# Every activation is also checked alone (test_activation_equals_transformers): the exports above
# cover the two whose constants come from the checkpoint.


@pytest.fixture(scope="session")
def tokenizer():
    tokenizer = train_tokenizer(VOCAB)
    assert tokenizer.get_vocab_size() == VOCAB
    return tokenizer


@pytest.fixture(scope="session")
def matrix_root(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix")


def export_case(root, tokenizer, name: str, options=None, case=None, tag: str = "fp32"):
    """(checkpoint folder, model folder, stage names) of CASES[name] (or `case`)."""
    arch, config = case or CASES[name]
    checkpoint = root / name
    if not checkpoint.exists():
        random_checkpoint(checkpoint, arch, tokenizer, **config)
    out = root / f"{name}-{tag}"
    stages: list[str] = []
    export_model(str(checkpoint), out, options, on_stage=stages.append)
    return checkpoint, out, stages


@pytest.mark.parametrize("name", CASES)
def test_option_exports_the_built_graph_equal_to_transformers(name, matrix_root, tokenizer):
    checkpoint, folder, stages = export_case(matrix_root, tokenizer, name)
    facts = read_manifest(folder).export
    assert facts["graph"] == "built" and "graph_fallback_reason" not in facts
    assert "export" in stages
    assert (folder / "inplace.onnx").is_file()
    assert_equal_to_transformers(folder, checkpoint)  # both graphs


def test_inverse_layer_idx_scales_each_layer(matrix_root, tokenizer):
    folder = matrix_root / "gpt2-inverse-layer-idx-fp32"
    if not folder.exists():
        export_case(matrix_root, tokenizer, "gpt2-inverse-layer-idx")
    model = onnx.load(str(folder / "model.onnx"))
    scales = [
        helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type == "MultiHeadAttention"
        for a in n.attribute
        if a.name == "scale"
    ]
    head_dim = 32 // 4
    assert scales == pytest.approx([head_dim**-0.5 / (i + 1) for i in range(2)])


def test_untied_head_keeps_its_own_weight_and_quantizes(matrix_root, tokenizer):
    name = "gpt2-untied-head"
    _, folder, _ = export_case(matrix_root, tokenizer, name, ExportOptions("int8"), tag="int8")
    manifest = read_manifest(folder)
    assert manifest.export["tied_word_embeddings"] is False
    assert manifest.export["tied_weights_stored_once"] is False
    quantization = manifest.export["quantization"]
    assert quantization["quantized_layers"] == quantization["linear_layers"]
    assert "transformer.wte.weight" in quantization["quantized_embeddings"]
    assert manifest.parity["greedy_agreement"] >= 0.9


@pytest.mark.parametrize("name", sorted(ACT2CLS))
def test_activation_equals_transformers(name):
    """Each ACT2FN activation as the builder writes it, against the torch module itself."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=8, activation_function=name)
    model = GPT2LMHeadModel(config).eval()
    x = torch.randn(2, 3, 16) * 6  # [B, T, F]: reaches gelu_10's clip and relu6's cap
    bias = torch.randn(16)
    g = _Graph()
    params = ARCHITECTURES["gpt2"].activation_params(model, 0)
    names = {k: g.const(f"act.{k}", v) for k, v in params.items()}
    out = activations.activate(g, name, names, "x", g.const("bias", bias.numpy()))
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        g.nodes,
        "act",
        [value("x", TensorProto.FLOAT, [2, 3, 16])],
        [value(out, TensorProto.FLOAT, None)],
        g.model.graph.initializer,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model.transformer.h[0].mlp.act(x + bias).float().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_every_transformers_activation_is_built():
    assert set(activations.ACTIVATIONS) == set(ACT2CLS)


def test_what_the_builder_cannot_express_falls_back_to_the_traced_graph(
    matrix_root, tokenizer, monkeypatch
):
    monkeypatch.delitem(activations.ACTIVATIONS, "relu")  # as if the builder lacked it
    case = ("gpt_neo", dict(activation_function="relu"))
    checkpoint, folder, stages = export_case(matrix_root, tokenizer, "gpt_neo-relu", case=case)
    facts = read_manifest(folder).export
    assert facts["graph"] == "traced"
    assert facts["graph_fallback_reason"] == "the graph builder cannot express activation 'relu'"
    assert stages[1] == f"export (traced graph: {facts['graph_fallback_reason']})"
    assert not (folder / "inplace.onnx").exists()  # the in-place graph derives from built ones
    assert_equal_to_transformers(folder, checkpoint)
