"""Stand-ins for the executor tests, importable in the jobs' own processes (PYTHONPATH=tests, `--import counting_lm`).

`counting`: the scripted model (scripted_lm.py) that also appends a line, "<pid> <peft or ->", to the file named by
its `counter` model arg each time a cell builds it, i.e. once per cell evaluation.
`fake_finetune`: an instant trainer (`--trainer counting_lm:fake_finetune`, the sweep's documented seam) that
appends "<adapter key> <pid>" to <adapters>/../trained.txt, takes a second (so that concurrent sweeps overlap),
and leaves a finished manifest and an empty model folder.
"""
import os
import time
from pathlib import Path

from lm_eval.api.registry import register_model

from fireact_bench.harness.files import write_json
from scripted_lm import ScriptedLM


@register_model("counting")
class CountingLM(ScriptedLM):
    def __init__(self, counter: str, **kwargs):
        super().__init__(**kwargs)
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()} {kwargs.get('peft', '-')}\n")


def fake_finetune(data, config, out_dir):
    out_dir = Path(out_dir)
    with open(out_dir.parent.parent / "trained.txt", "a") as fh:
        fh.write(f"{out_dir.name} {os.getpid()}\n")
    time.sleep(1)
    (out_dir / "model").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "manifest.json", {"finished": True, "composition": data.composition, "wall_time_s": 1.0,
                                           "peak_rss_mib": 0, "train_loss": 0.0, "tokens_seen": 0})
    return out_dir
