"""`ortgen export` never deletes what the user did not ask to delete, never leaves a partial or
hidden folder behind (errors, SIGTERM, SIGKILL + rerun), and refuses a concurrent export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from test_cli import assert_one_line_error, run

# The real CLI in a child process, paused (holding its lock and staging folder) when the "check"
# stage starts: it prints "paused" and waits for a line on stdin. Nothing of the export is faked.
_PAUSED_EXPORT = """
import sys
from ortgen import progress
start = progress.StageProgress.start
def paused(self, name):
    start(self, name)
    if name == "check":
        print("paused", flush=True)
        sys.stdin.readline()
progress.StageProgress.start = paused
from ortgen.cli import main
sys.argv = ["ortgen", "export", *sys.argv[1:]]
main()
"""


def paused_export(source: Path, out: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_EXPORT, str(source), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "paused\n", child.communicate()
    return child


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_force_never_replaces_the_source(checkpoints, tmp_path):
    source = tmp_path / "proj" / "ckpt"
    source.parent.mkdir()
    subprocess.run(["cp", "-r", str(checkpoints["gpt2"]), str(source)], check=True)
    (tmp_path / "proj" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "proj")
    for out in (source, source.parent, tmp_path):
        result = run("export", str(source), str(out), "--force")
        assert_one_line_error(result, 1, "is or contains the source checkpoint")
    assert snapshot(tmp_path / "proj") == before
    assert hidden(tmp_path) == [] and hidden(tmp_path / "proj") == []


def test_force_refuses_a_folder_that_is_not_a_model_folder(checkpoints, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    result = run("export", str(checkpoints["gpt2"]), str(out), "--force")
    assert_one_line_error(result, 1, "not an ortgen model folder (no ortgen.json) and not empty")
    assert snapshot(out) == {"holiday.jpg": b"\xff\xd8"} and hidden(tmp_path) == []


def test_force_replaces_a_model_folder_or_an_empty_one(checkpoints, tmp_path):
    model, empty = tmp_path / "model", tmp_path / "empty"
    empty.mkdir()
    model.mkdir()
    (model / "ortgen.json").write_text("{}")
    (model / "stale.bin").write_bytes(b"old")
    for out in (model, empty):
        result = run("export", str(checkpoints["gpt2"]), str(out), "--force")
        assert result.exit_code == 0, result.output
        assert (out / "model.onnx").is_file() and not (out / "stale.bin").exists()
    assert hidden(tmp_path) == []


def test_result_permissions_follow_the_umask(checkpoints, tmp_path):
    previous = os.umask(0o027)
    try:
        result = run("export", str(checkpoints["gpt2"]), str(tmp_path / "out"))
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750  # mkdtemp alone gives 0700


def test_unwritable_output_dir_is_refused_on_a_read_only_path(checkpoints):
    # /proc refuses writes to everyone, root included (CI runs as root, where a mode-0555 folder
    # would not stop anything): the check happens before the model is loaded.
    result = run("export", str(checkpoints["gpt2"]), "/proc/ortgen-out")
    assert_one_line_error(result, 1, "cannot write to /proc")


def test_sigterm_mid_export_leaves_nothing(checkpoints, tmp_path):
    out = tmp_path / "out"
    child = paused_export(checkpoints["gpt2"], out)
    assert any(name.startswith(".out.partial-") for name in hidden(tmp_path))  # really mid-way
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate()
    assert child.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no out, no staging folder, no lock file


def test_sigkill_leftovers_are_removed_by_the_next_export(checkpoints, tmp_path):
    out = tmp_path / "out"
    child = paused_export(checkpoints["gpt2"], out)
    child.kill()
    child.communicate()
    leftovers = hidden(tmp_path)
    assert any(name.startswith(".out.partial-") for name in leftovers), leftovers
    result = run("export", str(checkpoints["gpt2"]), str(out))
    assert result.exit_code == 0, result.output
    assert hidden(tmp_path) == [] and (out / "ortgen.json").is_file()


def test_concurrent_export_to_the_same_folder_is_refused(checkpoints, tmp_path):
    out = tmp_path / "out"
    first = paused_export(checkpoints["gpt2"], out)
    try:
        second = run("export", str(checkpoints["gpt_neo"]), str(out), "--force")
        assert_one_line_error(second, 1, f"another export to {out} is running")
        partials = [n for n in hidden(tmp_path) if n.startswith(".out.partial-")]
        assert len(partials) == 1  # the first export's staging folder is untouched
    finally:
        _, stderr = first.communicate("\n")
    assert first.returncode == 0, stderr
    assert '"architecture": "gpt2"' in (out / "ortgen.json").read_text()  # the first one won
    assert hidden(tmp_path) == []
