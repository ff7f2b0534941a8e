"""The native graph's weights read into huge pages ortgen holds (ortgen/weights.py): the reader
finds what onnx finds, the bytes are the file's, the numbers are the page cache's, and a damaged
graph file is one clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from checkpoints import QUANTIZED
from cpu import runs_native_kernels
from onnx.external_data_helper import ExternalDataInfo

from ortgen import Generator
from ortgen.batch import BatchJob, _worker_args
from ortgen.decode_state import DecodeState
from ortgen.errors import ModelFolderError
from ortgen.manifest import read_manifest
from ortgen.weights import HUGE_PAGE, external_initializers

pytestmark = pytest.mark.skipif(
    not runs_native_kernels(), reason="this CPU runs no native build (no native graph)"
)


def native_graph(folder):
    return folder / read_manifest(folder).inplace["native_file"]


@pytest.mark.parametrize("precision", QUANTIZED)
def test_the_reader_finds_the_external_initializers_onnx_finds(arch, quantized, precision):
    graph = native_graph(quantized[arch, precision])
    proto = onnx.load(str(graph), load_external_data=False).graph
    expected = {}
    for tensor in proto.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = ExternalDataInfo(tensor)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            expected[tensor.name] = (dtype, tuple(tensor.dims), info.location, info.offset)
    found = {t.name: (t.dtype, t.dims, t.location, t.offset) for t in external_initializers(graph)}
    assert found == expected and len(found) > 10


@pytest.mark.parametrize("precision", QUANTIZED)
def test_huge_page_weights_hold_the_files_bytes_and_give_the_same_logits(
    arch, quantized, precision
):
    """Generators with and without the huge-page block: the block's tensors are the file's bytes
    at the graph's offsets, aligned as weights.py says, and every logit is the same bit."""
    folder = quantized[arch, precision]
    held = Generator.from_dir(folder)
    mapped = Generator.from_dir(folder, huge_pages=False)
    assert mapped.model.session.ortgen_initializers is None
    values = dict(held.model.session.ortgen_initializers)
    tensors = external_initializers(native_graph(folder))
    assert sorted(values) == sorted(t.name for t in tensors)
    pointers = []
    for tensor in tensors:
        array = values[tensor.name].numpy()
        stored = np.fromfile(
            folder / tensor.location, np.uint8, count=tensor.length, offset=tensor.offset
        )
        assert array.shape == tensor.dims and array.dtype == tensor.dtype
        assert np.array_equal(array.reshape(-1).view(np.uint8), stored), tensor.name
        pointers.append(values[tensor.name].data_ptr())
    assert min(pointers) % HUGE_PAGE == 0 and all(p % 64 == 0 for p in pointers)
    runs = []
    for generator in (held, mapped):
        state = DecodeState.for_model(generator.model)
        logits = [state.prefill([[5, 9, 2, 7, 1, 3], [4, 8]])]
        runs.append(logits + [state.step(np.array([11, 12])) for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_a_damaged_graph_file_is_one_clear_error(quantized, tmp_path):
    graph = native_graph(quantized["gpt2", "int8"])
    damaged = tmp_path / "graph.onnx"
    damaged.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match="cannot read .*: re-export the model folder"):
        external_initializers(damaged)


def test_several_batch_workers_share_the_folders_pages(tmp_path):
    """Worker processes on one machine each reading their own copy would hold it N times."""
    job = dict(input=tmp_path / "in.jsonl", output=tmp_path / "out")
    assert _worker_args(BatchJob(**job))["huge_pages"]
    assert not _worker_args(BatchJob(**job, actors=2))["huge_pages"]
