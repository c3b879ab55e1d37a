# All set-up lives here: `make demo` and `make test` work on a fresh clone and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The pinned torch installs a CPU wheel from local disk; an unpinned one would pull a CUDA build.
TORCH  := torch==2.13.0
DEMO_OUT ?= neuronscope-demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/neuronscope demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
