# Two commands do all set-up on a fresh clone: `make run` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
TARGET ?= reports/table1.md

.PHONY: setup run test smoke bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,slurm]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} installed, 2.13.0 expected')"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES) $(TARGET)

test: setup
	$(BIN)/python -m pytest

smoke: setup
	$(BIN)/snakemake --cores $(CORES) --config profile=smoke -- reports/summary.md

bench: setup
	$(BIN)/python -m flowvae.bench

clean-venv:
	rm -rf $(VENV)
