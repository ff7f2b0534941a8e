"""ortgen's own kernels (native/): `ortgen.Q8MatMul` (int8 activations against 8-bit or 4-bit
weights) is built wherever the CPU can run it, computes what the packed weights mean (within the
activations' int8 rounding, as MatMulNBits does), and gives every row the same bits whatever rows
run beside it and whichever path (few rows or many) computes it; `ortgen.CachedAttention` and
`ortgen.CachedAttentionQ8`."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cpu import has_amx, native_build, runs_native_kernels
from onnx import TensorProto, helper, numpy_helper

from ortgen import kernels
from ortgen_export.quantize import pack_rows

pytestmark = pytest.mark.skipif(
    not runs_native_kernels(), reason="this CPU runs neither native build"
)


def test_kernels_are_built_where_the_cpu_runs_them():
    assert kernels.library() is not None, kernels.missing()


def test_the_fastest_build_the_cpu_runs_is_the_one_loaded():
    """AVX-512 VNNI where the CPU has it, else the AVX2 build (native/isa.h), both built."""
    import importlib.util

    for name in kernels.BUILDS:
        assert importlib.util.find_spec(name) is not None, f"{name} is not built"
    wanted = importlib.util.find_spec(native_build()).origin
    assert kernels.library() == wanted


BLOCKS = {8: 64, 4: 32}  # MatMulNBits block the kernel takes for each width


def packed(rows: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The export's packing of a [N, K] weight → (data, scales, what they mean [N, K])."""
    n, k = rows.shape
    data, scales = pack_rows(rows, bits, BLOCKS[bits])
    codes = (
        data
        if bits == 8
        else np.stack([data & 15, data >> 4], axis=-1).reshape(n, scales.shape[1], -1)
    )
    restored = (codes.astype(np.float32) - 2 ** (bits - 1)) * scales[..., None]
    return data, scales, restored.reshape(n, -1)[:, :k]


def q8_session(
    data: np.ndarray,
    scales: np.ndarray,
    bias: np.ndarray | None,
    k: int,
    activation: int = 0,
    bits: int = 8,
):
    n = data.shape[0]
    inputs = ["A", "B", "S", *(["bias"] if bias is not None else [])]
    extra = {"activation": activation} if activation else {}
    extra.update({"bits": bits} if bits != 8 else {})
    node = helper.make_node("Q8MatMul", inputs, ["Y"], domain=kernels.DOMAIN, K=k, N=n, **extra)
    weights = [numpy_helper.from_array(data, "B"), numpy_helper.from_array(scales, "S")]
    if bias is not None:
        weights.append(numpy_helper.from_array(bias, "bias"))
    graph = helper.make_graph(
        [node],
        "q8",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        weights,
    )
    return native_session(graph)


def native_session(graph) -> ort.InferenceSession:
    """A 2-thread session on a one-node graph of ortgen's custom ops."""
    model = helper.make_model(
        graph,
        ir_version=10,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(kernels.DOMAIN, 1)],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(kernels.library())
    return ort.InferenceSession(model.SerializeToString(), options)


def rounding_bound(a: np.ndarray, rows: np.ndarray, block: int) -> np.ndarray:
    """|kernel − a · Wᵀ| can reach Σ over blocks of (a's block step / 2) · Σ |w| in the block:
    activations are int8 per row and block (step max |a| / 127), weights exact as packed."""
    m, k = a.shape
    width = -(-k // block) * block
    padded_a = np.zeros((m, width), np.float64)
    padded_a[:, :k] = a
    padded_w = np.zeros((rows.shape[0], width), np.float64)
    padded_w[:, :k] = np.abs(rows)
    step = np.abs(padded_a.reshape(m, -1, block)).max(-1) / 127  # [M, KB]
    weight = padded_w.reshape(rows.shape[0], -1, block).sum(-1)  # [N, KB]
    return step @ weight.T / 2 + 1e-4  # [M, N]


# 8 bits: K = 100 and 320 are 2 and 5 blocks, so the few-rows path's last group of 4 blocks is
# partial; 4 bits: K = 100, 200, 320, 768 leave 4, 7, 10, 24 blocks, a partial run of 16.
# N = 600: 38 column groups, split over the threads
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("k, n", [(64, 37), (100, 20), (200, 100), (320, 50), (768, 600)])
# m: few rows (8 bits ≤ 3 with AVX2, ≤ 4 with AVX-512; 4 bits ≤ 6) go a column at a time, more
# in 16-column groups
@pytest.mark.parametrize("m", [1, 2, 3, 5, 9])
def test_q8matmul_computes_the_packed_weights(k, n, m, bits):
    rng = np.random.default_rng(k)
    data, scales, restored = packed(rng.normal(size=(n, k)).astype(np.float32), bits)
    bias = rng.normal(size=n).astype(np.float32)
    a = rng.normal(size=(m, k)).astype(np.float32)
    plain = q8_session(data, scales, None, k, bits=bits).run(None, {"A": a})[0]
    exact = a.astype(np.float64) @ restored.T.astype(np.float64)
    assert (np.abs(plain - exact) <= rounding_bound(a, restored, BLOCKS[bits])).all()
    assert np.abs(plain - exact).max() > 0  # the activations really are int8
    with_bias = q8_session(data, scales, bias, k, bits=bits).run(None, {"A": a})[0]
    assert np.array_equal(with_bias, plain + bias)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's gelu_new in float64."""
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m", [1, 3, 9])
def test_q8matmul_gelu_is_the_tanh_gelu_of_the_biased_product(m, bits):
    """activation=1 (a folded FastGelu): GELU of exactly what the plain kernel gives plus the
    bias, to float32 precision, over negative, small, large and NaN values."""
    rng = np.random.default_rng(m)
    data, scales, _ = packed(rng.normal(size=(70, 130)).astype(np.float32), bits)
    bias = (rng.normal(size=70) * 3).astype(np.float32)
    a = (rng.normal(size=(m, 130)) * rng.uniform(0.01, 3, size=(m, 1))).astype(np.float32)
    a[0, :3] = [40.0, -40.0, 0.0]
    linear = q8_session(data, scales, bias, 130, bits=bits).run(None, {"A": a})[0]
    gelu = q8_session(data, scales, bias, 130, activation=1, bits=bits).run(None, {"A": a})[0]
    want = gelu_tanh(linear)
    assert np.abs(gelu - want).max() <= 2e-6 * np.maximum(np.abs(want), 1).max()
    a[-1, 5] = np.nan
    nan_row = q8_session(data, scales, bias, 130, 1, bits).run(None, {"A": a})[0][-1]
    assert np.isnan(nan_row).all()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m", [1, 5])
def test_a_nan_input_gives_nan_outputs_in_its_row_only(m, bits):
    """A NaN must not vanish in the activations' int8 rounding (max() drops NaNs)."""
    rng = np.random.default_rng(3)
    data, scales, _ = packed(rng.normal(size=(40, 130)).astype(np.float32), bits)
    session = q8_session(data, scales, None, 130, bits=bits)
    a = rng.normal(size=(m, 130)).astype(np.float32)
    a[0, 70] = np.nan
    y = session.run(None, {"A": a})[0]
    assert np.isnan(y[0]).all()
    assert np.isfinite(y[1:]).all()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("activation", [0, 1])
@pytest.mark.parametrize("k, n", [(200, 37), (320, 50), (768, 600), (3072, 40)])
def test_a_row_gets_the_same_bits_whatever_runs_beside_it(k, n, activation, bits):
    """Few rows (one column at a time, three rows a pass) and many (16-column groups, 64- or
    32-row blocks, split across threads) are different paths: every row still comes out bit for
    bit as it does alone."""
    rng = np.random.default_rng(n)
    data, scales, _ = packed(rng.normal(size=(n, k)).astype(np.float32), bits)
    bias = rng.normal(size=n).astype(np.float32)
    session = q8_session(data, scales, bias, k, activation, bits)
    a = (rng.normal(size=(70, k)) * rng.uniform(0.1, 10, size=(70, 1))).astype(np.float32)
    alone = {
        i: session.run(None, {"A": a[i : i + 1]})[0][0] for i in (0, 1, 2, 3, 7, 8, 16, 64, 69)
    }
    for rows in (2, 3, 4, 5, 6, 7, 8, 12, 17, 20, 33, 65, 70):
        batch = session.run(None, {"A": a[:rows]})[0]
        for i in [i for i in alone if i < rows]:
            assert np.array_equal(batch[i], alone[i]), (rows, i)
    shaped = session.run(None, {"A": a[:6].reshape(2, 3, k)})[0]  # [B, T, K] inputs too
    assert np.array_equal(shaped.reshape(6, n)[0], alone[0])


AMX_BATCH = """
import sys, ctypes, numpy as np
sys.path.insert(0, sys.argv[1])
from test_native import amx_batch
from ortgen import kernels
np.save(sys.argv[2], amx_batch())
print(ctypes.CDLL(kernels.library()).ortgen_kernels_amx())
"""


def amx_batch() -> np.ndarray:
    """8-bit and 4-bit Q8MatMuls over 8, 13, 20, 33 and 70 rows (the tiles' paths where AMX runs:
    8 bits from 8 rows, one row tile up to 16; 4 bits from 20), N 50: a partial second column
    tile (few rows: 2 columns past 3 full groups), K 320: five 8-bit blocks, ten 4-bit ones (slots
    left empty)"""
    rng = np.random.default_rng(5)
    a = (rng.normal(size=(70, 320)) * rng.uniform(0.1, 10, size=(70, 1))).astype(np.float32)
    out = []
    for bits in (8, 4):
        data, scales, _ = packed(rng.normal(size=(50, 320)).astype(np.float32), bits)
        bias = rng.normal(size=50).astype(np.float32)
        session = q8_session(data, scales, bias, 320, bits=bits)
        out += [session.run(None, {"A": a[:rows]})[0] for rows in (8, 13, 20, 33, 70)]
    return np.concatenate(out)


@pytest.mark.skipif(not has_amx(), reason="this CPU has no AMX-INT8")
def test_amx_tiles_run_where_the_cpu_has_them_and_give_the_vnni_paths_bits(tmp_path):
    """Many rows go through AMX tiles where the CPU has them; ORTGEN_AMX=0 turns them off
    (AVX-512 VNNI groups), and both give the same bits."""
    assert ctypes.CDLL(kernels.library()).ortgen_kernels_amx() == 1
    tiles = amx_batch()
    env = {**os.environ, "ORTGEN_AMX": "0"}
    here = str(Path(__file__).parent)
    off = subprocess.run(
        [sys.executable, "-c", AMX_BATCH, here, str(tmp_path / "vnni.npy")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert off.stdout.split() == ["0"]
    assert np.array_equal(np.load(tmp_path / "vnni.npy"), tiles)


def test_wrong_shapes_fail_with_a_message_instead_of_reading_past_the_weights():
    data, scales = pack_rows(np.ones((8, 64), np.float32), 8, 64)
    session = q8_session(data, scales, None, 64)
    with pytest.raises(Exception, match="last dimension of A is not the node's K"):
        session.run(None, {"A": np.ones((1, 32), np.float32)})
    short = q8_session(data[:4], scales, None, 64)  # N = 4 in the node, 8 rows of scales
    with pytest.raises(Exception, match="Q8MatMul: scales are not N x K/64"):
        short.run(None, {"A": np.ones((1, 64), np.float32)})
    data, scales = pack_rows(np.ones((8, 64), np.float32), 4, 32)
    as_8_bits = q8_session(data, scales, None, 64)  # 4-bit bytes in an 8-bit node
    with pytest.raises(Exception, match="Q8MatMul: B is not N x K/64 x 64"):
        as_8_bits.run(None, {"A": np.ones((1, 64), np.float32)})
    with pytest.raises(Exception, match="Q8MatMul: B is not N x K/32 x 16"):
        q8_session(data[:, :1], scales, None, 64, bits=4).run(
            None, {"A": np.ones((1, 64), np.float32)}
        )
    with pytest.raises(Exception, match="attribute bits must be 8"):
        q8_session(data, scales, None, 64, bits=2)


def test_a_library_that_does_not_load_is_reported_as_such(monkeypatch, tmp_path):
    """Not as a CPU without VNNI: the message names the file and says to reinstall."""
    broken = tmp_path / "_kernels.so"
    broken.write_bytes(b"not a shared library")
    spec = type("Spec", (), {"origin": str(broken)})()
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: spec)
    kernels._load.cache_clear()
    kernels._probe.cache_clear()
    try:
        assert kernels.library() is None
        assert "does not load" in kernels.missing() and str(broken) in kernels.missing()
        assert "\n" not in kernels.missing()
    finally:
        monkeypatch.undo()
        kernels._load.cache_clear()
    kernels._probe.cache_clear()
    assert kernels.library() is not None


# ---- ortgen.CachedAttention: GroupQueryAttention's interface over an in-place float16 cache ----


def attention_session(
    heads: int, packed: bool, window: int = -1, scale: float = 0.0, layout: int = 0, q8=False
):
    """layout 0: caches [B, H, L, D]; 1: [B, L, H, D] (the tests hold them as [B, H, L, D]
    views either way, see random_caches). q8: CachedAttentionQ8 over int8 records."""
    new = ["qkv", "", ""] if packed else ["q", "k", "v"]
    cache_type = TensorProto.INT8 if q8 else TensorProto.FLOAT16
    node = helper.make_node(
        "CachedAttentionQ8" if q8 else "CachedAttention",
        [*new, "past_key", "past_value", "seqlens_k", "total"],
        ["out", "present_key", "present_value"],
        domain=kernels.DOMAIN,
        num_heads=heads,
        scale=scale,
        local_window_size=window,
        **({"kv_layout": layout} if layout else {}),
    )
    tensor = helper.make_tensor_value_info
    inputs = [tensor(n, TensorProto.FLOAT, None) for n in (["qkv"] if packed else ["q", "k", "v"])]
    inputs += [tensor(n, cache_type, None) for n in ("past_key", "past_value")]
    inputs += [tensor(n, TensorProto.INT32, None) for n in ("seqlens_k", "total")]
    outputs = [tensor("out", TensorProto.FLOAT, None)]
    outputs += [tensor(n, cache_type, None) for n in ("present_key", "present_value")]
    session = native_session(helper.make_graph([node], "attention", inputs, outputs))
    session.kv_layout = layout
    return session


def stored(cache: np.ndarray, layout: int) -> np.ndarray:
    """The session's own layout of a [B, H, L, D] cache (view): contiguous either way."""
    return cache.transpose(0, 2, 1, 3) if layout else cache


def attend(session, qkv, caches, last, packed=True, in_place=True):
    """One run: qkv [B, T, 3HD] appended at positions last − T + 1 … last of each row's cache.
    → output [B, T, HD]; the caches ([B, H, L, D] float16) hold the new keys and values after."""
    binding = session.io_binding()
    binding.bind_output("out", "cpu")
    if packed:
        binding.bind_cpu_input("qkv", qkv)
    else:
        width = qkv.shape[-1] // 3
        for i, name in enumerate("qkv"):
            binding.bind_cpu_input(
                name, np.ascontiguousarray(qkv[..., i * width : (i + 1) * width])
            )
    binding.bind_cpu_input("seqlens_k", np.asarray(last, np.int32))
    binding.bind_cpu_input("total", np.array(max(last) + 1, np.int32))
    for name, cache in zip(("key", "value"), caches, strict=True):
        own = stored(cache, session.kv_layout)
        assert own.flags.c_contiguous  # else onnxruntime would write into a copy
        value = ort.OrtValue.ortvalue_from_numpy(own)
        binding.bind_ortvalue_input(f"past_{name}", value)
        if in_place:
            binding.bind_ortvalue_output(f"present_{name}", value)
        else:
            binding.bind_output(f"present_{name}", "cpu")
    session.run_with_iobinding(binding)
    outputs = [o.numpy() for o in binding.get_outputs()]
    if not in_place:
        for cache, present in zip(caches, outputs[1:], strict=True):
            stored(cache, session.kv_layout)[...] = present
    return outputs[0]


def appended(qkv: np.ndarray, row: int, kind: int, heads: int) -> np.ndarray:
    """Row `row`'s new keys (kind 0) or values (kind 1) in packed qkv [B, T, 3HD], as [H, T, D]."""
    tokens, width = qkv.shape[1], qkv.shape[2] // 3
    part = qkv[row, :, (kind + 1) * width : (kind + 2) * width]
    return part.reshape(tokens, heads, width // heads).transpose(1, 0, 2)


def attention_reference(qkv, caches, last, window, scale):
    """float64 attention of every new token over its row's (float16) cache, the causal window
    ending at its own position."""
    rows, tokens, width = qkv.shape
    _, heads, _, size = caches[0].shape
    out = np.zeros((rows, tokens, width // 3))
    for b, t, h in np.ndindex(rows, tokens, heads):
        position = last[b] - tokens + 1 + t
        lo = max(0, position - window + 1) if window > 0 else 0
        q = qkv[b, t, h * size : (h + 1) * size].astype(np.float64)
        keys, values = (c[b, h, lo : position + 1].astype(np.float64) for c in caches)
        scores = keys @ q * scale
        weights = np.exp(scores - scores.max())
        out[b, t, h * size : (h + 1) * size] = weights @ values / weights.sum()
    return out


def random_caches(rng, rows, heads, positions, size, filled, layout=0):
    """[B, H, L, D] views of float16 caches in `layout`, rows filled up to `filled`"""
    shape = (rows, positions, heads, size) if layout else (rows, heads, positions, size)
    caches = [stored(np.zeros(shape, np.float16), layout) for _ in range(2)]
    for cache in caches:
        for b in range(rows):
            cache[b, :, : filled[b]] = rng.normal(size=(heads, filled[b], size))
    return caches


@pytest.mark.parametrize(
    "heads, size, rows, tokens, window, scale, packed",
    [
        (2, 64, 1, 37, -1, 0.0, True),  # a prompt (GPT-2: scale 1/sqrt(D))
        (3, 64, 3, 1, -1, 0.0, True),  # decode steps of rows of different lengths
        (2, 24, 2, 1, 5, 1.0, False),  # GPT-Neo: local window, no scaling; a 24-wide head
        (4, 8, 1, 19, 6, 0.0, True),  # the window inside a prompt, a head narrower than 16
        (1, 128, 2, 3, -1, 0.3, True),  # a part of a prompt on top of cached tokens
    ],
)
@pytest.mark.parametrize("layout", [0, 1])
def test_cached_attention_computes_attention_over_its_half_precision_cache(
    heads, size, rows, tokens, window, scale, packed, layout
):
    rng = np.random.default_rng(heads * size + tokens)
    filled = rng.integers(0, 30, rows)
    caches = random_caches(rng, rows, heads, 64, size, filled, layout)
    before = [c.copy() for c in caches]
    qkv = (rng.normal(size=(rows, tokens, 3 * heads * size)) * 2).astype(np.float32)
    last = filled + tokens - 1
    session = attention_session(heads, packed, window, scale, layout)
    out = attend(session, qkv, caches, last, packed)
    for b in range(rows):
        new = slice(filled[b], filled[b] + tokens)
        for kind, cache in enumerate(caches):
            fresh = appended(qkv, b, kind, heads)
            assert np.array_equal(cache[b, :, new], fresh.astype(np.float16))
            cache_was = before[kind][b].copy()
            cache_was[:, new] = cache[b, :, new]
            assert np.array_equal(cache[b], cache_was)  # nothing else written
    expected = attention_reference(qkv, caches, last, window, scale or 1 / np.sqrt(size))
    assert np.abs(out - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("window", [-1, 6])
def test_cached_attention_gives_a_token_the_same_bits_however_it_is_run(window, layout):
    """A prompt run whole, in parts, or one token at a time, alone or beside other rows of
    other lengths: every token's output is the same bits (each query is computed alone), in
    either cache layout."""
    heads, size, tokens = 3, 64, 41
    rng = np.random.default_rng(5)
    session = attention_session(heads, packed=True, window=window, layout=layout)
    qkv = rng.normal(size=(1, tokens, 3 * heads * size)).astype(np.float32)
    empty = lambda rows=1: random_caches(rng, rows, heads, 64, size, [0] * rows, layout)  # noqa: E731
    whole = attend(session, qkv, empty(), [tokens - 1])[0]
    if layout:
        assert np.array_equal(
            whole,
            attend(
                attention_session(heads, True, window),
                qkv,
                random_caches(rng, 1, heads, 64, size, [0]),
                [tokens - 1],
            )[0],
        )
    caches, parts = empty(), []
    for start, end in [(0, 16), (16, 17), (17, 22), (22, 40), (40, 41)]:
        parts.append(attend(session, qkv[:, start:end], caches, [end - 1])[0])
    assert np.array_equal(np.concatenate(parts), whole)
    other = rng.normal(size=(1, tokens, 3 * heads * size)).astype(np.float32)
    pair = empty(2)
    for t in range(tokens):  # row 0 this prompt token by token, row 1 another, 7 tokens ahead
        rows = np.concatenate([qkv[:, t : t + 1], other[:, t : t + 1]])
        if t == 0:
            # row 1 alone, contiguous in the session's layout
            row1 = [stored(np.ascontiguousarray(stored(c[1:2], layout)), layout) for c in pair]
            attend(session, other[:, :7], row1, [6])
            for cache, part in zip(pair, row1, strict=True):
                cache[1:2] = part
        stepped = attend(session, rows, pair, [t, min(t + 7, 63)])
        assert np.array_equal(stepped[0, 0], whole[t]), t


def test_cached_attention_without_a_shared_buffer_copies_the_past_first():
    rng = np.random.default_rng(8)
    session = attention_session(2, packed=True)
    qkv = rng.normal(size=(2, 1, 3 * 2 * 16)).astype(np.float32)
    shared = random_caches(rng, 2, 2, 32, 16, [5, 9])
    separate = [c.copy() for c in shared]
    expected = attend(session, qkv, shared, [5, 9])
    assert np.array_equal(attend(session, qkv, separate, [5, 9], in_place=False), expected)
    assert all(np.array_equal(a, b) for a, b in zip(separate, shared, strict=True))


def test_cached_attention_refuses_rows_longer_than_the_cache_and_mismatched_inputs():
    session = attention_session(1, packed=True)
    caches = [np.zeros((1, 1, 8, 16), np.float16) for _ in range(2)]
    qkv = np.ones((1, 2, 48), np.float32)
    with pytest.raises(Exception, match="CachedAttention: a row's length"):
        attend(session, qkv, caches, [8])
    unpacked = attention_session(1, packed=False)
    binding = unpacked.io_binding()
    binding.bind_output("out", "cpu")
    for name, value in [("q", qkv[..., :16]), ("k", qkv[..., 16:32]), ("v", qkv[:, :1, 32:])]:
        binding.bind_cpu_input(name, np.ascontiguousarray(value))  # v: one token, k: two
    binding.bind_cpu_input("seqlens_k", np.array([3], np.int32))
    binding.bind_cpu_input("total", np.array(4, np.int32))
    for name, cache in zip(("key", "value"), caches, strict=True):
        binding.bind_cpu_input(f"past_{name}", cache)
        binding.bind_output(f"present_{name}", "cpu")
    with pytest.raises(Exception, match="CachedAttention: key and value differ in shape"):
        unpacked.run_with_iobinding(binding)


def test_cached_attention_spreads_a_nan_and_reaches_far_positions():
    """A NaN key makes its head's output NaN (not silently a zero weight); a query beyond 4096
    positions is still exact."""
    rng = np.random.default_rng(4)
    session = attention_session(2, packed=True)
    caches = random_caches(rng, 1, 2, 4200, 16, [4150])
    caches[0][0, 1, 77, 3] = np.nan
    qkv = rng.normal(size=(1, 1, 96)).astype(np.float32)
    out = attend(session, qkv, caches, [4150])[0, 0]
    assert np.isnan(out[16:]).all() and np.isfinite(out[:16]).all()
    caches[0][0, 1, 77, 3] = 0
    out = attend(session, qkv, caches, [4150])
    expected = attention_reference(qkv, caches, [4150], -1, 0.25)
    assert np.abs(out - expected).max() < 1e-5


def q8_records(x: np.ndarray) -> np.ndarray:
    """float32 [..., D] → the kernel's int8 records [..., D + 4]: codes round(x × 127 / max|x|)
    (float32 arithmetic, ties to even; 0 where 127 / max|x| overflows), then the float32 scale
    max|x| / 127 (finite vectors; see the infinite-vector test for the rest)."""
    x = x.astype(np.float32)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    inv = np.where(np.isfinite(inv), inv, np.float32(0))
    codes = np.clip(np.rint(x * inv), -128, 127).astype(np.int8)
    scale = (amax / np.float32(127)).astype(np.float32)
    return np.concatenate([codes, scale.view(np.int8)], axis=-1)


def q8_values(records: np.ndarray) -> np.ndarray:
    """int8 records [..., D + 4] → the float64 values they hold (code × scale)."""
    scale = np.ascontiguousarray(records[..., -4:]).view(np.float32)
    return records[..., :-4].astype(np.float64) * scale


def q8_queries(qkv: np.ndarray, heads: int) -> np.ndarray:
    """qkv [B, T, 3HD] with each query (per head) replaced by the values of its int8 record: over
    int8 records the kernel scores quantized queries (exact integer dots, then scaled)."""
    out = qkv.astype(np.float64)
    rows, tokens, width = qkv.shape
    queries = qkv[..., : width // 3].reshape(rows, tokens, heads, -1)
    out[..., : width // 3] = q8_values(q8_records(queries)).reshape(rows, tokens, -1)
    return out


def q8_caches(rng, rows, heads, positions, size, filled, layout=0):
    """[B, H, L, D + 4] views of int8 record caches in `layout`, rows filled up to `filled`"""
    shape = (rows, positions, heads, size + 4) if layout else (rows, heads, positions, size + 4)
    caches = [stored(np.zeros(shape, np.int8), layout) for _ in range(2)]
    for cache in caches:
        for b in range(rows):
            cache[b, :, : filled[b]] = q8_records(rng.normal(size=(heads, filled[b], size)))
    return caches


@pytest.mark.parametrize(
    "heads, size, rows, tokens, window",
    [(2, 64, 1, 37, -1), (3, 64, 3, 1, -1), (2, 24, 2, 1, 5), (4, 8, 1, 19, 6)],
)
@pytest.mark.parametrize("layout", [0, 1])
def test_q8_cached_attention_stores_int8_records_and_attends_over_them(
    heads, size, rows, tokens, window, layout
):
    """New keys and values become int8 records exactly as q8_records makes them; every query,
    quantized the same way, attends over the values its row's records hold (a float64
    reference). Either layout: [B, H, L, D + 4] (what exports write) or [B, L, H, D + 4] (exports
    of 2026-12-04)."""
    rng = np.random.default_rng(heads * size + tokens)
    filled = rng.integers(0, 30, rows)
    caches = q8_caches(rng, rows, heads, 64, size, filled, layout)
    before = [c.copy() for c in caches]
    qkv = (rng.normal(size=(rows, tokens, 3 * heads * size)) * 2).astype(np.float32)
    last = filled + tokens - 1
    session = attention_session(heads, True, window, 0.0, layout=layout, q8=True)
    out = attend(session, qkv, caches, last)
    for b in range(rows):
        new = slice(filled[b], filled[b] + tokens)
        for kind, cache in enumerate(caches):
            assert np.array_equal(cache[b, :, new], q8_records(appended(qkv, b, kind, heads)))
            cache_was = before[kind][b].copy()
            cache_was[:, new] = cache[b, :, new]
            assert np.array_equal(cache[b], cache_was)  # nothing else written
    held = [q8_values(c) for c in caches]
    expected = attention_reference(q8_queries(qkv, heads), held, last, window, 1 / np.sqrt(size))
    assert np.abs(out - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize(
    "size, window, tokens",
    [
        (64, -1, 41),
        (24, -1, 41),
        (8, 5, 41),
        (48, 30, 41),
        (128, 6, 41),
        (16, -1, 41),
        (48, -1, 41),
        (32, 40, 90),
        (64, 33, 90),
    ],
)
def test_q8_cached_attention_gives_a_token_the_same_bits_however_it_is_run(
    layout, size, window, tokens
):
    """As the float16 cache does: a prompt whole, in parts, or token by token beside another
    row gives every token the same bits, in either layout (the same bits in both), for head
    sizes that take 1 to 8 chunks of 16 (queries go in fours, pairs or alone) and within a
    local window. Runs of 8 queries or more read records converted to floats first, shorter
    ones the int8 records; four queries of 1-4 whole chunks read the keys turned, also where
    their windows of 32 keys or more have moved apart (windows of 40 and 33 over 90 tokens: the
    last part starts past the window, and the fours' first keys pass 16): the same bits."""
    heads, positions = 3, max(64, tokens)
    rng = np.random.default_rng(6)
    session = attention_session(heads, packed=True, window=window, layout=layout, q8=True)
    qkv = rng.normal(size=(1, tokens, 3 * heads * size)).astype(np.float32)
    fresh = q8_caches(rng, 1, heads, positions, size, [0], layout)
    whole = attend(session, qkv, fresh, [tokens - 1])[0]
    other_layout = attention_session(heads, True, window=window, layout=1 - layout, q8=True)
    empty = q8_caches(rng, 1, heads, positions, size, [0], 1 - layout)
    assert np.array_equal(attend(other_layout, qkv, empty, [tokens - 1])[0], whole)
    caches, parts = q8_caches(rng, 1, heads, positions, size, [0], layout), []
    for start, end in [(0, 16), (16, 17), (17, 22), (22, 40), (40, tokens)]:
        parts.append(attend(session, qkv[:, start:end], caches, [end - 1])[0])
    assert np.array_equal(np.concatenate(parts), whole)
    other = rng.normal(size=(1, tokens, 3 * heads * size)).astype(np.float32)
    pair = q8_caches(rng, 2, heads, positions, size, [0, 0], layout)
    for t in range(tokens):  # row 1 another prompt, one token apart
        rows = np.concatenate([qkv[:, t : t + 1], other[:, t : t + 1]])
        assert np.array_equal(attend(session, rows, pair, [t, t])[0, 0], whole[t]), t


def test_q8_cached_attention_turns_a_nan_key_into_nan_outputs_of_its_head():
    rng = np.random.default_rng(9)
    session = attention_session(2, packed=True, q8=True)
    caches = q8_caches(rng, 1, 2, 32, 16, [5])
    qkv = rng.normal(size=(1, 1, 96)).astype(np.float32)
    qkv[0, 0, 32 + 16 + 3] = np.nan  # head 1's new key
    out = attend(session, qkv, caches, [5])[0, 0]
    assert np.isnan(out[16:]).all() and np.isfinite(out[:16]).all()


def test_q8_records_of_infinite_or_vanishing_vectors_hold_codes_0():
    """An infinite key (or query) gives its record codes 0 and a NaN scale: its head's outputs
    are NaN, the other head's finite; a key whose largest value is so small (1e-38) that 127 over
    it overflows gets codes 0 (not the saturated −128 an infinite ratio would make)."""
    rng = np.random.default_rng(10)
    session = attention_session(2, packed=True, q8=True)
    caches = q8_caches(rng, 1, 2, 32, 16, [5])
    qkv = rng.normal(size=(1, 1, 96)).astype(np.float32)
    qkv[0, 0, 32 + 2] = np.inf  # head 0's new key
    qkv[0, 0, 32 + 16 : 32 + 32] = 1e-38  # head 1's new key
    out = attend(session, qkv, caches, [5])[0, 0]
    key = caches[0][0, :, 5]  # [H, D + 4]
    assert (key[:, :16] == 0).all()
    scales = np.ascontiguousarray(key[:, 16:]).view(np.float32)[:, 0]
    assert np.isnan(scales[0]) and 0 < scales[1] < 1e-38
    assert np.isnan(out[:16]).all() and np.isfinite(out[16:]).all()
    caches = q8_caches(rng, 1, 2, 32, 16, [5])
    qkv = rng.normal(size=(1, 1, 96)).astype(np.float32)
    qkv[0, 0, 16 + 3] = -np.inf  # head 1's query
    out = attend(session, qkv, caches, [5])[0, 0]
    assert np.isfinite(out[:16]).all() and np.isnan(out[16:]).all()


# ---- ortgen.SkipNorm: SkipLayerNormalization's interface, one row at a time ----


def norm_session(width: int, bias: bool, sum_output: bool = True, eps: float = 1e-5):
    rng = np.random.default_rng(width)
    names = ["gamma", "beta", *(["bias"] if bias else [])]
    weights = {n: rng.normal(size=width).astype(np.float32) for n in names}
    node = helper.make_node(
        "SkipNorm",
        ["x", "skip", *names],
        ["y", *(["sum"] if sum_output else [])],
        domain=kernels.DOMAIN,
        epsilon=eps,
    )
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node],
        "norm",
        [tensor(n, TensorProto.FLOAT, None) for n in ("x", "skip")],
        [tensor(n, TensorProto.FLOAT, None) for n in ["y", *(["sum"] if sum_output else [])]],
        [numpy_helper.from_array(v, n) for n, v in weights.items()],
    )
    return native_session(graph), weights


@pytest.mark.parametrize("width", [768, 100, 16, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_skip_norm_is_the_layer_norm_of_the_residual_sum(width, bias):
    session, w = norm_session(width, bias)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3, 4, width)) * 3 + 1).astype(np.float32)
    skip = rng.normal(size=(3, 4, width)).astype(np.float32)
    y, total = session.run(None, {"x": x, "skip": skip})
    want_sum = (x + skip) + w["bias"] if bias else x + skip  # float32, in this order
    assert np.array_equal(total, want_sum)
    s = want_sum.astype(np.float64)
    normed = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-5)
    want = normed * w["gamma"] + w["beta"]
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    without, _ = norm_session(width, bias, sum_output=False)
    assert np.array_equal(without.run(None, {"x": x, "skip": skip})[0], y)


def test_skip_norm_gives_a_row_the_same_bits_whatever_runs_beside_it():
    """Few rows run on the caller's thread, many are split over the threads."""
    session, _ = norm_session(768, True)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(300, 768)) * rng.uniform(0.1, 10, size=(300, 1))).astype(np.float32)
    skip = rng.normal(size=(300, 768)).astype(np.float32)
    x[7, 3] = np.nan
    alone = [session.run(None, {"x": x[i : i + 1], "skip": skip[i : i + 1]}) for i in (0, 7, 299)]
    together = session.run(None, {"x": x, "skip": skip})
    for (y, total), i in zip(alone, (0, 7, 299), strict=True):
        assert np.array_equal(together[0][i], y[0], equal_nan=True)
        assert np.array_equal(together[1][i], total[0], equal_nan=True)
    assert np.isnan(together[0][7]).all() and np.isfinite(together[0][np.arange(300) != 7]).all()


def test_skip_norm_refuses_mismatched_inputs():
    session, _ = norm_session(16, True)
    with pytest.raises(Exception, match="SkipNorm: input and skip differ in shape"):
        session.run(None, {"x": np.ones((2, 16), np.float32), "skip": np.ones((1, 16), np.float32)})
    with pytest.raises(Exception, match="gamma, beta and bias must each hold"):
        session.run(None, {"x": np.ones((2, 8), np.float32), "skip": np.ones((2, 8), np.float32)})


# ---- Q8MatMul with attribute epsilon: a SkipNorm folded in front ----


def norm_then_matmul(k: int, n: int, bits: int, norm_bias: bool, sum_output: bool, fused: bool):
    """SkipNorm → Q8MatMul (with bias and GELU) as two nodes, or as the one node the export
    folds them into: the same weights either way."""
    rng = np.random.default_rng(k + bits)
    data, scales, _ = packed(rng.normal(size=(n, k)).astype(np.float32), bits)
    names = ["gamma", "beta", *(["nbias"] if norm_bias else [])]
    weights = {nm: rng.normal(size=k).astype(np.float32) for nm in names}
    weights |= {"B": data, "S": scales, "bias": rng.normal(size=n).astype(np.float32)}
    sums = ["sum"] if sum_output else []
    q8 = dict(domain=kernels.DOMAIN, K=k, N=n, activation=1, **({"bits": 4} if bits == 4 else {}))
    if fused:
        inputs = ["x", "B", "S", "bias", "skip", *names]
        nodes = [helper.make_node("Q8MatMul", inputs, ["Y", *sums], epsilon=1e-5, **q8)]
    else:
        nodes = [
            helper.make_node(
                "SkipNorm", ["x", "skip", *names], ["h", *sums], domain=kernels.DOMAIN, epsilon=1e-5
            ),
            helper.make_node("Q8MatMul", ["h", "B", "S", "bias"], ["Y"], **q8),
        ]
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "norm-q8",
        [tensor(nm, TensorProto.FLOAT, None) for nm in ("x", "skip")],
        [tensor(nm, TensorProto.FLOAT, None) for nm in ["Y", *sums]],
        [numpy_helper.from_array(v, nm) for nm, v in weights.items()],
    )
    return native_session(graph)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("norm_bias, sum_output", [(True, True), (False, False), (True, False)])
def test_a_folded_skip_norm_gives_the_bits_of_the_two_nodes(bits, norm_bias, sum_output):
    """Rows 1 and 3 (one column at a time), 70 (16-column groups, rows quantized on the threads):
    the folded node's product and residual sum are the two nodes', bit for bit, a NaN row's
    included, and a row's bits do not depend on the rows beside it."""
    k, n = 200, 70
    apart = norm_then_matmul(k, n, bits, norm_bias, sum_output, fused=False)
    folded = norm_then_matmul(k, n, bits, norm_bias, sum_output, fused=True)
    rng = np.random.default_rng(bits)
    for m in (1, 3, 70):
        feed = {
            "x": (rng.normal(size=(1, m, k)) * rng.uniform(0.1, 5, size=(1, m, 1))).astype(
                np.float32
            ),
            "skip": rng.normal(size=(1, m, k)).astype(np.float32),
        }
        feed["x"][0, 0, 5] = np.nan
        want, got = apart.run(None, feed), folded.run(None, feed)
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(want, got, strict=True))
        assert np.isnan(got[0][0, 0]).all() and np.isfinite(got[0][0, 1:]).all()
        alone = folded.run(None, {name: v[:, -1:] for name, v in feed.items()})
        assert np.array_equal(alone[0][0, 0], got[0][0, -1], equal_nan=True)


def test_a_folded_skip_norm_refuses_what_skip_norm_refuses():
    folded = norm_then_matmul(64, 16, 8, True, True, fused=True)
    with pytest.raises(Exception, match="Q8MatMul: A and skip differ in shape"):
        folded.run(None, {"x": np.ones((2, 64), np.float32), "skip": np.ones((1, 64), np.float32)})
    data, scales = pack_rows(np.ones((8, 64), np.float32), 8, 64)
    node = helper.make_node(
        "Q8MatMul", ["A", "B", "S", "", "A"], ["Y"], domain=kernels.DOMAIN, K=64, N=8
    )
    graph = helper.make_graph(
        [node],
        "no-epsilon",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(data, "B"), numpy_helper.from_array(scales, "S")],
    )
    with pytest.raises(Exception, match="need attribute epsilon"):
        native_session(graph).run(None, {"A": np.ones((1, 64), np.float32)})
