# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
EXTRA_STAMP := $(VENV)/.installed-extra
PYTEST_WORKERS ?= 2
DEMO_DIR ?= runs/demo

.PHONY: venv extras demo test test-fast test-slow lint bench inception wheel clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Optional reference implementations (PyTorch CPU build and friends) for weight conversion,
# parity tests and benchmarks; never needed to train or evaluate.
extras: $(EXTRA_STAMP)

$(EXTRA_STAMP): $(STAMP) requirements-extra.txt
	$(PIP) install -q -r requirements-extra.txt
	$(PIP) install -q pycocotools==2.0.11
	$(PIP) install -q --no-deps panopticapi-lite==0.2.0
	touch $(EXTRA_STAMP)

inception: $(EXTRA_STAMP)
	$(PY) -m fsq_jax.eval.inception convert

demo: $(EXTRA_STAMP)
	$(PY) scripts/demo.py --workdir $(DEMO_DIR) $(DEMO_ARGS)

test: $(EXTRA_STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

test-slow: $(EXTRA_STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(EXTRA_STAMP)
	$(PY) benchmarks/quantizers.py
	$(PY) benchmarks/scenes.py
	$(PY) benchmarks/inception.py
	$(PY) benchmarks/maskgit.py
	$(PY) benchmarks/uvim.py
	$(PY) benchmarks/sharding.py

# The wheel `pip install .` would build (configs/ and scripts/ inside fsq_jax), into dist/.
wheel: $(STAMP)
	$(PIP) wheel . --no-deps --no-build-isolation -q -w dist

clean-venv:
	rm -rf $(VENV)
