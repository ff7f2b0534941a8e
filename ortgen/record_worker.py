"""The batch-job worker: loads the model once (per local process or Ray actor) and turns records
into result records; a model folder shipped through Ray's object store is unpacked once a node."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ortgen.errors import InvalidOptionError, OrtgenError, first_line
from ortgen.records import record_seed


class RecordWorker:
    """Loads the model once and turns records into result records. Ray's `map_batches` calls it
    with {"records": [JSON list of one batch's records]}; local worker processes call `run` with
    the records themselves."""

    def __init__(
        self,
        model: str | None,
        threads: int,
        options: dict,
        seed: int,
        shipped=None,
        huge_pages: bool = True,
    ):
        from ortgen.generator import Generator

        folder = _unpack(*shipped) if shipped else model
        self.generator = Generator.from_dir(folder, threads=threads, huge_pages=huge_pages)
        self.options, self.seed = options, seed

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        shards, tokens = [], []
        for batch in rows["records"]:  # one row per batch: Ray's blocks never re-split ours
            results = self.run(json.loads(batch))
            shards.append(json.dumps([json.dumps(r, ensure_ascii=False) for r in results]))
            tokens.append(sum(r.get("generated_tokens", 0) for r in results))
        return {"lines": np.asarray(shards, dtype=object), "tokens": np.asarray(tokens)}

    def run(self, records: list[dict]) -> list[dict]:
        """Every record of the call decodes in one batch, each with its own options and seed
        (a row's tokens never depend on its neighbours); beam-search records run on their own."""
        results: list[dict | None] = [None] * len(records)
        rows = []  # (record index, its Sequence)
        for i, record in enumerate(records):
            try:
                options = self.record_options(record)
                resolved = self.generator.options(**options)
                if resolved.num_beams > 1:
                    results[i] = self._generate([record], options)[0]
                    continue
                prompt = self.generator.encode(record["prompt"])
                [sequence] = self.generator.sequences([prompt], resolved, text=True)
            except (OrtgenError, TypeError, ValueError) as err:
                results[i] = _error(record, err)
                continue
            rows.append((i, sequence))
        if rows:
            self.generator.run([sequence for _, sequence in rows])
            for i, sequence in rows:
                results[i] = _result(records[i], sequence)
        return results

    def record_options(self, record: dict) -> dict:
        """The run's options under the record's own; a seed only where it is used (sampling)."""
        options = {**self.options, **record["options"]}
        resolved = self.generator.options(**options)  # unknown names and bad values raise
        if resolved.num_return_sequences != 1:
            raise InvalidOptionError(
                "num_return_sequences must be 1 in a batch job: give each sample a record of "
                "its own (its own id gives it its own seed)"
            )
        if resolved.do_sample and options.get("seed") is None:
            options["seed"] = record_seed(record["id"], self.seed)
        elif not resolved.do_sample:
            options.pop("seed", None)  # greedy rows share one batch whatever their seeds
        return options

    def _generate(self, records: list[dict], options: dict) -> list[dict]:
        try:
            results = self._results(records, options)
        except (OrtgenError, TypeError, ValueError) as err:
            if len(records) == 1:
                return [_error(records[0], err)]
            return [self._generate([r], options)[0] for r in records]  # find the bad ones
        return results

    def _results(self, records: list[dict], options: dict) -> list[dict]:
        """One batch through the generator's sequences: exact token counts and finish reasons
        (beam search and several sequences per record go through generate(), counted by
        re-encoding the text)."""
        generator = self.generator
        opts = generator.options(**options)
        prompts = [generator.encode(r["prompt"]) for r in records]
        if opts.num_beams > 1 or opts.num_return_sequences > 1:
            texts = generator.generate([r["prompt"] for r in records], **options)
            texts = [t[0] if isinstance(t, list) else t for t in texts]
            return [self._estimate(r, t, opts) for r, t in zip(records, texts, strict=True)]
        sequences = generator.run(generator.sequences(prompts, opts, text=True))
        return [_result(r, s) for r, s in zip(records, sequences, strict=True)]

    def _estimate(self, record: dict, text: str, opts) -> dict:
        prompt = len(self.generator.encode(record["prompt"]))
        new = opts.for_prompt(prompt).max_new_tokens
        generated = len(self.generator.encode(text)) if text else 0
        return {
            "id": record["id"],
            "prompt": record["prompt"],
            "generated_text": record["prompt"] + text,
            "prompt_tokens": min(prompt, self.generator.manifest.max_positions - new),
            "generated_tokens": generated,
            "finish_reason": "length" if generated >= new else "stop",
        }


def _result(record: dict, sequence) -> dict:
    """A record's result from its finished Sequence (ids and finish reason as generated)."""
    return {
        "id": record["id"],
        "prompt": record["prompt"],
        "generated_text": record["prompt"] + sequence.text,
        "prompt_tokens": len(sequence.prompt),
        "generated_tokens": len(sequence.ids),
        "finish_reason": sequence.finish_reason,
    }


def _error(record: dict, err: BaseException) -> dict:
    return {"id": record["id"], "prompt": record.get("prompt"), "error": first_line(err)}


def pack_folder(folder: Path) -> tuple[dict[str, bytes], str]:
    """The model folder's files, and a digest of them naming its copy on every node."""
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }
    digest = hashlib.blake2b(digest_size=12)
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.blake2b(files[name]).digest())
    return files, digest.hexdigest()


def _unpack(files_ref, digest: str) -> str:
    """The shipped model folder on this node: one copy per model in the temp dir, named by its
    digest and shared by every actor and run (written under a temp name, then renamed), so
    actors that Ray kills leave nothing new behind."""
    import shutil
    import tempfile

    import ray

    folder = Path(tempfile.gettempdir()) / f"ortgen-model-{digest}"
    if (folder / "ortgen.json").is_file():
        return str(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    for name, data in ray.get(files_ref).items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    try:
        staging.rename(folder)
    except OSError:  # another actor got there first: its copy is the same bytes
        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)
