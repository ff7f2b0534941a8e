# ortgen — `make demo` runs the main job, `make test` the tests; both install first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-model

PEERS  := bench/.venv

.PHONY: install test test-runtime demo train default-model lint format bench bench-setup bench-setup-server \
	bench-serving bench-under-load bench-large clean

install: $(STAMP)

# torch is pinned to the CPU build on disk; any other torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml $(wildcard native/*.c native/*.h native/avx2/*.c)  # the native kernels compile at install
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,export,serve,test,ray]'
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

# The peers (transformers PyTorch, optimum, CTranslate2, llama.cpp) live in their own environment,
# never in the test install. llama.cpp comes from the llama-cpp-python source distribution (PyPI),
# compiled for this CPU; its vendored llama.cpp also gives convert_hf_to_gguf.py and llama-server.
LLAMA_CPP    := 0.3.36
SDIST        := bench/work/sdist/llama_cpp_python-$(LLAMA_CPP).tar.gz
LLAMA_SRC    := bench/work/llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp
LLAMA_SERVER := bench/work/llama-server/bin/llama-server
# Native build without AMX: its int8 kernels segfault on prompts (ggml_backend_amx_mul_mat) on this
# machine's Xeon. Explicit -mno flags win over -march=native; on CPUs without AMX they change nothing.
NO_AMX       := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_ENV    := CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" CMAKE_ARGS="-DGGML_NATIVE=ON"

bench-setup: $(PEERS)/.installed $(PEERS)/.llama-cpp-$(LLAMA_CPP) $(LLAMA_SERVER)

$(PEERS)/.installed: | $(STAMP)
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet torch==2.13.0
	$(PEERS)/bin/pip install --quiet 'transformers>=4.45,<4.58' optimum-onnx onnxruntime ctranslate2 \
		sentencepiece 'protobuf<5'
	touch $@

$(SDIST): | $(STAMP)
	$(BIN)/pip download --quiet --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP) \
		-d $(dir $@)

$(LLAMA_SRC)/convert_hf_to_gguf.py: $(SDIST)
	tar -xzf $(SDIST) -C bench/work
	touch $@

# 8–13 minutes on 2 busy cores: the whole of llama.cpp is compiled (llama-server: as long again).
$(PEERS)/.llama-cpp-$(LLAMA_CPP): $(PEERS)/.installed $(SDIST) $(LLAMA_SRC)/convert_hf_to_gguf.py
	$(PEERS)/bin/pip uninstall --quiet --yes llama-cpp-python
	$(LLAMA_ENV) $(PEERS)/bin/pip install --quiet --no-cache-dir --no-binary llama-cpp-python \
		$(SDIST)
	$(PEERS)/bin/pip install --quiet $(LLAMA_SRC)/gguf-py
	touch $@

# llama.cpp's own server (continuous batching), the serving peer; not llama_cpp.server.
bench-setup-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): $(LLAMA_SRC)/convert_hf_to_gguf.py
	$(LLAMA_ENV) cmake -S $(LLAMA_SRC) -B bench/work/llama-server -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
	cmake --build bench/work/llama-server --target llama-server -j 2
	$@ --help > /dev/null

# A partial run: make bench BENCH_ARGS="--rounds 1 --arch gpt2 --systems ortgen-int8 llamacpp-q8_0"
BENCH_ARGS ?= --rounds 5
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.batching --rounds 5
	$(MAKE) bench-serving

# 1, 4, 16, 64 concurrent streaming clients: ortgen serve vs llama-server on the same GGUF q8_0
# (built if missing). About 4 minutes.
bench-serving: $(STAMP) $(LLAMA_SERVER)
	$(BIN)/python -m bench.serving --llama-server $(LLAMA_SERVER)

# W1 idle and with busy processes on the cores: ortgen's spin settings and llama.cpp (~5 minutes)
bench-under-load: $(STAMP)
	$(BIN)/python -m bench.under_load

# gpt2-large and gpt-neo-1.3B (random weights, real configs) at fp32 / int8 / int4: export time and
# peak RSS, folder size, W1 tokens/s. About 30 minutes and 25 GB of disk under bench/work.
bench-large: $(STAMP)
	$(BIN)/python -m bench.large_models

clean:
	rm -rf $(VENV) $(RUNTIME) $(PEERS) $(DEMO) $(DEMO)-checkpoint bench/work .pytest_cache
