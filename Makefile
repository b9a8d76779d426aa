# The README's commands. Everything runs inside .venv, created on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYX    := $(wildcard ext/*.pyx) $(wildcard engine/_native/*.pxd) $(wildcard bindings/*.pxd) $(wildcard bindings/include/*.h)
PYX    += $(wildcard ext/*.pxi) $(wildcard ext/include/*.pxd) $(wildcard ext/include/*.h)
PYTEST_ARGS ?=
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install build demo test test-slow bench bench-compare lint profile clean

# ENGINE_NO_EXTENSIONS=1: the extension is compiled once, by $(VENV)/.built below (the editable
# install would compile it in a scratch directory, then build_ext --inplace again; on a fresh
# clone with 2 busy cores that was 1m58s for the install and 1m24s for the second compile).
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.1,<4"
	$(BIN)/python -m pip uninstall -q -y agent-engine 2>/dev/null || true  # the old name
	ENGINE_NO_EXTENSIONS=1 $(BIN)/python -m pip install -q --no-build-isolation -e '.[all]' --group dev
	touch $@

install: $(STAMP)

# Rebuild the extension when any .pyx/.pxd/.h changed (cythonize skips unchanged modules).
# ENGINE_REQUIRE_NATIVE=1: here a compile error fails the build (a user's `pip install`
# falls back to pure Python with a warning instead; see setup.py).
$(VENV)/.built: $(STAMP) $(PYX) setup.py
	ENGINE_REQUIRE_NATIVE=1 $(BIN)/python setup.py -q build_ext --inplace -j $(JOBS)
	touch $@

build: $(VENV)/.built

demo: build
	$(BIN)/engine demo

# Line coverage of engine/ is reported at the end (COV= turns it off).
COV ?= --cov=engine --cov-report=term
test: build
	$(BIN)/python -m pytest $(COV) $(PYTEST_ARGS)

test-slow: build
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Peers (autogen-core, hnswlib) live in the `compare` extra; benches run them in the same run.
$(VENV)/.compare: $(STAMP)
	$(BIN)/python -m pip install -q "pybind11>=2.10"  # hnswlib builds from source against it
	$(BIN)/python -m pip install -q -e '.[all,compare]' --group dev --no-build-isolation
	touch $@

bench: build $(VENV)/.compare
	$(BIN)/python -m pytest benches $(PYTEST_ARGS)

# The regression gate (docs/ci-gate.md): `make bench-compare REF=main [BENCH_ARGS="-k router"]`.
REF ?= main
BENCH_ARGS ?=
bench-compare: build $(VENV)/.compare
	$(BIN)/engine bench --compare $(REF) $(BENCH_ARGS)

# Profile a scenario under scalene (profiles/README.md): `make profile SCENARIO=routing`.
SCENARIO ?= routing
profile: build
	$(BIN)/engine profile $(SCENARIO)

lint: install
	$(BIN)/ruff check engine tests benches
	$(BIN)/mypy

clean:
	rm -rf build $(VENV) engine/_native/*.so ext/*.c ext/*.html
