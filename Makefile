# Every target creates and reuses .venv itself: a fresh clone needs nothing else.
PY ?= python3
# pytest-xdist workers for `make test` (tests/conftest.py says how the tests are grouped); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo demo-cluster bench soak plots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sim,lab,gateway,test,lint,dask,cluster]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check aicp tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python -m aicp demo

# its run folder (logs, keys) is removed after a success and kept (path printed) after a failure; KEEP=1 keeps it always
demo-cluster: $(STAMP)
	$(BIN)/python -m aicp.lab.demo_cluster $(if $(filter-out 0,$(KEEP)),--keep)

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
