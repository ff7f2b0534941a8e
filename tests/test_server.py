"""`ortgen serve` as users run it: the real server in a subprocess on a free localhost port, spoken
to with the official `openai` client and with httpx — completions plain and streamed, n > 1, stop
strings, seeds, 400s, 429 with Retry-After, a disconnect freeing its row, SIGTERM → exit 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from test_engine import build_long_model

from ortgen import Generator

ORTGEN = Path(sys.executable).parent / "ortgen"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(condition, what: str, tries: int = 600) -> None:
    """Bounded polling: the server acts on its own schedule."""
    pause = threading.Event()
    for _ in range(tries):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    def __init__(self, folder: Path, *flags: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        command = [str(ORTGEN), "serve", "--model", str(folder), "--port", port, "--threads", "1"]
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the server)
        self.process = subprocess.Popen(
            [*command, *flags], stdout=subprocess.DEVNULL, stderr=self.log, text=True
        )
        poll(self.healthy, "/health = 200")
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.openai = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            self.log.seek(0)
            raise AssertionError(f"the server exited: {self.log.read()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, line_start: str) -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.process.kill()


@pytest.fixture(scope="module")
def server(exported):
    # ONNX Runtime's idle threads sleep (the default: the cores are shared with the test process)
    server = Server(exported["gpt2"], "--max-batch", "4", "--max-queue", "32")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def reference(exported) -> Generator:
    return Generator.from_dir(exported["gpt2"], threads=1)


GREEDY = dict(max_tokens=12, temperature=0)
# What /v1/completions sets where a request says nothing (OpenAI's meaning, not the folder's)
OPENAI_DEFAULTS = dict(do_sample=False, repetition_penalty=1.0, min_new_tokens=0)


def spin_bound(service) -> float:
    """How long the service's ONNX Runtime session lets an idle pool thread busy-wait for the
    next kernel, in µs: 0 (it sleeps at once), a bound, or inf (ONNX Runtime's default)."""
    service.load()
    if service.load_error is not None:
        raise service.load_error
    options = service.engine.generator.model.session.get_session_options()

    def entry(key: str) -> str | None:
        try:
            return options.get_session_config_entry(f"session.intra_op.{key}")
        except RuntimeError:  # not set
            return None

    try:
        if entry("allow_spinning") == "0":
            return 0.0
        bound = entry("spin_duration_us")
        return float(bound) if bound is not None else float("inf")
    finally:
        service.engine.close()


def test_served_model_threads_sleep_when_idle_unless_told_to_spin(exported):
    """`ortgen serve` shares the cores with its own HTTP and streaming threads: by default ONNX
    Runtime's idle threads busy-wait only through one step's gaps between kernels, then sleep
    instead of spinning on after the step (--spin and --no-spin to choose either)."""
    import inspect

    import onnxruntime

    from ortgen.cli.commands import serve
    from ortgen.engine import EngineLimits
    from ortgen.server import Service
    from ortgen.session import BOUNDED_SPIN, SHORT_SPIN_US, _release

    assert inspect.signature(serve).parameters["spin"].default is None  # the CLI's: bounded
    bounded = _release(onnxruntime.__version__) >= BOUNDED_SPIN
    expected = SHORT_SPIN_US if bounded else 0
    assert spin_bound(Service(exported["gpt2"], EngineLimits(), 1)) == expected <= 1000
    assert spin_bound(Service(exported["gpt2"], EngineLimits(), 1, spin=True)) == float("inf")
    assert spin_bound(Service(exported["gpt2"], EngineLimits(), 1, spin=False)) == 0


def test_serving_on_a_device_that_is_absent_is_one_clear_error(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is present: the refusal cannot be observed")
    command = [str(ORTGEN), "serve", "--model", str(exported["gpt2"]), "--device", "cuda"]
    result = subprocess.run(
        [*command, "--port", str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "CUDAExecutionProvider" in last


@pytest.mark.cuda
def test_serves_fp16_on_cuda_as_the_generator_runs_it(checkpoints, tmp_path):
    """`ortgen serve --device cuda` on an fp16 folder: a completion, plain and streamed, equals
    what a CUDA Generator makes of its prompt; concurrent ones all complete."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider on this machine")
    from ortgen_export import ExportOptions, export_model

    folder = tmp_path / "fp16"
    export_model(str(checkpoints["gpt2"]), folder, ExportOptions(precision="fp16"))
    reference = Generator.from_dir(folder, device="cuda")
    server = Server(folder, "--device", "cuda", "--max-batch", "4")
    try:
        prompts = ["The old fisherman", "A small child", "The sea was calm", "Once"]
        want = [reference.generate(p, max_new_tokens=12, **OPENAI_DEFAULTS) for p in prompts]
        plain = server.openai.completions.create(model="m", prompt=prompts[0], **GREEDY)
        assert plain.choices[0].text == want[0]
        chunks = server.openai.completions.create(
            model="m", prompt=prompts[1], stream=True, **GREEDY
        )
        assert "".join(c.choices[0].text for c in chunks) == want[1]
        # at once: every request completes; on CUDA a row's last bits may differ with its
        # neighbours (left-padded batch, kernels chosen by shape), so tokens are not compared
        create = server.openai.completions.create
        with ThreadPoolExecutor(len(prompts)) as pool:
            done = list(pool.map(lambda p: create(model="m", prompt=p, **GREEDY), prompts))
        assert [c.usage.completion_tokens for c in done] == [12] * len(prompts)
    finally:
        assert server.stop() == 0


def test_completion_plain_and_streamed_equal_the_generator(server, reference):
    prompt = "The old fisherman"
    want = reference.generate(prompt, max_new_tokens=12, **OPENAI_DEFAULTS)
    plain = server.openai.completions.create(model="m", prompt=prompt, **GREEDY)
    assert plain.choices[0].text == want
    assert plain.usage.prompt_tokens == len(reference.encode(prompt))
    assert plain.usage.completion_tokens == 12
    assert plain.choices[0].finish_reason == "length"
    chunks = server.openai.completions.create(model="m", prompt=prompt, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in chunks) == want
    raw = server.http.post(
        "/v1/completions", json={"model": "m", "prompt": prompt, "stream": True, **GREEDY}
    )
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_n_seeds_stop_and_echo(server):
    create = server.openai.completions.create
    args = dict(model="m", prompt=["The old fisherman", "A small child"], max_tokens=8, seed=5)
    first = create(n=3, **args)
    assert sorted(c.index for c in first.choices) == list(range(6))
    again = create(n=3, **args)
    assert [c.text for c in again.choices] == [c.text for c in first.choices]
    greedy = create(model="m", prompt="The old fisherman", **GREEDY).choices[0].text
    stop = greedy.split()[1]
    stopped = create(model="m", prompt="The old fisherman", stop=[stop], **GREEDY).choices[0]
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    echoed = create(model="m", prompt="The old fisherman", echo=True, **GREEDY).choices[0]
    assert echoed.text == "The old fisherman" + greedy


@pytest.mark.parametrize(
    "fields",
    [
        {"bogus": 1},
        {"max_tokens": "ten"},
        {"max_tokens": 0},
        {"temperature": -1},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.1},
        {"logprobs": 2},
        {"n": 2, "temperature": 0},
        {"prompt": [[1, 10**9]]},
        {"prompt": ""},
        {"max_tokens": 10_000},
    ],
)
def test_invalid_fields_are_400_with_an_openai_error(server, fields):
    body = {"model": "m", "prompt": "The old fisherman"} | fields
    response = server.http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        extra = {k: v for k, v in fields.items() if k != "prompt"}
        prompt = fields.get("prompt", "The old fisherman")
        server.openai.completions.create(model="m", prompt=prompt, extra_body=extra)


def test_generate_models_health_metrics(server, reference):
    parameters = {"max_new_tokens": 6, "do_sample": False}
    response = server.http.post(
        "/generate", json={"inputs": "A small child", "parameters": parameters}
    )
    want = reference.generate("A small child", **parameters)
    assert response.json() == [{"generated_text": "A small child" + want}]
    bad = server.http.post("/generate", json={"inputs": "x", "parameters": {"beams": 2}})
    assert bad.status_code == 400
    assert server.openai.models.list().data[0].id == Path(reference.model.folder).name
    assert server.http.get("/health").json() == {"status": "ok"}
    metrics = server.http.get("/metrics").text
    for name in ("ortgen_requests_total", "ortgen_time_to_first_token_seconds_bucket"):
        assert name in metrics


def test_sixteen_concurrent_http_requests_equal_each_alone(server, reference):
    prompts = [f"{s} walked along the stormy sea" * (1 + i % 3) for i, s in enumerate("ABCD" * 4)]
    options = [
        dict(max_new_tokens=4 + i, do_sample=i % 2 == 1, seed=i, top_k=10) for i in range(16)
    ]
    alone = [reference.generate(p, **o) for p, o in zip(prompts, options, strict=True)]

    def post(prompt: str, parameters: dict) -> str:
        body = {"inputs": prompt, "parameters": parameters | {"return_full_text": False}}
        return server.http.post("/generate", json=body).json()[0]["generated_text"]

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(post, prompts, options))
    assert together == alone


@pytest.fixture(scope="module")
def long_folder(checkpoints, tmp_path_factory) -> Path:
    return build_long_model(checkpoints, tmp_path_factory.getbasetemp())


LONG = {"model": "m", "prompt": "The old fisherman", "temperature": 0}
LONG |= {"max_tokens": 2000, "min_tokens": 2000}  # no EOS: runs for seconds


def test_queue_overload_disconnect_and_sigterm(long_folder):
    server = Server(long_folder, "--max-batch", "1", "--max-queue", "1")
    try:
        with server.http.stream("POST", "/v1/completions", json=LONG | {"stream": True}) as first:
            lines = first.iter_lines()  # kept: dropping the iterator closes the connection
            next(lines)  # the long request holds the only row
            waiting = ThreadPoolExecutor(1).submit(
                server.http.post, "/v1/completions", json=LONG | {"max_tokens": 2, "min_tokens": 0}
            )
            poll(lambda: server.metric("ortgen_queue_depth") == 1, "a queued request")
            refused = server.http.post("/v1/completions", json=LONG)
            assert refused.status_code == 429 and refused.headers["retry-after"]
            assert "max_queue 1" in refused.json()["error"]["message"]
        # the stream was closed mid-way: its row is freed and the queued request runs
        poll(lambda: server.metric('ortgen_requests_total{outcome="cancelled"}') == 1, "cancel")
        assert waiting.result().json()["usage"]["completion_tokens"] == 2
        poll(lambda: server.metric("ortgen_batch_rows") == 0, "the rows to be free")
        # SIGTERM with a request in flight: it is finished or cancelled, and the exit is clean
        with server.http.stream("POST", "/v1/completions", json=LONG | {"stream": True}) as last:
            lines = last.iter_lines()
            next(lines)
            assert server.stop() == 0
    finally:
        server.process.kill()
