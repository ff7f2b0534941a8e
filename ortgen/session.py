"""ONNX Runtime sessions: the only module that knows about execution providers and threads."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ortgen.errors import (
    DeviceError,
    InvalidOptionError,
    ModelFolderError,
    OrtgenError,
    first_line,
)
from ortgen.folder import check_session
from ortgen.manifest import MIN_ONNXRUNTIME
from ortgen.weights import load_initializers

if TYPE_CHECKING:
    import onnxruntime as ort

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
THREADS_PER_CORE = 4  # beyond this many threads per core ORT only slows down (or fails to start)


def max_threads() -> int:
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def import_onnxruntime():
    """onnxruntime comes through an extra; say which one when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise OrtgenError(
            "onnxruntime is not installed: pip install 'ortgen[cpu]' (or 'ortgen[cuda]' for GPUs)"
        ) from None
    return onnxruntime


def require_onnxruntime(ort, minimum: str = MIN_ONNXRUNTIME) -> None:
    """Refuse an onnxruntime older than `minimum`: older ones fail on or silently miscompute
    ortgen's graphs (manifest.MIN_ONNXRUNTIME says which)."""
    if _release(ort.__version__) < _release(minimum):
        raise OrtgenError(
            f"onnxruntime {ort.__version__} is too old: ortgen's models need onnxruntime >= "
            f"{minimum}; pip install -U 'ortgen[cpu]' (or 'ortgen[cuda]')"
        )


def _preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries of pip's nvidia-* packages (onnxruntime-gpu's `cuda` and
    `cudnn` extras, or those PyTorch brought) where the system's library path lacks them;
    without them the CUDA provider fails to load. Quiet: it prints where it finds none."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is None:
        return
    # none there: the system's libraries, or create_session's one-line error
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(OSError):
        preload()


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as 1.23.2 or 1.24.0.dev20250101."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# Constant folding would turn the Reshape that views a quantized folder's tied embedding table
# as the gather's [vocab, hidden] into a second, resident copy of it (38 MB for gpt2 int8): the
# export folded everything else already, and a Reshape of a weight costs nothing at run time.
UNFOLDED = ["ConstantFolding"]


# A bound on busy-waiting that covers the gaps between one run's kernels (a decode step's
# longest, its attention late in a long context, is ~60 µs) and not the caller's own work between
# runs: `ortgen serve`'s default. A thread that sleeps at once pays a wake-up per kernel: gpt2
# int8 decode steps 4.2-4.9 ms against 3.8-4.6 spinning without bound and 3.3-4.6 with this one
# (3 interleaved rounds, past 16 and 512).
SHORT_SPIN_US = 100
BOUNDED_SPIN = (1, 27)  # the onnxruntime that reads session.intra_op.spin_duration_us


def session_options(threads: int | None, spin: bool | int = True) -> ort.SessionOptions:
    """`spin`: True, idle pool threads busy-wait for the next kernel (ONNX Runtime's default,
    lowest latency on an idle machine, but they go on spinning long after a run); False, they
    sleep at once — kindest to other processes on busy cores; a number, they busy-wait that many
    µs, then sleep (before onnxruntime 1.27, which cannot bound it: they sleep at once)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if not isinstance(spin, bool) and (not isinstance(spin, int) or spin < 0):
        raise InvalidOptionError(f"spin must be True, False or a number of µs ≥ 0, got {spin!r}")
    bounded = spin is not True and spin and _release(ort.__version__) >= BOUNDED_SPIN
    if spin is not True:  # ONNX Runtime's default spins without bound
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if bounded else "0")
    if bounded:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    if threads is not None:
        if not 1 <= threads <= max_threads():
            raise InvalidOptionError(
                f"threads must be between 1 and {max_threads()} ({THREADS_PER_CORE} × the "
                f"{os.cpu_count()} CPU cores), got {threads}"
            )
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def create_session(
    model_path: Path,
    device: str = "cpu",
    threads: int | None = None,
    min_onnxruntime: str = MIN_ONNXRUNTIME,
    spin: bool | int = True,
    custom_ops: str | None = None,
    huge_pages: bool = False,
):
    """An InferenceSession on `device`, verified to really run there (ORT silently falls back);
    `min_onnxruntime` is the folder's manifest value; `custom_ops`: a custom-op library the
    graph's nodes need (kernels.library()); `huge_pages`: read the graph's external weights into
    huge pages ortgen holds (weights.py; for graphs whose kernels read weights as stored, on
    CPU)."""
    ort = import_onnxruntime()
    require_onnxruntime(ort, max(min_onnxruntime, MIN_ONNXRUNTIME, key=_release))
    if device not in DEVICES:
        raise InvalidOptionError(f"unknown device {device!r}: choose one of {sorted(DEVICES)}")
    wanted = DEVICES[device][0]
    if device == "cuda":
        _preload_cuda_libraries(ort)
    if wanted not in ort.get_available_providers():
        raise DeviceError(
            f"{device} was requested but this onnxruntime has no {wanted}: "
            + (
                "pip uninstall onnxruntime && pip install 'ortgen[cuda]'"
                if device == "cuda"
                else "reinstall with pip install 'ortgen[cpu]'"
            )
        )
    if not Path(model_path).is_file():
        raise ModelFolderError(f"{model_path} is missing: re-export the model folder")
    options = session_options(threads, spin)
    if custom_ops:
        try:
            options.register_custom_ops_library(custom_ops)
        except Exception as err:  # ORT raises untyped errors
            raise ModelFolderError(
                f"onnxruntime cannot register ortgen's native kernels ({first_line(err)}): "
                "reinstall ortgen, or set ORTGEN_NATIVE=0"
            ) from None
    initializers = load_initializers(Path(model_path), ort) if huge_pages else None
    for name, value in initializers or ():
        options.add_initializer(name, value)
    try:
        session = ort.InferenceSession(
            str(model_path), options, providers=DEVICES[device], disabled_optimizers=UNFOLDED
        )
    except Exception as err:  # ORT raises its own untyped errors for unreadable graphs
        raise ModelFolderError(
            f"cannot load {model_path}: {first_line(err)}; re-export it"
        ) from None
    session.ortgen_initializers = initializers  # ORT reads them in place: they live as it does
    check_session(model_path, session)  # the graph's inputs and outputs are the manifest's
    if session.get_providers()[0] != wanted:
        raise DeviceError(
            f"onnxruntime fell back from {wanted} to {session.get_providers()[0]}: check the CUDA "
            "and cuDNN libraries onnxruntime-gpu needs, or use --device cpu"
        )
    return session
