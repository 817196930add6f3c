# officegrid developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test processes (pytest-xdist): most tests wait on servers, workers and disks, so two processes
# finish the suite in about 60% of the time of one, even on 2 cores. Whole files stay together
# (--dist loadfile), so a file's module-scoped server is started once.
TEST_WORKERS ?= 2

.PHONY: demo test lint deps bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the package metadata changed: a no-op when already installed.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/officegrid demo

test: $(STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check src tests bench examples

# Debian packages the tests and benchmarks need (root). Called by .ci/run, not by `make test`.
deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool rsync dbus-daemon >/dev/null

bench: $(STAMP)
	$(PY) bench/dispatch.py
	$(PY) bench/efficiency.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
