"""`fireact-bench`: one command line over the pipeline's stages (`fireact-eval`, lm-eval's own CLI with this
project plugged in, lives in lmeval/api.py)."""
from __future__ import annotations

import argparse
import sys

from fireact_bench.harness.lmeval.api import eval_main  # noqa: F401  the `fireact-eval` entry point

# Subcommands with argument parsers of their own: name -> (module[:function], help); the function defaults to main
DELEGATED = {
    "teacher": ("fireact_bench.adapters.teacher", "run an LM as the teacher on training questions, keep the correct trajectories"),
    "finetune": ("fireact_bench.adapters.finetune", "FireAct trajectories -> validated training set -> fine-tuned backbone"),
    "benchmark": ("fireact_bench.harness.benchmark.sweep", "run a grid (fine-tuning where needed), resumable; write the leaderboard and plots"),
    "run-cell": ("fireact_bench.harness.benchmark.sweep:run_cell_main", "run one cell of a grid by its id (or train one "
                 "adapter by its key), as each job of `benchmark --executor submitit-local|slurm` does"),
    "leaderboard": ("fireact_bench.harness.benchmark.leaderboard", "rebuild a grid's leaderboard from its cell results"),
    "rescore": ("fireact_bench.harness.benchmark.rescore", "re-score recorded trajectories (FireAct's trajs/*.json or "
                "lm-eval samples JSONL) without a model, over every question of the set they were run on"),
    "regress": ("fireact_bench.harness.benchmark.regress", "re-run the regression slice and compare it with the committed baseline"),
}


def main(argv: list[str] | None = None) -> int | None:
    import importlib

    parser = argparse.ArgumentParser(prog="fireact-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    try:
        module, _, function = DELEGATED[args.command][0].partition(":")
        return getattr(importlib.import_module(module), function or "main")(rest)
    except (ValueError, OSError) as err:  # a bad file or setting, a store that cannot be written: one line that names it
        print(f"fireact-bench {args.command}: {err}", file=sys.stderr)
        return 2
