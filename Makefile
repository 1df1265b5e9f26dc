# Every target creates and reuses .venv itself: a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench soak plots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sim,lab,gateway,test,lint,dask,cluster]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check aicp tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python -m aicp demo

bench: $(STAMP)
	$(BIN)/python -m aicp bench-core
	$(BIN)/python -m aicp bench-sim
	$(BIN)/python -m aicp bench --also-1000 --baseline

soak: $(STAMP)
	$(BIN)/python -m aicp soak

plots: $(STAMP)
	$(BIN)/python -m aicp plots

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
