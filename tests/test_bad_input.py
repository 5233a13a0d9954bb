"""Bad grids, question files and results folders get one line naming the file and field, not a traceback."""
import json

import pytest
import yaml

import scripted_lm  # noqa: F401  registers the `scripted` lm-eval model
from fireact_bench.harness.benchmark.grid import load_grid
from fireact_bench.harness.benchmark.sweep import sweep
from fireact_bench.harness.cli import main
from fireact_bench.harness.data.questions import jsonl

SCRIPTED = {"name": "scripted", "inner": "scripted", "model_args": {"answer": "yes"}}


def _grid(tmp_path, **fields):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "limit": 2, "models": [SCRIPTED], "prompting": ["io"],
                                    "datasets": ["strategyqa"], **fields}))
    return str(path)


@pytest.mark.parametrize("fields, message", [
    ({"limit": True}, "field 'limit' must be a positive integer"),
    ({"seeds": []}, "field 'seeds' must list integers"),
    ({"seeds": None}, "field 'seeds' must list integers"),
    ({"prompting": []}, "the grid has no cells"),
    ({"noise_p": "high"}, "field 'noise_p' must be a probability"),
    ({"noise_p": 2.0}, "field 'noise_p' must be a probability"),
    ({"finetuning": {"config": {"lr": "fast"}}, "models": [{**SCRIPTED, "inner": "hf"}]}, "finetuning.config: field 'lr'"),
    ({"finetuning": {"config": {"epochs": True}}, "models": [{**SCRIPTED, "inner": "hf"}]}, "finetuning.config: field 'epochs'"),
    ({"finetuning": {"sizes": []}, "models": [{**SCRIPTED, "inner": "hf"}]}, "sizes are positive integers"),
])
def test_bad_grids_are_refused_with_file_and_field(tmp_path, capsys, fields, message):
    path = _grid(tmp_path, **fields)
    with pytest.raises(ValueError, match=message) as err:
        load_grid(path)
    assert str(err.value).startswith(path)
    assert main(["benchmark", "--grid", path, "--list"]) == 2  # the command: one line, no traceback
    err_out = capsys.readouterr().err
    assert message.split(":")[-1].strip() in err_out and "Traceback" not in err_out and len(err_out.strip().splitlines()) == 1


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "question": "Q?", "answer": "A"}', '{"id": "a", "question": "R?", "answer": "B"}'], ":2: id 'a' repeats line 1"),
    (['{"question": "", "answer": "A"}'], ":1: field 'question' is missing, empty or not text"),
    (['{"question": "Q?", "answer": "  "}'], ":1: field 'answer' is missing, empty or not text"),
    (['{"question": "Q?", "answer": true}'], ":1: field 'answer' is missing, empty or not text"),
    (['["Q?", "A"]'], ":1: expected an object"),
    (['{"question": "Q?", "answer": "A", "kind": "essay"}'], ":1: field 'kind' must be one of"),
    (['', '{"question": "Q?", "answer": "A",'], ":2: not valid JSON"),
])
def test_bad_question_files_name_the_line(tmp_path, lines, message):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"^{path}{message}"):
        jsonl(str(path))


def test_a_latin1_question_file_is_named(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(json.dumps({"question": "Qui a peint la Joconde ?", "answer": "Léonard"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{path}: not UTF-8 text"):
        jsonl(str(path))


def test_a_read_only_results_folder_is_refused_before_any_cell_runs(tmp_path, monkeypatch):
    """EROFS on the cells folder (a chmod would not stop root, who runs CI)."""
    import errno

    from fireact_bench.harness import files
    from fireact_bench.harness.benchmark import sweep as sweep_module

    real = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: real(src, dst) if "cells" not in str(dst)
                        else (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    monkeypatch.setattr(sweep_module, "run_cell", lambda *a: pytest.fail("a cell ran before the store was checked"))
    with pytest.raises(OSError, match="cannot write .*cells"):
        sweep(_grid(tmp_path), tmp_path / "results", progress=False)


def test_a_full_disk_ends_the_sweep_with_one_line_and_no_temp_files(tmp_path, monkeypatch, capsys):
    """ENOSPC from every write into the cells folder once the sweep has started (a disk that fills up)."""
    import errno

    from fireact_bench.harness import files

    real = files.os.replace
    results = tmp_path / "results"

    def full(src, dst):
        if "cells" in str(dst) and ".write-probe" not in str(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    assert main(["benchmark", "--grid", _grid(tmp_path), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fireact-bench benchmark: [Errno 28] cannot write") and str(results / "cells") in err[-1]
    assert not [p for p in (results / "cells").iterdir() if p.name.endswith(".tmp")]
