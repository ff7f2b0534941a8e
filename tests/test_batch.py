"""Batch jobs (`ortgen batch`): on a real local Ray cluster and with local worker processes, each
record's output equals `Generator.generate` on that record alone, whatever the split; a killed run
resumes to the same output with no duplicates; bad records are reported, the rest complete."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ortgen import Generator
from ortgen.batch import BatchJob, record_seed, run_job
from ortgen.record_worker import pack_folder

RUN_SEED = 7
RUN_OPTIONS = {"max_new_tokens": 8}


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def mixed_records(count: int) -> list[dict]:
    """Greedy and seeded-sampling records (derived and explicit seeds), varied lengths/options."""
    starts = ["The old fisherman", "Once upon a time", "A small child", "In the beginning of"]
    records = []
    for i in range(count):
        record = {"id": f"rec-{i:03d}", "prompt": f"{starts[i % 4]} {'and ' * (i % 5)}{i}"}
        if i % 3 == 1:
            record |= {"do_sample": True, "temperature": 0.9, "top_k": 20}
        if i % 6 == 4:
            record["seed"] = 1000 + i  # explicit: used as given
        if i % 5 == 2:
            record |= {"max_new_tokens": 5, "repetition_penalty": 1.2}
        if i % 7 == 3:
            record["stop"] = ["."]
        records.append(record)
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_output(folder: Path) -> dict[str, dict]:
    """Every result by id; an id written twice fails the test."""
    lines = [
        line for p in sorted(folder.glob("shard-*.jsonl")) for line in p.read_text().split("\n")
    ]
    results = [json.loads(line) for line in lines if line]
    by_id = {r["id"]: r for r in results}
    assert len(by_id) == len(results), "an id was written twice"
    return by_id


def expected_text(generator: Generator, record: dict) -> str:
    """What Generator.generate gives this record alone, under the per-record seed rule."""
    options = RUN_OPTIONS | {k: v for k, v in record.items() if k not in ("id", "prompt")}
    if options.get("do_sample") and "seed" not in options:
        options["seed"] = record_seed(record["id"], RUN_SEED)
    return record["prompt"] + generator.generate(record["prompt"], **options)


def test_record_seed_is_blake2b_of_the_id_xor_the_run_seed():
    digest = hashlib.blake2b(b"rec-001", digest_size=8).digest()
    assert record_seed("rec-001", 5) == (int.from_bytes(digest, "big") >> 1) ^ 5
    assert 0 <= record_seed("rec-001", 2**63 - 1) < 2**63
    assert record_seed("rec-001", 0) != record_seed("rec-002", 0)


def test_ray_two_actors_equal_generate_record_by_record(ray_cluster, exported, tmp_path):
    records = mixed_records(200)
    source = write_jsonl(tmp_path / "prompts.jsonl", records)
    model = exported["gpt2"]
    job = BatchJob(source, tmp_path / "out", model, RUN_OPTIONS, RUN_SEED, 2, ray="auto")
    summary = run_job(job)
    assert (summary.written, summary.errors, summary.skipped) == (200, 0, 0)
    output = read_output(tmp_path / "out")
    generator = Generator.from_dir(exported["gpt2"], threads=1)
    assert {i: r["generated_text"] for i, r in output.items()} == {
        r["id"]: expected_text(generator, r) for r in records
    }
    assert {r["finish_reason"] for r in output.values()} == {"stop", "length"}
    # Ray runs the job's own batches (one shard each), never pieces cut at its block boundaries
    sizes = sorted(count_lines(p.parent, p.name) for p in (tmp_path / "out").glob("shard-*"))
    assert sizes == [200 % 16] + [16] * (200 // 16)
    sampled = [output[r["id"]] for r in records if r.get("do_sample")]
    assert len({r["generated_text"][len(r["prompt"]) :] for r in sampled}) > 1


def test_ray_reports_malformed_records_and_completes_the_rest(ray_cluster, exported, tmp_path):
    good = mixed_records(12)
    long_prompt = "The old fisherman " * 60  # beyond the tiny model's 128 positions
    lines = (
        [json.dumps(r) for r in good[:6]]
        + [
            '{"id": "no-prompt", "text": "hi"}',
            '{"id": "number", "prompt": 42}',
            '{"id": "broken", "prompt": ',
            json.dumps({"id": "too-long", "prompt": long_prompt}),
            json.dumps({"id": "cut", "prompt": long_prompt, "truncate_prompt": "left"}),
            json.dumps({"id": "top-p", "prompt": "hi", "do_sample": True, "top_p": 7}),
            json.dumps({"id": "unknown", "prompt": "hi", "beams": 2}),
            json.dumps({"id": "rec-000", "prompt": "the same id again"}),
            "A plain line is a prompt too",
        ]
        + [json.dumps(r) for r in good[6:]]
    )
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = BatchJob(
        source, tmp_path / "out", exported["gpt2"], RUN_OPTIONS, RUN_SEED, 2, 1, 4, "auto", True
    )  # the model folder through the object store
    summary = run_job(job)
    output = read_output(tmp_path / "out")
    assert (summary.written, summary.errors) == (len(lines), 7)
    errors = {i: r["error"] for i, r in output.items() if "error" in r}
    assert set(errors) == {
        *("no-prompt", "number", "too-long", "top-p", "unknown"),
        *("prompts.jsonl:9", "prompts.jsonl:14"),  # bad JSON; the id given twice
    }
    assert "context" in errors["too-long"] and "top_p" in errors["top-p"]
    assert "beams" in errors["unknown"] and "JSON" in errors["prompts.jsonl:9"]
    assert "duplicate id 'rec-000'" in errors["prompts.jsonl:14"]
    generator = Generator.from_dir(exported["gpt2"], threads=1)
    assert all(output[r["id"]]["generated_text"] == expected_text(generator, r) for r in good)
    assert output["cut"]["prompt_tokens"] == 128 - RUN_OPTIONS["max_new_tokens"]
    assert output["prompts.jsonl:15"]["generated_text"].startswith("A plain line")
    # the shipped folder: one copy per node named by its digest (reused by later runs), no leftovers
    copies = sorted(p.name for p in Path(tempfile.gettempdir()).glob("*ortgen-model-*"))
    assert f"ortgen-model-{pack_folder(exported['gpt2'])[1]}" in copies
    assert not [name for name in copies if name.startswith(".")]


def test_local_actor_count_batch_size_and_order_do_not_change_output(exported, tmp_path):
    records = mixed_records(48)
    runs = {}
    for actors, batch_size, order in ((1, 1, 1), (2, 5, 1), (2, 16, -1)):
        source = write_jsonl(tmp_path / f"in-{actors}-{batch_size}.jsonl", records[::order])
        out = tmp_path / f"out-{actors}-{batch_size}"
        run_job(
            BatchJob(source, out, exported["gpt_neo"], RUN_OPTIONS, RUN_SEED, actors, 1, batch_size)
        )
        runs[actors, batch_size] = read_output(out)
    first, *others = runs.values()
    assert len(first) == 48 and all(other == first for other in others)


def test_killed_run_resumes_to_the_same_output_without_duplicates(exported, tmp_path):
    records = [{"id": f"r{i}", "prompt": f"A small child {i}"} for i in range(120)]
    source = write_jsonl(tmp_path / "prompts.jsonl", records)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ortgen", "batch", str(source), str(out)]
    command += ["-m", str(exported["gpt2"]), "--batch-size", "2", "--seed", str(RUN_SEED)]
    command += ["-o", "max_new_tokens=48", "-o", "ignore_eos=true"]
    killed = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        while count_lines(out) < len(records) // 2:  # poll: kill half-way through
            assert killed.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.005)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the CLI and its worker processes
        killed.wait()
    assert len(records) // 2 <= len(read_output(out)) < len(records)
    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "already there" in resumed.stderr
    output = read_output(out)
    assert set(output) == {r["id"] for r in records} and not list(out.glob(".*.tmp"))
    reference = tmp_path / "reference"
    run_job(
        BatchJob(
            source,
            reference,
            exported["gpt2"],
            {"max_new_tokens": 48, "ignore_eos": True},
            RUN_SEED,
            2,
            1,
            8,
        )
    )
    assert output == read_output(reference)


def count_lines(folder: Path, pattern: str = "shard-*.jsonl") -> int:
    return sum(p.read_text().count("\n") for p in folder.glob(pattern))


def test_token_counts_and_finish_reasons_are_the_generated_ones(exported, tmp_path):
    """Counts come from the generated ids, not from re-encoding the text; a record whose EOS
    comes early says "stop", one that uses all its tokens says "length"."""
    generator = Generator.from_dir(exported["gpt2"])
    ids = generator.encode("Once upon a time")
    free = generator.generate_ids(ids, max_new_tokens=12, do_sample=False, ignore_eos=True)
    records = [
        {"id": "eos", "prompt": "Once upon a time", "eos_token_id": free[3], "max_new_tokens": 12},
        {"id": "long", "prompt": "Once upon a time", "ignore_eos": True, "max_new_tokens": 12},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    run_job(BatchJob(source, tmp_path / "out", exported["gpt2"], {"do_sample": False}))
    out = read_output(tmp_path / "out")
    assert out["eos"]["generated_tokens"] == free.index(free[3]) + 1
    assert out["eos"]["finish_reason"] == "stop"
    assert (out["long"]["generated_tokens"], out["long"]["finish_reason"]) == (12, "length")
    assert out["long"]["prompt_tokens"] == len(ids)
