# tesla_tf: `make test`, `make demo` and `make bench` create .venv on first use, then run.
#   make test PYTEST_ARGS='-k flat -x'          extra pytest arguments (TEST_WORKERS=0: no worker processes)
#   make demo ARGS='--flag=value'               extra flags for the tool (demo and bench)
#   make test REQUIREMENTS=requirements-cpu.txt force a requirements file

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# A GPU machine is one where nvidia-smi lists a device.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
REQUIREMENTS ?= $(if $(HAS_GPU),requirements.txt,requirements-cpu.txt)
# One stamp per requirements file: pip runs again only when that file or pyproject.toml is newer than it.
STAMP := $(VENV)/.installed-$(basename $(notdir $(REQUIREMENTS)))

.PHONY: help venv test demo bench bench-quality bench-scaling bench-experts bench-jit bench-test clean distclean

help:
	@echo "make test    run the test suite (pytest -q tests); PYTEST_ARGS='...' adds arguments"
	@echo "make demo    run tools/demo.py; ARGS='...' adds flags"
	@echo "make bench   run tools/benchmark.py; ARGS='...' adds flags"
	@echo "make bench-quality  run tools/benchmark_quality.py (resumable; cache in ~/.cache/tesla_tf/quality)"
	@echo "make bench-scaling  run tools/benchmark_scaling.py (resumable; docs/scaling_results.json)"
	@echo "make bench-experts  run tools/benchmark_experts.py; make bench-jit  run tools/benchmark_jit.py"
	@echo "make bench-test     the benchmarks' smoke tests (tests/test_bench.py, tests/test_quality.py)"
	@echo "make venv    create/update $(VENV) from $(REQUIREMENTS)$(if $(HAS_GPU), (GPU found), (no GPU)), then pip install -e ."
	@echo "make clean   remove caches and demo output; make distclean also removes $(VENV)"

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(REQUIREMENTS) pyproject.toml | $(PY)
# The two files hold different TensorFlow wheels sharing one package dir: never mix them in one venv.
	@for s in $(VENV)/.installed-*; do \
	  if [[ -e "$$s" && "$$s" != "$@" ]]; then \
	    echo "$(VENV) was built from another requirements file ($${s##*/.installed-}); rebuilding it"; \
	    rm -rf $(VENV); $(PYTHON) -m venv $(VENV); break; \
	  fi; \
	done
	$(PY) -m pip install -r $(REQUIREMENTS)
# The project itself, editable: the tools, the tests and `import tesla_tf` read this checkout through it.
	$(PY) -m pip install --no-deps -e .
	touch $@

# Test files are shared out to TEST_WORKERS processes (pytest-xdist), whole files per worker so that a
# module's fixtures are built once: on 2 cores 8 min instead of 13 (TEST_WORKERS=0 runs in this process).
TEST_WORKERS ?= 2

test: $(STAMP)
	@rc=0; $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(PYTEST_ARGS) || rc=$$?; \
	if [[ $$rc -eq 5 ]]; then echo "make test: FAILED, pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

# Fashion-MNIST for the demo: the Debian package (installed here when root with apt-get), else TFDS.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

demo: $(STAMP)
	@if [[ ! -f $(FASHION_MNIST) ]] && [[ $$(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then \
	  echo "Fashion-MNIST missing: apt-get install dataset-fashion-mnist"; \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist) || true; \
	fi
	@download=; [[ -f $(FASHION_MNIST) ]] || download=--download; \
	echo "$(PY) tools/demo.py $$download $(ARGS)"; $(PY) tools/demo.py $$download $(ARGS)

bench: $(STAMP)
	$(PY) tools/benchmark.py $(ARGS)

bench-quality: $(STAMP)
	$(PY) tools/benchmark_quality.py $(ARGS)

bench-scaling: $(STAMP)
	$(PY) tools/benchmark_scaling.py $(ARGS)

bench-experts: $(STAMP)
	$(PY) tools/benchmark_experts.py $(ARGS)

bench-jit: $(STAMP)
	$(PY) tools/benchmark_jit.py $(ARGS)

bench-test: $(STAMP)
	$(PY) -m pytest -q tests/test_bench.py tests/test_quality.py $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache demo_run
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
