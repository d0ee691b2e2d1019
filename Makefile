# fastattn: `make bench` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# On a machine without a GPU, a CPU build of torch; never replace a torch already in the venv.
TORCH_CPU_SPEC ?= torch==2.13.0
DEPS   := triton numpy pytest pytest-xdist hypothesis datasets pybind11 ninja tqdm matplotlib pyyaml transformers tokenizers safetensors
BENCH_ARGS ?=
TEST_ARGS  ?= -m "not slow"
# Two cores here: two pytest workers.
TEST_WORKERS ?= 2

.PHONY: venv build bench test test-portable check-wheel check-cuda gpu-check fuzz info clean
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
	$(PY) -c "import fastattn, sys; r = fastattn.extension_error(); sys.exit('the fastattn extension failed to load: ' + r if r else 0)"

bench: build
	$(PY) -m fastattn bench $(BENCH_ARGS)

test: build
	$(PY) -m pytest -n $(TEST_WORKERS) $(TEST_ARGS)
	$(RUN_PORTABLE_TESTS)

# The CPU kernels' portable paths (what machines without AVX-512 run): the build holds a portable
# variant of the extension (fastattn._C, x86-64-v3: AVX2) next to the AVX-512 one
# (fastattn._C_avx512); FASTATTN_CPU_VARIANT=portable makes fastattn load the portable one, and the
# op tests for the cpu backend run on it. x86-64 hosts only (elsewhere only one variant is built).
PORTABLE_TESTS := tests/test_ext.py tests/test_softmax_attention.py tests/test_relu_attention.py \
                  tests/test_topk_attention.py tests/test_adaptive_span_attention.py
define RUN_PORTABLE_TESTS
@if [ "$$(uname -m)" != x86_64 ]; then echo "test-portable: x86-64 builds only; skipped on $$(uname -m)"; exit 0; fi; \
set -e; \
FASTATTN_CPU_VARIANT=portable $(PY) -c "from fastattn import _ext; i = _ext.build_info(); \
    assert i.get('variant') == 'portable' and not i['cpu_features'], f'not the portable variant: {i} {_ext.extension_error()}'; \
    print('test-portable: fastattn._C, the portable variant (x86-64-v3), no AVX-512 paths')"; \
FASTATTN_CPU_VARIANT=portable $(PY) -m pytest -n $(TEST_WORKERS) -q -p no:cacheprovider -m "not slow and not gpu" \
    -k "not triton" $(PORTABLE_TESTS)
endef

test-portable: build
	$(RUN_PORTABLE_TESTS)

# The CUDA build a GPU user gets, compiled and loaded here without a GPU (.ci/check_cuda.py): a venv in
# ~/.cache with PyPI's CUDA torch of the test venv's version (~2.2 GB, downloaded once), the README's
# install command in a copy under build/cuda, then every stage the dispatch table runs on cuda is
# checked for a CUDA kernel with its CPU kernel's signature.
check-cuda: venv
	$(PY) .ci/check_cuda.py --torch "$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')"

# Everything a GPU can tell, in one run of at most ~8 min on an H100/H200 (.ci/gpu_check.py): a venv on
# GPU_PYTHON's site packages (the machine's torch and triton, nothing big downloaded), the build, the
# gpu-marked tests, the GPU bench -> bench/results/<gpu>/. `make gpu-check --dry-run` lists the steps
# (and runs on any machine); GPU_CHECK_ARGS passes options (--budget SECONDS, --skip-build).
GPU_PYTHON ?= python3
gpu-check:
	+$(GPU_PYTHON) .ci/gpu_check.py $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run) $(GPU_CHECK_ARGS)

# Property-based fuzzing (issue 21): thousands of random calls per op and backend against the reference,
# every hostile call, in worker processes (a crash or hang is reported with its input). ~10 min on 2
# quiet cores; failing inputs in build/fuzz/failures.jsonl. FUZZ_ARGS e.g. "--cases 500 --seed 1", or
# "--replay build/fuzz/failures.jsonl --out build/fuzz/again.jsonl" to rerun the failing cases after a fix.
FUZZ_ARGS ?=
fuzz: build
	rm -f build/fuzz/failures.jsonl
	$(PY) -m tests.fuzz --out build/fuzz/failures.jsonl $(FUZZ_ARGS)

info: build
	$(PY) -m fastattn info

# A wheel of this checkout, installed in a fresh venv outside it: info, a 20-step train, generate
# (.ci/check-wheel; a file read from the checkout fails it).
check-wheel: venv
	.ci/check-wheel $(abspath $(PY))

clean:
	rm -rf build *.egg-info fastattn/_C*.so
