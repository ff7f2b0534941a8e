"""ortgen's own int8 kernel (`ortgen.Q8MatMul`, native/): it is built wherever the CPU can run it,
computes what the packed weights mean (within the activations' int8 rounding, as MatMulNBits
does), and gives every row the same bits whatever rows run beside it and whichever path (few rows
or many) computes it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from cpu import runs_native_kernels
from onnx import TensorProto, helper, numpy_helper

from ortgen import kernels
from ortgen_export.quantize import pack_rows

pytestmark = pytest.mark.skipif(
    not runs_native_kernels(), reason="this CPU lacks AVX-512 VNNI (ortgen's native kernels)"
)


def test_kernels_are_built_where_the_cpu_runs_them():
    assert kernels.library() is not None, kernels.missing()


def q8_session(data: np.ndarray, scales: np.ndarray, bias: np.ndarray | None, k: int):
    n = data.shape[0]
    inputs = ["A", "B", "S", *(["bias"] if bias is not None else [])]
    node = helper.make_node("Q8MatMul", inputs, ["Y"], domain=kernels.DOMAIN, K=k, N=n)
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
    model = helper.make_model(
        graph,
        ir_version=10,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(kernels.DOMAIN, 1)],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(kernels.library())
    return ort.InferenceSession(model.SerializeToString(), options)


def rounding_bound(a: np.ndarray, rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """|kernel − a · Wᵀ| can reach Σ over blocks of (a's block step / 2) · Σ |w| in the block:
    activations are int8 per row and block of 64 (step max |a| / 127), weights exact as packed."""
    m, k = a.shape
    width = scales.shape[1] * 64
    padded_a = np.zeros((m, width), np.float64)
    padded_a[:, :k] = a
    padded_w = np.zeros((rows.shape[0], width), np.float64)
    padded_w[:, :k] = np.abs(rows)
    step = np.abs(padded_a.reshape(m, -1, 64)).max(-1) / 127  # [M, KB]
    weight = padded_w.reshape(rows.shape[0], -1, 64).sum(-1)  # [N, KB]
    return step @ weight.T / 2 + 1e-4  # [M, N]


# K = 100 and 320: 2 and 5 blocks, so the few-rows path's last group of 4 blocks is partial;
# N = 600: 38 column groups, split over the threads
@pytest.mark.parametrize("k, n", [(64, 37), (100, 20), (200, 100), (320, 50), (768, 600)])
@pytest.mark.parametrize("m", [1, 2, 3, 9])  # 1–3 rows: one column at a time; 9: 16-column groups
def test_q8matmul_computes_the_packed_weights(k, n, m):
    rng = np.random.default_rng(k)
    data, scales = pack_rows(rng.normal(size=(n, k)).astype(np.float32), 8, 64)
    restored = ((data.astype(np.float32) - 128) * scales[..., None]).reshape(n, -1)[:, :k]
    bias = rng.normal(size=n).astype(np.float32)
    a = rng.normal(size=(m, k)).astype(np.float32)
    plain = q8_session(data, scales, None, k).run(None, {"A": a})[0]
    exact = a.astype(np.float64) @ restored.T.astype(np.float64)
    assert (np.abs(plain - exact) <= rounding_bound(a, restored, scales)).all()
    assert np.abs(plain - exact).max() > 0  # the activations really are int8
    with_bias = q8_session(data, scales, bias, k).run(None, {"A": a})[0]
    assert np.array_equal(with_bias, plain + bias)


@pytest.mark.parametrize("m", [1, 5])
def test_a_nan_input_gives_nan_outputs_in_its_row_only(m):
    """A NaN must not vanish in the activations' int8 rounding (max() drops NaNs)."""
    rng = np.random.default_rng(3)
    data, scales = pack_rows(rng.normal(size=(40, 130)).astype(np.float32), 8, 64)
    session = q8_session(data, scales, None, 130)
    a = rng.normal(size=(m, 130)).astype(np.float32)
    a[0, 70] = np.nan
    y = session.run(None, {"A": a})[0]
    assert np.isnan(y[0]).all()
    assert np.isfinite(y[1:]).all()


@pytest.mark.parametrize("k, n", [(200, 37), (320, 50), (768, 600)])
def test_a_row_gets_the_same_bits_whatever_runs_beside_it(k, n):
    """Few rows (one column at a time) and many (16-column groups, 64-row blocks, split across
    threads) are different paths: every row still comes out bit for bit as it does alone."""
    rng = np.random.default_rng(n)
    data, scales = pack_rows(rng.normal(size=(n, k)).astype(np.float32), 8, 64)
    session = q8_session(data, scales, rng.normal(size=n).astype(np.float32), k)
    a = (rng.normal(size=(70, k)) * rng.uniform(0.1, 10, size=(70, 1))).astype(np.float32)
    alone = {i: session.run(None, {"A": a[i : i + 1]})[0][0] for i in (0, 1, 2, 3, 16, 64, 69)}
    for rows in (2, 3, 4, 5, 17, 65, 70):
        batch = session.run(None, {"A": a[:rows]})[0]
        for i in [i for i in alone if i < rows]:
            assert np.array_equal(batch[i], alone[i]), (rows, i)
    shaped = session.run(None, {"A": a[:6].reshape(2, 3, k)})[0]  # [B, T, K] inputs too
    assert np.array_equal(shaped.reshape(6, n)[0], alone[0])


def test_wrong_shapes_fail_with_a_message_instead_of_reading_past_the_weights():
    data, scales = pack_rows(np.ones((8, 64), np.float32), 8, 64)
    session = q8_session(data, scales, None, 64)
    with pytest.raises(Exception, match="last dimension of A is not the node's K"):
        session.run(None, {"A": np.ones((1, 32), np.float32)})
    short = q8_session(data[:4], scales, None, 64)  # N = 4 in the node, 8 rows of scales
    with pytest.raises(Exception, match="Q8MatMul: scales are not N x K/64"):
        short.run(None, {"A": np.ones((1, 64), np.float32)})


def test_a_library_that_does_not_load_is_reported_as_such(monkeypatch, tmp_path):
    """Not as a CPU without VNNI: the message names the file and says to reinstall."""
    broken = tmp_path / "_kernels.so"
    broken.write_bytes(b"not a shared library")
    spec = type("Spec", (), {"origin": str(broken)})()
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: spec)
    kernels._probe.cache_clear()
    try:
        assert kernels.library() is None
        assert "does not load" in kernels.missing() and str(broken) in kernels.missing()
        assert "\n" not in kernels.missing()
    finally:
        monkeypatch.undo()
        kernels._probe.cache_clear()
    assert kernels.library() is not None
