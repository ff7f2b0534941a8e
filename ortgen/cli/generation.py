"""`ortgen generate`: every GenerationOptions field is an option of the same name; text streams to
stdout, or JSON / JSONL for scripts."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from ortgen import prompts as prompt_input
from ortgen.cli.app import Device, ModelDir, Threads, app
from ortgen.errors import OrtgenWarning
from ortgen.options import GenerationOptions


@app.command()
def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="Prompt text, or - to read it from stdin.")
    ] = None,
    model: ModelDir = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
    min_new_tokens: Annotated[
        int | None, typer.Option(help="Forbid EOS before this many tokens.")
    ] = None,
    do_sample: Annotated[
        bool | None, typer.Option("--do-sample/--greedy", help="Sample, or take the argmax.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Logits divisor when sampling.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Keep the k best ids when sampling (0: off).")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus mass when sampling, in (0, 1].")
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="> 1 discourages repeating ids (1.0: off).")
    ] = None,
    no_repeat_ngram_size: Annotated[
        int | None, typer.Option(help="Never repeat an n-gram of this size (0: off).")
    ] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop string (repeatable); output ends before it.")
    ] = None,
    num_return_sequences: Annotated[
        int | None, typer.Option(help="Samples per prompt (with --do-sample).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="RNG seed for reproducible sampling.")] = None,
    eos_token_id: Annotated[
        int | None, typer.Option(help="Stop at this id instead of the model's EOS.")
    ] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never stop at EOS.")] = False,
    truncate_prompt: Annotated[
        str | None, typer.Option(help="'left': drop the oldest prompt tokens to fit the context.")
    ] = None,
    num_beams: Annotated[
        int | None, typer.Option(help="Beam search over N beams (1: off).")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="Beam search: score ÷ length ** this.")
    ] = None,
    early_stopping: Annotated[
        str | None, typer.Option(help="Beam search: true, false or never.")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Prompt + new tokens at most (--max-new-tokens wins).")
    ] = None,
    min_length: Annotated[
        int | None, typer.Option(help="Forbid EOS until prompt + new tokens reach this.")
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(help="One prompt per line, or JSONL with a 'prompt' field; writes JSONL."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch with --prompts-file.")] = 8,
    device: Device = "cpu",
    threads: Threads = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"generated_text": …}] instead of streaming.')
    ] = False,
) -> None:
    """Continue PROMPT with the model, streaming the text to stdout as it is produced."""
    from ortgen.generator import Generator

    if (prompt is None) == (prompts_file is None):
        raise typer.BadParameter("give either PROMPT or --prompts-file FILE (one of them)")
    if batch_size < 1:
        raise typer.BadParameter(f"--batch-size must be ≥ 1, got {batch_size}")
    given = locals()
    options = {name: given[name] for name in GENERATION_OPTIONS}  # the dataclass's fields
    options |= dict(stop=tuple(stop) if stop else None, ignore_eos=ignore_eos or None)
    options["early_stopping"] = _early_stopping(early_stopping)
    text = None  # every prompt is read and checked before the model loads
    if prompt is not None:
        text = prompt_input.from_stdin() if prompt == "-" else prompt_input.from_argument(prompt)
    numbered = prompt_input.read_numbered_prompts(prompts_file) if prompts_file else []
    generator = Generator.from_dir(model, device=device, threads=threads)
    resolved = resolve_options(generator, options)  # validate before any output
    if prompts_file is not None:
        prompt_input.check_prompts(
            numbered, prompts_file, lambda p: generator.fit_context(generator.encode(p), resolved)
        )
        prompts = [p for _, p in numbered]
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            print_jsonl(batch, generator.generate(batch, **options))
        return
    if as_json:
        result = generator.generate(text, **options)
        outputs = result if isinstance(result, list) else [result]
        print(json.dumps([{"generated_text": text + c} for c in outputs], ensure_ascii=False))
        return
    if resolved.num_return_sequences > 1:
        raise typer.BadParameter("--num-return-sequences > 1 needs --json or --prompts-file")
    for piece in generator.stream(text, **options):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


# Every GenerationOptions field is a `generate` option of the same name, except these (the
# Python API's only): tests/test_cli.py checks the signature against the dataclass.
API_ONLY = ("pad_token_id",)
GENERATION_OPTIONS = tuple(
    f.name for f in dataclasses.fields(GenerationOptions) if f.name not in API_ONLY
)


def _early_stopping(value: str | None) -> bool | str | None:
    """--early-stopping true|false|never → transformers' True / False / "never"."""
    choices = {"true": True, "false": False, "never": "never", None: None}
    if value not in choices:
        raise typer.BadParameter(f"--early-stopping must be true, false or never, got {value!r}")
    return choices[value]


def resolve_options(generator, options: dict):
    """The generator's options with `options` applied, checked against its vocabulary; sampling
    controls given under greedy decoding are reported (once, on stderr), not silently dropped."""
    resolved = generator.options(**options)
    resolved.check_vocabulary(generator.manifest.vocab_size)
    ignored = resolved.ignored_options(options)
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} ignored: decoding is greedy (add do_sample=True to sample)",
            OrtgenWarning,
            stacklevel=2,
        )
    return resolved


def print_jsonl(prompts: list[str], results: list) -> None:
    """One line per returned sequence: prompt, sequence index, prompt + continuation."""
    for text, result in zip(prompts, results, strict=True):
        for index, continuation in enumerate(result if isinstance(result, list) else [result]):
            record = {"prompt": text, "sequence": index, "generated_text": text + continuation}
            print(json.dumps(record, ensure_ascii=False), flush=True)
