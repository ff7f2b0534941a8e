"""`ortgen` as a user runs it: exit codes, one-line errors without tracebacks, --json, stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ortgen.cli import app


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def assert_one_line_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.output
    assert "Traceback" not in result.output


def test_generate_streams_the_continuation(exported):
    result = run(
        "generate", "Once upon a time", "--model", str(exported["gpt2"]), "--max-new-tokens", "12"
    )
    assert result.exit_code == 0, result.output
    assert result.output.endswith("\n") and len(result.output) > 1


def test_generate_json_has_the_pipeline_shape(exported):
    from ortgen import Generator

    args = ["--max-new-tokens", "10", "--do-sample", "--seed", "4"]
    result = run("generate", "Once upon", "-m", str(exported["gpt_neo"]), "--json", *args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    expected = Generator.from_dir(exported["gpt_neo"]).generate(
        "Once upon", max_new_tokens=10, do_sample=True, seed=4
    )
    assert payload == [{"generated_text": "Once upon" + expected}]


def test_generate_reads_the_prompt_from_stdin(exported):
    folder = str(exported["gpt2"])
    from_stdin = run("generate", "-", "-m", folder, "--json", stdin="The quick brown fox")
    from_arg = run("generate", "The quick brown fox", "-m", folder, "--json")
    assert from_stdin.exit_code == 0
    assert json.loads(from_stdin.output) == json.loads(from_arg.output)


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["generate", "hi", "-m", "/nonexistent/folder"], 1, "does not exist"),
        (["generate", "hi", "-m", "{tmp}"], 1, "not an ortgen model folder"),
        (["generate", "hi", "-m", "{gpt2}", "--top-p", "1.5"], 2, "--top-p must be in (0, 1]"),
        (
            ["generate", "hi", "-m", "{gpt2}", "--do-sample", "--temperature", "0"],
            2,
            "--temperature",
        ),
        (["generate", "hi", "-m", "{gpt2}", "--top-k", "-2"], 2, "--top-k"),
        (["generate", "hi", "-m", "{gpt2}", "--max-new-tokens", "1000"], 1, "context"),
        (["generate", "hi", "-m", "{gpt2}", "--threads", "0"], 2, "--threads must be between 1"),
        (["generate", "hi", "-m", "{gpt2}", "--device", "tpu"], 2, "unknown device"),
        (["generate", "hi", "-m", "{gpt2}", "--bogus"], 2, "No such option"),
        (["export", "{tmp}/nowhere", "{tmp}/out"], 1, "does not exist"),
        (["export", "{gpt2_ckpt}", "{gpt2}"], 1, "--force"),
        (["export", "{gpt2_ckpt}", "{tmp}/out", "--precision", "int3"], 2, "precision"),
    ],
)
def test_user_errors_are_one_line(args, code, fragment, exported, checkpoints, tmp_path):
    values = dict(tmp=tmp_path, gpt2=exported["gpt2"], gpt2_ckpt=checkpoints["gpt2"])
    result = run(*[a.format(**values) for a in args])
    assert_one_line_error(result, code, fragment)


def test_cuda_request_without_cuda_is_a_clear_error(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is present: the refusal cannot be observed")
    result = run("generate", "hi", "-m", str(exported["gpt2"]), "--device", "cuda")
    assert_one_line_error(result, 1, "CUDAExecutionProvider")


def test_unsupported_architecture_exits_non_zero(tmp_path):
    from transformers import BertConfig

    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path / "bert")
    result = run("export", str(tmp_path / "bert"), str(tmp_path / "out"))
    assert_one_line_error(result, 1, "unsupported architecture 'bert'")
    assert not (tmp_path / "out").exists()


def test_missing_export_extra_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ortgen_export", None)  # import now raises ImportError
    result = run("export", "gpt2", str(tmp_path / "out"))
    assert_one_line_error(result, 1, "pip install 'ortgen[export]'")


def test_export_through_the_cli_reports_parity(checkpoints, tmp_path):
    out = tmp_path / "neo"
    result = run("export", str(checkpoints["gpt_neo"]), str(out))
    assert result.exit_code == 0, result.output
    assert "max |Δ logits|" in result.output and (out / "ortgen.json").is_file()
    assert "rounding:" not in result.output  # a small model stays within 1e-4


def test_parity_line_names_the_float64_figures_only_when_they_decided():
    """Past 1e-4 (a large model's fp32 rounding), the success line says how far transformers fp32
    itself is from float64 and how far the export is; within 1e-4, or quantized, it does not."""
    from ortgen.cli.export import parity_summary

    base = dict(top1_agreement=1.0, greedy_agreement=1.0, prompts=[{}] * 6)
    fp32 = dict(base, thresholds={"max_abs_diff": 1e-4}, reference_error=2.7e-4)
    line = parity_summary(
        dict(fp32, max_abs_diff=5.2e-4, exact_max_abs_diff=4.8e-4, rounding_ratio=1.8)
    )
    assert (
        "5.2e-04 (rounding: transformers fp32 itself is 2.7e-04 from float64, ONNX 4.8e-04)" in line
    )
    small = dict(fp32, max_abs_diff=2e-6, exact_max_abs_diff=1e-6, rounding_ratio=0.5)
    assert "rounding" not in parity_summary(small)
    quantized = dict(base, thresholds={"max_abs_diff": None}, max_abs_diff=0.3)
    assert parity_summary(quantized).startswith("max |Δ logits| 3.0e-01, top-1 agreement 100.0%")


def test_console_script_exit_codes(exported):
    """The installed entry point, in a real process: success 0, user error 1, usage error 2."""
    base = [sys.executable, "-m", "ortgen", "generate"]
    ok = subprocess.run(
        [*base, "hi", "-m", str(exported["gpt2"]), "--max-new-tokens", "3"],
        capture_output=True,
        text=True,
    )
    bad = subprocess.run([*base, "hi", "-m", "/nonexistent"], capture_output=True, text=True)
    usage = subprocess.run([*base, "hi", "--nope"], capture_output=True, text=True)
    assert (ok.returncode, bad.returncode, usage.returncode) == (0, 1, 2)
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_prompts_file_writes_jsonl_in_batches(exported, tmp_path):
    from ortgen import Generator

    prompts = ["Once upon a time", "The quick brown fox", "Numbers", "Caf\u00e9"]
    plain = tmp_path / "prompts.txt"
    plain.write_text("\n".join(prompts[:2]) + "\n\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(prompts)))
    folder = str(exported["gpt2"])
    expected = Generator.from_dir(folder).generate(prompts, max_new_tokens=6)
    for path, count in ((plain, 2), (jsonl, 4)):
        result = run(
            "generate",
            "-m",
            folder,
            "--prompts-file",
            str(path),
            "--batch-size",
            "3",
            "--max-new-tokens",
            "6",
        )
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.output.splitlines()]
        assert [r["prompt"] for r in records] == prompts[:count]
        assert [r["generated_text"] for r in records] == [
            p + c for p, c in zip(prompts[:count], expected[:count], strict=True)
        ]


def test_cli_decoding_options_reach_the_generator(exported):
    from ortgen import Generator

    folder = str(exported["gpt_neo"])
    args = [
        "--do-sample",
        "--seed",
        "2",
        "--num-return-sequences",
        "3",
        "--max-new-tokens",
        "8",
        "--repetition-penalty",
        "1.2",
        "--no-repeat-ngram-size",
        "2",
        "--stop",
        "zz",
    ]
    result = run("generate", "Once", "-m", folder, "--json", *args)
    assert result.exit_code == 0, result.output
    expected = Generator.from_dir(folder).generate(
        "Once",
        do_sample=True,
        seed=2,
        num_return_sequences=3,
        max_new_tokens=8,
        repetition_penalty=1.2,
        no_repeat_ngram_size=2,
        stop=["zz"],
    )
    assert json.loads(result.output) == [{"generated_text": "Once" + c} for c in expected]


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["generate", "-m", "{gpt2}"], 2, "PROMPT or --prompts-file"),
        (["generate", "hi", "-m", "{gpt2}", "--prompts-file", "{tmp}/p"], 2, "PROMPT or"),
        (["generate", "-m", "{gpt2}", "--prompts-file", "{tmp}/missing.txt"], 1, "cannot read"),
        (["generate", "hi", "-m", "{gpt2}", "--num-return-sequences", "2"], 2, "(--do-sample)"),
        (
            ["generate", "hi", "-m", "{gpt2}", "--do-sample", "--num-return-sequences", "2"],
            2,
            "--json",
        ),
        (
            ["generate", "hi", "-m", "{gpt2}", "--min-new-tokens", "30", "--max-new-tokens", "5"],
            2,
            "--min-new-tokens must be in [0, --max-new-tokens 5]",
        ),
        (["generate", "hi", "-m", "{gpt2}", "--truncate-prompt", "right"], 2, "--truncate-prompt"),
        (
            ["generate", "hi", "-m", "{gpt2}", "--repetition-penalty", "0"],
            2,
            "--repetition-penalty",
        ),
    ],
)
def test_decoding_option_errors_are_one_line(args, code, fragment, exported, tmp_path):
    values = dict(tmp=tmp_path, gpt2=exported["gpt2"])
    result = run(*[a.format(**values) for a in args])
    assert_one_line_error(result, code, fragment)


def test_truncate_prompt_from_the_cli(exported):
    long_prompt = "Once upon a time " * 60  # more tokens than the tiny model's context
    folder = str(exported["gpt2"])
    refused = run("generate", long_prompt, "-m", folder, "--max-new-tokens", "4")
    assert_one_line_error(refused, 1, "context")
    ok = run(
        "generate", long_prompt, "-m", folder, "--max-new-tokens", "4", "--truncate-prompt", "left"
    )
    assert ok.exit_code == 0, ok.output


def test_bench_command_reports_speed(exported):
    result = run(
        "bench",
        str(exported["gpt_neo"]),
        "--prompt-tokens",
        "12",
        "--new-tokens",
        "6",
        "--rounds",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["decode_tokens_per_s"] > 0 and record["prefill_tokens_per_s"] > 0
    assert record["token_latency_ms"]["p50"] <= record["token_latency_ms"]["p99"]
    too_long = run("bench", str(exported["gpt2"]), "--prompt-tokens", "500")
    assert_one_line_error(too_long, 2, "--prompt-tokens")


def test_generate_options_are_the_dataclass_fields():
    """One list of generation options: every GenerationOptions field is a `generate` option of
    the same name (flags derived from it), except the Python-only ones the CLI declares."""
    import dataclasses

    import typer.main

    from ortgen.cli import API_ONLY
    from ortgen.options import GenerationOptions

    command = typer.main.get_command(app).commands["generate"]
    params = {p.name for p in command.params}
    fields = {f.name for f in dataclasses.fields(GenerationOptions)}
    assert fields - set(API_ONLY) <= params
    assert set(API_ONLY) <= fields and not set(API_ONLY) & params


def test_beam_flags_reach_beam_search(exported):
    from ortgen import Generator

    folder = exported["gpt2"]
    args = ["--num-beams", "3", "--early-stopping", "true", "--max-new-tokens", "8", "--json"]
    result = run("generate", "Once upon", "-m", str(folder), "--greedy", *args)
    assert result.exit_code == 0, result.output
    text = json.loads(next(ln for ln in result.output.splitlines() if ln.startswith("[")))
    expected = Generator.from_dir(folder).generate(
        "Once upon", num_beams=3, early_stopping=True, max_new_tokens=8, do_sample=False
    )
    assert text == [{"generated_text": "Once upon" + expected}]
    bad = run("generate", "hi", "-m", str(folder), "--early-stopping", "maybe")
    assert_one_line_error(bad, 2, "--early-stopping")
