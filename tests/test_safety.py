"""Bad bytes, bad prompt records, out-of-range options, options that do not apply, the bundled
model with short generations, and the CLI's own surface: each ends in one clear line (or one
warning) with the right exit code, and nothing is generated from a request that is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from test_cli import assert_one_line_error, run

from ortgen.errors import OrtgenWarning


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning: ")]


# ---- bytes that are not UTF-8, from each source --------------------------------------------


def test_non_utf8_prompt_argument_is_refused(exported):
    argv = [sys.executable, "-m", "ortgen", "generate", b"caf\xe9", "-m", str(exported["gpt2"])]
    result = subprocess.run(argv, capture_output=True)
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode() == (
        "error: the PROMPT argument is not valid UTF-8 (byte 0xe9 at offset 3): save it as UTF-8\n"
    )


def test_non_utf8_stdin_is_refused(exported):
    result = run("generate", "-", "-m", str(exported["gpt2"]), stdin=b"ok \xff\xfe")
    assert_one_line_error(result, 1, "the prompt read from stdin is not valid UTF-8 (byte 0xff")
    assert result.stdout == ""


def test_non_utf8_prompts_file_names_the_line(exported, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"Once upon a time\nLatin-1 caf\xe9\n")
    result = run("generate", "-m", str(exported["gpt2"]), "--prompts-file", str(path))
    assert_one_line_error(result, 1, f"{path}:2 is not valid UTF-8 (byte 0xe9 at offset 11)")
    assert result.stdout == ""  # line 1 was not generated either


# ---- prompts files: JSONL types, validated whole ---------------------------------------------


@pytest.mark.parametrize("value", ["null", "42", '["a"]'])
def test_jsonl_prompt_must_be_a_string(value, exported, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(f'{{"prompt": "Once"}}\n{{"prompt": {value}}}\n')
    result = run("generate", "-m", str(exported["gpt2"]), "--prompts-file", str(path))
    assert_one_line_error(result, 1, f'{path}:2: a JSON line needs a "prompt" string')
    assert f"(got {value})" in result.output and result.stdout == ""


def test_prompts_file_is_validated_whole_before_generating(exported, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("Once upon a time\nThe quick brown fox\n" + "Once upon a time " * 60 + "\n")
    args = ["-m", str(exported["gpt2"]), "--prompts-file", str(path), "--batch-size", "1"]
    result = run("generate", *args, "--max-new-tokens", "4")
    assert_one_line_error(result, 1, f"{path}:3: prompt of")
    assert "--truncate-prompt left" in result.output and result.stdout == ""


# ---- option ranges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--do-sample", "--seed", "-1"], "--seed must be in [0, 2**63), got -1"),
        (["--do-sample", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
        (["--do-sample", "--top-p", "nan"], "--top-p must be a finite number, got nan"),
        (["--repetition-penalty", "inf"], "--repetition-penalty must be a finite number"),
        (["--eos-token-id", "-3"], "--eos-token-id must be ≥ 0, got -3"),
        (
            ["--eos-token-id", "400"],
            "--eos-token-id 400 is outside the model's vocabulary [0, 400)",
        ),
        (["--threads", "100000"], "--threads must be between 1 and"),
        (["--batch-size", "0", "--prompts-file", "x"], "--batch-size must be ≥ 1"),
    ],
)
def test_out_of_range_options_are_usage_errors(args, fragment, exported):
    result = run(
        "generate",
        *(["hi"] if "--prompts-file" not in args else []),
        "-m",
        str(exported["gpt2"]),
        *args,
    )
    assert_one_line_error(result, 2, fragment)
    assert result.stdout == ""


def test_sampling_options_under_greedy_are_warned_once(exported):
    folder = str(exported["gpt2"])
    result = run("generate", "Once", "-m", folder, "--temperature", "0.5", "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert warnings_in(result.stderr) == [
        "warning: --temperature, --top-k ignored: decoding is greedy (add --do-sample to sample)"
    ]
    sampled = run("generate", "Once", "-m", folder, "--do-sample", "--seed", "1", "--top-k", "3")
    assert sampled.exit_code == 0 and warnings_in(sampled.stderr) == []


# ---- the bundled model ------------------------------------------------------------------------


def test_bundled_model_generates_fewer_tokens_than_its_min_new_tokens():
    """Its generation_config sets min_new_tokens 24: a shorter request is capped, told once."""
    result = run("generate", "Hello", "--max-new-tokens", "10", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert warnings_in(result.stderr) == [
        "warning: the model's default --min-new-tokens 24 is more than --max-new-tokens 10: "
        "using --min-new-tokens 10"
    ]
    assert result.stdout.strip()


def test_bundled_model_short_batch_from_python_warns():
    from ortgen import Generator

    generator = Generator.from_dir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = generator.generate(["Hello", "The"], max_new_tokens=16, seed=0)
    assert len(texts) == 2
    assert [w.category for w in caught] and all(w.category is OrtgenWarning for w in caught)


def test_a_config_min_above_its_own_max_is_capped(exported, tmp_path):
    import shutil

    folder = shutil.copytree(exported["gpt2"], tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({"min_new_tokens": 40}))
    result = run("generate", "Once", "-m", str(folder))
    assert result.exit_code == 0, result.output
    assert len(warnings_in(result.stderr)) == 1 and "40" in result.stderr


# ---- the CLI surface --------------------------------------------------------------------------


def test_version_and_short_help():
    from importlib import metadata

    version = run("--version")
    assert version.exit_code == 0 and version.stdout == f"ortgen {metadata.version('ortgen')}\n"
    for args in (["-h"], ["--help"], ["generate", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and result.stdout.startswith("Usage: ")


def test_bare_ortgen_prints_help_once():
    result = subprocess.run([sys.executable, "-m", "ortgen"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout.count("Usage: ortgen") == 1 and result.stderr == ""


def test_flags_are_shown_as_flags():
    text = run("export", "--help").stdout
    assert "--force " in text and "<bool>" not in text
    assert "--optimize / --no-optimize" in text


def test_eval_and_bench_default_to_the_bundled_model(tmp_path):
    sample = tmp_path / "text.txt"
    sample.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    evaluated = run("eval", "--text", str(sample), "--window", "32", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["precision"] == "int8"
    args = ["--prompt-tokens", "8", "--new-tokens", "3", "--rounds", "1", "--json"]
    benched = run("bench", *args)
    assert benched.exit_code == 0, benched.output
    assert json.loads(benched.stdout)["decode_tokens_per_s"] > 0


def test_model_given_twice_differently_is_a_usage_error(exported):
    result = run("bench", str(exported["gpt2"]), "--model", str(exported["gpt_neo"]))
    assert_one_line_error(result, 2, "give the model once")


def test_library_errors_speak_in_flags():
    from ortgen.cli import flag_names

    assert flag_names("top_p must be in (0, 1], got 2") == "--top-p must be in (0, 1], got 2"
    assert flag_names("truncate the prompt (truncate_prompt='left')") == (
        "truncate the prompt (--truncate-prompt left)"
    )
    assert flag_names("needs sampling (do_sample=True)") == "needs sampling (--do-sample)"
    assert flag_names("in /tmp/seed/x_top_p: seed") == "in /tmp/seed/x_top_p: --seed"
