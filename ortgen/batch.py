"""Batch jobs: generate over many prompt records (JSONL or plain lines) into a folder of JSONL
shards, resumably, with worker processes on this machine or actors on a Ray cluster. A record's
result depends on its prompt, options and seed only — never on how the work was split."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortgen.errors import InputError, InvalidOptionError, OrtgenError, first_line

SHARDS = "shard-*.jsonl"  # finished shards; in-progress ones are hidden `.shard-*.tmp` files
RESERVED = ("id", "prompt")  # record keys that are not generation options


@dataclass(frozen=True)
class BatchJob:
    """One run over INPUT into OUTPUT. Every field but the paths has a do-nothing default."""

    input: Path  # a JSONL / plain-lines file, or a folder of them (read recursively, sorted)
    output: Path  # folder of JSONL shards; an existing one is resumed (records skipped by id)
    model: Path | None = None  # model folder (default: the bundled model)
    options: dict[str, Any] = field(default_factory=dict)  # generate options for every record
    seed: int = 0  # run seed: records without their own seed get record_seed(id, seed)
    actors: int = 1  # worker processes (local) or Ray actors, each loading the model once
    threads_per_actor: int = 1  # ONNX Runtime intra-op threads per worker (Ray: num_cpus)
    batch_size: int = 16  # records per worker call, per shard, and generated together at most
    ray: str | None = None  # None: local processes; "local", "auto" or a Ray cluster address
    ship_model: bool = False  # Ray: send the model folder through the object store

    def __post_init__(self) -> None:
        for name in ("actors", "threads_per_actor", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidOptionError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**63:
            raise InvalidOptionError(f"seed must be in [0, 2**63), got {self.seed}")
        bad = sorted(set(self.options) & {*RESERVED, "seed"})
        if bad:
            raise InvalidOptionError(f"{bad} cannot be run-wide options: set them per record")


@dataclass(frozen=True)
class Progress:
    """Where a run stands, after each shard."""

    done: int  # records written in this run
    total: int  # records this run has to write (those already in OUTPUT excluded)
    tokens: int  # generated tokens so far in this run
    seconds: float  # since the first record was handed out

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return self.seconds / self.done * (self.total - self.done) if self.done else None

    def line(self) -> str:
        eta = "?" if self.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(self.eta_s))
        return f"{self.done:,}/{self.total:,} rows, {self.tokens_per_s:,.0f} tokens/s, ETA {eta}"


@dataclass(frozen=True)
class BatchSummary:
    skipped: int  # records already in OUTPUT (a resumed run)
    written: int  # records written by this run
    errors: int  # of those, records with an `error` field
    tokens: int  # generated tokens
    seconds: float  # wall time of the run


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs (the command line's -o) → options; VALUE is JSON, else a string."""
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidOptionError(f"option {pair!r} is not NAME=VALUE, e.g. max_new_tokens=64")
        try:
            options[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[name.strip()] = value
    return options


def record_seed(record_id: str, run_seed: int) -> int:
    """The seed of a record that gives none: the first 63 bits of blake2b(id) xor the run seed
    (stable across processes and machines, unlike Python's hash)."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) ^ run_seed


# ---- reading records ------------------------------------------------------------------------


def read_records(source: Path) -> list[dict]:
    """Every record of a file or folder: {"id", "prompt", "options"}, or {"id", "error"} for a
    line that cannot be a record (bad UTF-8 or JSON, no prompt string, an id given twice)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        names = [p.relative_to(source).as_posix() for p in files]
    elif source.is_file():
        files, names = [source], [source.name]
    else:
        raise InputError(f"INPUT {source} does not exist: give a JSONL file or a folder of them")
    records, first_seen = [], {}
    for path, name in zip(files, names, strict=True):
        for number, raw in enumerate(path.read_bytes().splitlines(), 1):
            if raw.strip():
                where = f"{name}:{number}"
                records.append(_unique(_parse_line(raw, where), where, first_seen))
    return records


def _parse_line(raw: bytes, where: str) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return {"id": where, "error": f"not valid UTF-8 at byte {err.start}: save it as UTF-8"}
    if not line.lstrip().startswith("{"):
        return {"id": where, "prompt": line, "options": {}}
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return {"id": where, "error": f"not valid JSON ({err.msg}): fix the line"}
    if not isinstance(record, dict):
        return {"id": where, "error": "a JSON line must be an object with a prompt"}
    given = record.get("id", where)
    record_id = str(given) if isinstance(given, str | int) and given != "" else where
    if not isinstance(record.get("prompt"), str):
        got = json.dumps(record["prompt"]) if "prompt" in record else "no such field"
        return {"id": record_id, "error": f'a record needs a "prompt" string (got {got})'}
    options = {k: v for k, v in record.items() if k not in RESERVED}
    return {"id": record_id, "prompt": record["prompt"], "options": options}


def _unique(record: dict, where: str, first_seen: dict[str, str]) -> dict:
    """A record whose id was seen before becomes an error under its line's id (unique)."""
    if record["id"] not in first_seen:
        first_seen[record["id"]] = where
        return record
    own = where if where not in first_seen else f"{where}#duplicate"
    first_seen[own] = where
    return {
        "id": own,
        "error": f"duplicate id {record['id']!r} (first at {first_seen[record['id']]}): "
        "give every record its own id",
    }


# ---- output shards ----------------------------------------------------------------------------


def written_ids(output: Path) -> set[str]:
    """Ids of the records in OUTPUT's finished shards; leftovers of killed runs are removed."""
    output = Path(output)
    for stale in output.glob(".shard-*.tmp"):
        stale.unlink(missing_ok=True)
    return {json.loads(line)["id"] for p in output.glob(SHARDS) for line in _lines(p)}


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


class ShardWriter:
    """Writes each group of results as a new shard: to a hidden temp name, fsynced, renamed."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.output.mkdir(parents=True, exist_ok=True)
        self._run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._count = 0

    def write(self, lines: list[str]) -> Path:
        name = f"shard-{self._run}-{self._count:06d}.jsonl"
        self._count += 1
        temp, final = self.output / f".{name}.tmp", self.output / name
        with open(temp, "w", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, final)
        return final


# ---- the worker: one Generator per process or Ray actor ------------------------------------


class RecordWorker:
    """Loads the model once and turns records into result records. Ray's `map_batches` calls it
    with {"records": [JSON list of one batch's records]}; local worker processes call `run` with
    the records themselves."""

    def __init__(self, model: str | None, threads: int, options: dict, seed: int, shipped=None):
        from ortgen.generator import Generator

        folder = _unpack(*shipped) if shipped else model
        self.generator = Generator.from_dir(folder, threads=threads)
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


def _pack(folder: Path) -> tuple[dict[str, bytes], str]:
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


# ---- the driver -------------------------------------------------------------------------------


def run_job(job: BatchJob, on_progress: Callable[[Progress], None] | None = None) -> BatchSummary:
    """Generate every record of job.input not yet in job.output; `on_progress` after each shard."""
    from ortgen.generator import default_model
    from ortgen.manifest import read_manifest
    from ortgen.options import GenerationOptions

    GenerationOptions().with_overrides(**job.options)  # a bad run-wide option fails at once
    if job.ray is None or job.ship_model:  # else the folder is a path on the cluster's nodes
        read_manifest(Path(job.model) if job.model is not None else default_model())
    started = time.perf_counter()
    records = read_records(job.input)
    done = written_ids(job.output) if Path(job.output).is_dir() else set()
    todo = [r for r in records if r["id"] not in done]
    writer, tally = ShardWriter(job.output), _Tally(len(todo), on_progress)
    unreadable = [r for r in todo if "error" in r]
    if unreadable:
        tally.add(writer.write([json.dumps(r, ensure_ascii=False) for r in unreadable]), 0)
    good = [r for r in todo if "error" not in r]
    batches = [good[i : i + job.batch_size] for i in range(0, len(good), job.batch_size)]
    if batches:
        results = _ray_results(job, batches) if job.ray else _local_results(job, batches)
        for lines, tokens in results:
            tally.add(writer.write(lines), tokens)
    seconds = time.perf_counter() - started
    return BatchSummary(len(records) - len(todo), tally.done, tally.errors, tally.tokens, seconds)


class _Tally:
    def __init__(self, total: int, on_progress: Callable[[Progress], None] | None) -> None:
        self.total, self.on_progress = total, on_progress
        self.done = self.errors = self.tokens = 0
        self.started = time.perf_counter()

    def add(self, shard: Path, tokens: int) -> None:
        lines = _lines(shard)
        self.done += len(lines)
        self.errors += sum('"error":' in line for line in lines)
        self.tokens += tokens
        if self.on_progress is not None:
            seconds = time.perf_counter() - self.started
            self.on_progress(Progress(self.done, self.total, self.tokens, seconds))


def _worker_args(job: BatchJob) -> dict:
    model = str(Path(job.model).resolve()) if job.model is not None else None
    return dict(model=model, threads=job.threads_per_actor, options=job.options, seed=job.seed)


_WORKER: RecordWorker | None = None  # the worker process's own (local mode)


def _start_worker(args: dict) -> None:
    import threading

    global _WORKER
    _WORKER = RecordWorker(**args)
    parent = os.getppid()
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """A killed driver must not leave workers behind (they would wait on its queue forever)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _work(records: list[dict]) -> tuple[list[str], int]:
    results = _WORKER.run(records)
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    return lines, sum(r.get("generated_tokens", 0) for r in results)


def _local_results(job: BatchJob, batches: list[list[dict]]) -> Iterator[tuple[list[str], int]]:
    """Worker processes on this machine (spawned: no state inherited from the driver)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    workers = min(job.actors, len(batches))
    context = multiprocessing.get_context("spawn")
    args = (_worker_args(job),)
    with ProcessPoolExecutor(workers, context, _start_worker, args) as pool:
        try:
            for future in as_completed([pool.submit(_work, batch) for batch in batches]):
                yield future.result()
        except BrokenProcessPool:
            raise OrtgenError(
                "a worker process died (its error is above; a script that calls run_job needs "
                "`if __name__ == '__main__':`): rerun the same command to resume"
            ) from None


def _ray_results(job: BatchJob, batches: list[list[dict]]) -> Iterator[tuple[list[str], int]]:
    """Ray Data: records → map_batches over an actor pool (one Generator each) → the driver."""
    from ortgen.generator import default_model

    try:
        import ray
        import ray.data
    except ImportError:
        raise OrtgenError("--ray needs the ray extra: pip install 'ortgen[ray]'") from None
    started = _connect(ray, job.ray)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr
        args = _worker_args(job)
        if job.ship_model:
            files, digest = _pack(Path(args["model"] or default_model()))
            args.update(model=None, shipped=[ray.put(files), digest])  # a list: the ref as is
        # One dataset row per batch (its records as one JSON list) and one row per call: Ray's
        # block boundaries would otherwise cut batches into small remainders (1000 records in
        # blocks of 20 ran as batches of 16 + 4, each 4 costing 40 % of a 16: +15 % wall time).
        rows = [{"records": json.dumps(batch)} for batch in batches]
        results = ray.data.from_items(rows).map_batches(
            RecordWorker,
            fn_constructor_kwargs=args,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=job.actors),
            num_cpus=job.threads_per_actor,
        )
        for out in results.iter_batches(batch_size=None, batch_format="numpy"):
            for lines, tokens in zip(out["lines"], out["tokens"], strict=True):
                yield json.loads(lines), int(tokens)
    finally:
        if started:
            ray.shutdown()


def _connect(ray, address: str) -> bool:
    """Join the running Ray (tests, `ray job submit`), or init one; True if this call did."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    return True
