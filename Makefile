# fastattn: `make bench` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# On a machine without a GPU, a CPU build of torch; never replace a torch already in the venv.
TORCH_CPU_SPEC ?= torch==2.13.0
DEPS   := triton numpy pytest pytest-xdist datasets pybind11 ninja tqdm matplotlib pyyaml
BENCH_ARGS ?=
TEST_ARGS  ?= -m "not slow"
# Two cores here: two pytest workers.
TEST_WORKERS ?= 2

.PHONY: venv build bench test info clean
all: test

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    $(PIP) install -q torch; \
	else \
	    $(PIP) install -q "$(TORCH_CPU_SPEC)"; \
	fi
	$(PIP) install -q $(DEPS)
	touch $@

venv: $(VENV)/.deps

# Incremental: ninja rebuilds only what changed.
build: venv
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import fastattn, sys; r = fastattn.extension_error(); sys.exit('fastattn._C failed to load: ' + r if r else 0)"

bench: build
	$(PY) -m fastattn bench $(BENCH_ARGS)

test: build
	$(PY) -m pytest -n $(TEST_WORKERS) $(TEST_ARGS)

info: build
	$(PY) -m fastattn info

clean:
	rm -rf build *.egg-info fastattn/_C*.so
