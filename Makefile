# ortgen — `make demo` runs the main job, `make test` the tests; both install first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-model

PEERS  := bench/.venv

.PHONY: install test test-runtime demo train default-model lint format bench bench-setup clean

install: $(STAMP)

# torch is pinned to the CPU build on disk; any other torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,export,serve,test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The runtime tier alone in an environment with ortgen[cpu,test] only (no torch, transformers or
# onnx): proves the runtime install is enough. CI runs it after the full suite.
RUNTIME := .venv-runtime
test-runtime:
	$(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/pip install --quiet --upgrade pip
	$(RUNTIME)/bin/pip install --quiet -e '.[cpu,test]'
	$(RUNTIME)/bin/python -c "import importlib.util as u, sys; \
		sys.exit(' '.join(m for m in ('torch', 'transformers', 'onnx') if u.find_spec(m)) or None)"
	$(RUNTIME)/bin/python -m pytest -q tests/runtime

# Exports the committed trained GPT-2 checkpoint (int8, parity-checked), streams text, tokens/s.
demo: $(STAMP)
	$(BIN)/python examples/demo.py $(DEMO)

# The trained checkpoints (committed) and the default model bundled in the package, from scratch:
# about 25 minutes on 2 cores.
train: $(STAMP)
	$(BIN)/python -m training.train --arch gpt2 --out training/checkpoints/gpt2
	$(BIN)/python -m training.train --arch gpt_neo --out training/checkpoints/gpt_neo

default-model: $(STAMP)
	$(BIN)/ortgen export training/checkpoints/gpt2 ortgen/models/default --precision int8 --force

lint: $(STAMP)
	$(BIN)/ruff check ortgen export tests bench examples training
	$(BIN)/ruff format --check ortgen export tests bench examples training

format: $(STAMP)
	$(BIN)/ruff format ortgen export tests bench examples training
	$(BIN)/ruff check --fix ortgen export tests bench examples training

# The peers (transformers PyTorch, optimum, CTranslate2) live in their own environment, never in
# the test install.
bench-setup: $(STAMP)
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet torch==2.13.0
	$(PEERS)/bin/pip install --quiet 'transformers>=4.45,<4.58' optimum-onnx onnxruntime ctranslate2

bench: $(STAMP)
	$(BIN)/python -m bench.run --rounds 5
	$(BIN)/python -m bench.batching --rounds 5

clean:
	rm -rf $(VENV) $(RUNTIME) $(PEERS) $(DEMO) $(DEMO)-checkpoint bench/work .pytest_cache
