"""findings.md: each of FireAct's findings as a table, the paper's number beside ours, from a grid's cell results."""
import pytest

from fireact_bench.harness.benchmark import findings, leaderboard


def _result(method, em, dataset="hotpotqa", noise="clean", methods="react", tasks="hotpotqa", size=499, model="m"):
    adapter = None if method != "ft" else {"methods": methods, "tasks": tasks, "size": None, "seed": 0}
    cell = {"model": {"name": model, "inner": "hf", "price": None}, "method": method, "dataset": dataset, "noise": noise,
            "seed": 0, "limit": len(em), "noise_p": 0.5, "adapter": adapter}
    per_q = [{"id": f"{dataset}-{i}", "em": float(e), "f1": float(e), "finished": 1.0, "steps": 2.0, "format_errors": 0.0}
             for i, e in enumerate(em)]
    return {"cell_id": f"{method}{dataset}{noise}{methods}{tasks}{size}", "cell": cell, "per_question": per_q,
            "adapter": adapter and {**adapter, "composition": {"size": size}}}


def _ones(k, n=20):
    return [1] * k + [0] * (n - k)


def test_each_finding_gets_its_table_with_paired_comparisons():
    results = [
        _result("react", _ones(0)), _result("ft", _ones(10)),  # the central comparison
        _result("ft", _ones(4), size=100), _result("ft", _ones(6), size=200),  # data scaling (with the 499 above)
        _result("ft", _ones(12), methods="react+cot"), _result("ft", _ones(9), methods="all"),  # method mix
        _result("ft", _ones(11), tasks="multitask"),  # task mix, held-in ...
        _result("react", _ones(2), dataset="bamboogle"), _result("ft", _ones(3), dataset="bamboogle"),
        _result("ft", _ones(5), dataset="bamboogle", tasks="multitask"),  # ... and held-out
        _result("react", _ones(0), noise="none"), _result("ft", _ones(5), noise="none"), _result("ft", _ones(8), noise="random"),
    ]
    found = findings.tables(results)
    assert set(found) == {"central", "data_scaling", "method_mix", "generalization", "noise"}

    (central,) = found["central"]
    assert central["size"] == 499 and central["tuned"]["em"] == 0.5 and central["prompted"]["em"] == 0.0
    assert central["versus"]["delta"] == 0.5 and central["versus"]["mcnemar_p"] == pytest.approx(2 / 1024, rel=1e-4)

    assert [(r["size"], r["em"]) for r in found["data_scaling"]] == [(100, 0.2), (200, 0.3), (499, 0.5)]
    assert found["data_scaling"][0]["versus_smaller"] is None and found["data_scaling"][2]["versus_smaller"]["delta"] == 0.2

    mix = {r["methods"]: r for r in found["method_mix"]}
    assert list(mix) == ["react", "react+cot", "all"] and mix["react+cot"]["paper"] == 41.0
    assert mix["react"]["versus_react"] is None and mix["all"]["versus_react"]["delta"] == pytest.approx(-0.05)

    general = {r["dataset"]: r for r in found["generalization"]}
    assert general["hotpotqa"]["held_in"] and not general["bamboogle"]["held_in"]
    assert general["hotpotqa"]["standing"] == "held-in" and general["bamboogle"]["standing"] == "held-out"
    assert general["bamboogle"]["versus"]["delta"] == pytest.approx(0.1) and general["bamboogle"]["prompted"]["em"] == 0.1
    assert general["bamboogle"]["paper"] == {"few-shot react": 40.8, "ft react/hotpotqa": 44.0, "ft react/multitask": 43.2}

    noise = {r["method"]: r for r in found["noise"]}
    assert set(noise) == {"few-shot react", "ft react/hotpotqa"}  # only methods run under a noisy tool
    tuned = noise["ft react/hotpotqa"]["noises"]  # of the largest adapter (499), not the data-scaling ones
    assert tuned["clean"]["em"] == 0.5 and tuned["none"]["relative_drop"] == 0.5 and tuned["random"]["relative_drop"] == 0.2
    assert tuned["none"]["versus_clean"]["delta"] == pytest.approx(-0.25)
    assert noise["few-shot react"]["noises"]["none"]["relative_drop"] is None  # 0 EM clean: no relative drop
    assert noise["ft react/hotpotqa"]["paper"] == {"clean": 39.2, "none": 33.6, "random": 37.2}

    md = findings.markdown(found)
    assert "| model | few-shot ReAct | fine-tuned ReAct (trajectories) | Δ |" in md
    assert "| m | 0.0 (0.0–16.1) | 50.0 (29.9–70.1) (499) | +50.0 (+27.5 to +72.5), p 0.002 |" in md
    assert "| m | 499 | 50.0 (29.9–70.1) | +20.0 (+2.0 to +38.0), p 0.12 |" in md  # 4 only-499 questions, 0 the other way
    assert "| m | ft react/hotpotqa | none | 33.6 | 25.0 (11.2–46.9) | 50.0 | -25.0" in md


def test_strategyqa_and_mmlu_are_held_out_of_hotpotqa_data_only():
    # they are in the multi-task data (FireAct's table 5), so "held-out" would misread the multi-task column
    from fireact_bench.harness.benchmark.plots import standing

    assert [standing(d) for d in ("hotpotqa", "bamboogle", "strategyqa", "mmlu")] == \
        ["held-in", "held-out", "in multitask data only", "in multitask data only"]


def test_a_grid_without_a_finding_s_rows_gets_no_table(tmp_path):
    assert findings.tables([_result("react", _ones(1)), _result("io", _ones(2))]) == {}
    only_central = findings.tables([_result("react", _ones(1)), _result("ft", _ones(2))])
    assert set(only_central) == {"central"}
    assert "## Fine-tuning against few-shot prompting" in findings.markdown(only_central)
    assert "## Noisy tools" not in findings.markdown(only_central)


def test_the_leaderboard_writes_findings_md_beside_it(tmp_path):
    from test_stats import _result as board_result

    adapter = {"methods": "react", "tasks": "hotpotqa", "size": None, "preset": "small", "config": {}, "seed": 0}
    results = [board_result("a", "react", [0] * 20), board_result("d", "ft", [1] * 10 + [0] * 10, adapter)]
    board = leaderboard.build(results, "t")
    written = [p.name for p in leaderboard.write(board, tmp_path, plots=False, results=results)]
    assert written == ["leaderboard.json", "leaderboard.md", "findings.md"]
    assert "| m | 0.0 (0.0–16.1) | 50.0 (29.9–70.1) (100) |" in (tmp_path / "findings.md").read_text()
    assert [p.name for p in leaderboard.write(board, tmp_path / "b", plots=False)] == ["leaderboard.json", "leaderboard.md"]


def test_the_central_plot_takes_the_largest_react_adapter_and_stale_plots_are_removed(tmp_path):
    """A mixed-method adapter holds more trajectories (ReAct+CoT: 687) than the ReAct one (499): the central plot
    still shows the ReAct one, as table 2 does. A plot from an earlier build that the rows no longer make goes."""
    from test_stats import _result as board_result

    react = {"methods": "react", "tasks": "hotpotqa", "size": None, "preset": "small", "config": {}, "seed": 0}
    results = [board_result("a", "react", [0] * 20), board_result("d", "ft", [1] * 10 + [0] * 10, react),
               board_result("e", "ft", [1] * 12 + [0] * 8, {**react, "methods": "react+cot"})]
    results[1]["adapter"]["composition"]["size"], results[2]["adapter"]["composition"]["size"] = 499, 687
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "generalization.png").write_bytes(b"an old build's plot")
    written = {p.name for p in leaderboard.write(leaderboard.build(results, "t"), tmp_path)}
    assert {"prompt_vs_ft.png", "method_mix.png"} <= written
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {n for n in written if n.endswith(".png")}


def test_each_data_mix_is_plotted_at_its_own_full_size():
    """The method-mix plot lost its ReAct bar once the multi-task ReAct adapter (1,015 trajectories) had run: sizes
    were compared across task mixes. Each (model, method mix, task mix) keeps its own largest adapter."""
    from fireact_bench.harness.benchmark.plots import largest_adapter

    def row(methods, tasks, size, model="m"):
        return {"model": model, "method": "ft", "adapter": {"methods": methods, "tasks": tasks, "size": size}}

    tuned = [row("react", "hotpotqa", 100), row("react", "hotpotqa", 499), row("react", "multitask", 1015),
             row("react+cot", "hotpotqa", 687), row("react", "hotpotqa", 200, model="other")]
    largest = largest_adapter(tuned)
    assert [largest(r) for r in tuned] == [False, True, True, True, True]


def test_a_model_with_one_data_mix_gets_no_method_mix_panel():
    """Gemma has only the ReAct adapter: a method-mix panel of one bar compares nothing."""
    from fireact_bench.harness.benchmark.plots import _models_comparing

    rows = [{"model": "gemma", "mix": "react"}, {"model": "smol", "mix": "react"}, {"model": "smol", "mix": "all"}]
    assert _models_comparing(rows, lambda r: r["mix"]) == rows[1:]
