# Quick start: `make demo` (creates .venv, installs, runs the demo), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-portable bench docs-figures clean

install: $(STAMP)

# constraints.txt pins the torch/torchvision pair that imports on the project's machines;
# pyproject.toml keeps loose ranges for everyone else (see README, "Installing elsewhere").
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# torchattacks pins requests~=2.25 (idna<3), which clashes with huggingface_hub; it never
	# imports requests, so its own dependencies (torch, torchvision, numpy, scipy, tqdm) suffice
	$(PY) -m pip install --quiet --no-deps 'torchattacks==3.5.1'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/csc train --out out/demo

# Two pytest-xdist workers of one thread each (measured in one session on 2 cores: 600-637 s, against
# 682-946 s for one process of two threads; small tensors use a second thread poorly). Tests sharing a
# trained model run on one worker (tests/conftest.py). WORKERS=0: one process.
WORKERS ?= 2
XDIST = $(if $(filter 0,$(WORKERS)),-p no:xdist,-n $(WORKERS) --dist loadgroup)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(XDIST)

# The suite must not depend on one machine's floating-point path: run it on one thread, on two (one
# process), and with ATen's portable (non-SIMD) kernels. Each run must be green (CI runs `make test`).
test-portable: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(XDIST)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -p no:cacheprovider -p no:xdist
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(XDIST)

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" $(XDIST)

# The CSC-CTRL pictures: trains recipes/ctrl_digits.toml for CSC-CTRL and CTRL (~7 + 3 min), then csc inspect
docs-figures: $(STAMP)
	$(PY) docs/make_figures.py

bench: $(STAMP)
	$(PY) benchmarks/layer_speed.py

clean:
	rm -rf $(VENV) out .pytest_cache
