# Two commands for a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo demo-pretrained test test-fast bench clean

install: $(STAMP)

# pip is pinned to the registry's torch>=2.14 build so torchvision always matches it
# (a local CPU-only 2.13 wheel on some machines would break torchvision::nms).
$(STAMP): setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/vldistill run configs/demo.yaml run_dir=runs/demo

demo-pretrained: install
	$(BIN)/vldistill run configs/demo_pretrained.yaml run_dir=runs/demo_pretrained

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf runs .pytest_cache
