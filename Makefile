# Two commands do all set-up on a fresh clone: `make run` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# The suite runs its files on TEST_WORKERS processes (pytest-xdist), each file's tests in one process, the longest files
# first (tests/conftest.py; --no-loadscope-reorder keeps that order). Three workers on two cores: the SLURM tests and the
# pipelines' subprocesses leave a core waiting that a third worker fills (2026-12-02, same machine and hour: 12 min 40 s
# on 3 workers, 15 min 24 s on 2; README.md has the figures).
TEST_WORKERS ?= 3
# The headline table and its figures; every MNIST table: make run TARGET=reports/quick/summary_mnist.md
TARGET ?= reports/quick/summary_headline.md

.PHONY: setup run test lint smoke bench gpu-check clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,slurm]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} installed, 2.13.0 expected')"
	touch $@

setup: $(VENV)/.installed

# the headless Chromium of the suite's page checks (the DVC plots page, the Snakemake report), from the npm registry
$(VENV)/chromium/chromium: $(VENV)/.installed tests/chromium.py
	$(BIN)/python tests/chromium.py fetch $(VENV)/chromium

# greedy: Snakemake's default ILP scheduler solves an integer program at each step; on the smoke DAG's 98 short jobs the
# greedy one finished in 150-156 s where the ILP one took 162-201 s (2 cores).
SNAKEMAKE := $(BIN)/snakemake --scheduler greedy

run: setup
	$(SNAKEMAKE) --cores $(CORES) $(TARGET)

test: setup $(VENV)/chromium/chromium
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

smoke: setup
	$(SNAKEMAKE) --cores $(CORES) --config profile=smoke -- reports/smoke/summary.md

# snakemake --lint: any finding but the missing conda/container directive fails.
lint: setup
	$(BIN)/snakemake --lint > .lint.txt 2>&1 || true
	@$(BIN)/python -c "import re, sys; t = open('.lint.txt').read(); f = [l.strip() for l in t.splitlines() if re.match(r'\s*\* ', l) and 'conda environment or container' not in l]; print('snakemake --lint:', *(f or ['no findings besides the conda/container directive']), sep='\n  '); sys.exit(1 if f else 0)"
	@rm -f .lint.txt

bench: setup
	$(BIN)/python -m flowvae.bench

# On a CUDA machine (under 8 minutes): device, GPU bench, table 1 trainings with a time box, GPU vs CPU first steps,
# all under reports/gpu/. Without CUDA it says so in one line and exits 0.
gpu-check: setup
	$(BIN)/python -m flowvae.gpucheck

clean-venv:
	rm -rf $(VENV)
