"""The runtime ships without torch: `import ortgen` and a whole generation, API and CLI, in a
process where torch and transformers cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class Forbid(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "optimum", "onnx", "ray"}:
                raise ImportError(f"{name} is forbidden in the runtime")
            return None

    sys.meta_path.insert(0, Forbid())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True
    )


def test_import_ortgen_loads_no_torch():
    result = run_python(
        """
        import ortgen, ortgen.cli, ortgen.batch
        heavy = {"torch", "transformers", "optimum", "onnx", "ray"} & set(sys.modules)
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr


def test_generation_runs_without_torch(exported):
    result = run_python(
        f"""
        from ortgen import Generator
        generator = Generator.from_dir({str(exported["gpt_neo"])!r})
        text = generator.generate("Once upon a time", max_new_tokens=16, ignore_eos=True)
        assert len(generator.encode(text)) > 0
        from ortgen.cli import main
        sys.argv = ["ortgen", "generate", "hi", "-m", {str(exported["gpt2"])!r}, "--json"]
        main()
        """
    )
    assert result.returncode == 0, result.stderr
    assert '"generated_text"' in result.stdout
