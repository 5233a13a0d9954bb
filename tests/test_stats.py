"""The leaderboard's statistics against values computed by hand, and the paired comparisons of a grid."""
import pytest

from fireact_bench.harness.benchmark import leaderboard
from fireact_bench.harness.benchmark.stats import holm, mcnemar_exact, paired_difference, wilson


def test_mcnemar_uses_only_the_discordant_questions():
    a = {str(i): 1.0 for i in range(10)} | {str(i): 0.0 for i in range(10, 20)}
    b = {str(i): 0.0 for i in range(8)} | {str(i): 1.0 for i in range(8, 20)}  # a only: 0-7, b only: 10-19
    result = mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"]) == (8, 10)
    # two-sided binomial P(X <= 8 or X >= 10), X ~ Bin(18, 1/2) = 1 - P(X = 9) = 1 - C(18,9)/2^18
    assert result["p"] == pytest.approx(1 - 48620 / 2 ** 18, abs=1e-6)
    assert mcnemar_exact({"q": 1.0}, {"q": 1.0})["p"] == 1.0  # no discordant question: no evidence
    assert mcnemar_exact({str(i): 1.0 for i in range(6)}, {str(i): 0.0 for i in range(6)})["p"] == pytest.approx(2 / 64)


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03, 0.5]) == [0.04, 0.09, 0.09, 0.5]  # 4·0.01, max(3·0.03, ·), 2·0.04→0.09, 0.5
    assert holm([]) == [] and holm([0.2]) == [0.2] and holm([0.6, 0.7]) == [1.0, 1.0]


def test_paired_difference_and_wilson():
    diff = paired_difference({"a": 1.0, "b": 1.0, "c": 0.0, "x": 1.0}, {"a": 0.0, "b": 1.0, "c": 0.0, "y": 0.0})
    assert diff["n"] == 3 and diff["delta"] == pytest.approx(1 / 3, abs=1e-4)
    assert diff["stderr"] == pytest.approx((1 / 3) ** 0.5 / 3 ** 0.5, abs=1e-4)  # sd of (1, 0, 0) / sqrt(3)
    assert wilson(0, 100) == [0.0, 0.037]  # a zero rate still has an upper bound
    assert wilson(17, 100) == [0.1089, 0.2555]  # by hand: centre 0.18221, half-width 0.07328


def _result(cid, method, em, adapter=None, group="a" * 16, noise="clean"):
    cell = {"model": {"name": "m", "inner": "hf", "price": None}, "method": method, "dataset": "hotpotqa", "noise": noise,
            "seed": 0, "limit": len(em), "noise_p": 0.5, "adapter": adapter}
    per_q = [{"id": str(i), "em": float(e), "f1": float(e), "finished": 1.0, "steps": 2.0, "format_errors": 0.0}
             for i, e in enumerate(em)]
    comparability = {"dataset_hash": "0" * 16, "prompt_hash": "1" * 16, "search_hash": None, "noise": noise, "noise_p": 0.5,
                     "noise_seed": 0, "model_hash": "2" * 16, "adapter_hash": None, "code_hash": "3" * 16,
                     "versions": {"python": "3", "lm_eval": "0", "transformers": "5", "torch": "2"}, "group": group}
    return {"cell_id": cid * 16, "cell": cell, "per_question": per_q, "host": {"cpus": 2}, "comparability": comparability,
            "adapter": None if not adapter else {**adapter, "key": "4" * 16, "composition": {"size": 100},
                                                  "train_wall_time_s": 1.0, "peak_rss_mib": 1.0}}


def test_every_fine_tuned_row_meets_each_prompting_row_and_each_other_adapter_of_its_group():
    a100 = {"methods": "react", "tasks": "hotpotqa", "size": 100, "preset": "small", "config": {}, "seed": 0}
    aall = {**a100, "size": None}
    results = [_result("a", "react", [0] * 20), _result("b", "io", [1] * 4 + [0] * 16), _result("c", "ft", [1] * 8 + [0] * 12, a100),
               _result("d", "ft", [1] * 10 + [0] * 10, aall), _result("e", "react", [0] * 20, group="b" * 16, noise="random")]
    board = leaderboard.build(results, "t")
    leaderboard.validate(board)
    pairs = {(c["a_label"], c["b_label"]): c for c in board["comparisons"]}
    assert set(pairs) == {("ft react/hotpotqa/100", "few-shot react"), ("ft react/hotpotqa/100", "few-shot io"),
                          ("ft react/hotpotqa/all", "few-shot react"), ("ft react/hotpotqa/all", "few-shot io"),
                          ("ft react/hotpotqa/100", "ft react/hotpotqa/all")}  # the other group's row pairs with nothing
    c = pairs[("ft react/hotpotqa/all", "few-shot react")]
    assert c["n"] == 20 and c["delta_em"] == 0.5 and c["mcnemar"] == {"a_only": 10, "b_only": 0, "p": pytest.approx(2 / 1024, rel=1e-5)}
    assert c["p_holm"] == pytest.approx(5 * 2 / 1024, rel=1e-5)  # the smallest of 5 p-values, times 5
    assert all(c["p_holm"] >= c["mcnemar"]["p"] for c in board["comparisons"])
    md = leaderboard.markdown(board)
    assert "| m | hotpotqa | clean | ft react/hotpotqa/all | few-shot react | 20 | +50.0 ± 11.5 |" in md


def test_each_finding_gets_its_plot_when_the_grid_has_its_rows(tmp_path):
    def ad(methods, tasks, size):
        return {"methods": methods, "tasks": tasks, "size": size, "preset": "small", "config": {}, "seed": 0}

    results = []

    def add(method, ems, adapter=None, dataset="hotpotqa", noise="clean"):
        r = _result("0", method, ems, adapter, group=("a" if noise == "clean" else "b") * 16, noise=noise)
        r["cell_id"], r["cell"]["dataset"] = f"{len(results):016x}", dataset
        if adapter:
            r["adapter"]["composition"]["size"] = adapter["size"] or 498
        results.append(r)

    for dataset in ("hotpotqa", "bamboogle"):
        add("react", [0] * 10, dataset=dataset)
        add("ft", [1] * 3 + [0] * 7, ad("react", "hotpotqa", None), dataset=dataset)
    add("ft", [1] * 2 + [0] * 8, ad("react", "hotpotqa", 100))
    add("ft", [1] * 4 + [0] * 6, ad("all", "hotpotqa", None))
    add("react", [0] * 10, noise="random")
    add("ft", [1] + [0] * 9, ad("react", "hotpotqa", None), noise="random")
    board = leaderboard.build(results, "t")
    written = leaderboard.write(board, tmp_path)
    assert {p.name for p in written if p.suffix == ".png"} == {"prompt_vs_ft.png", "data_scaling.png", "method_mix.png",
                                                               "noise.png", "generalization.png"}
    assert all(p.stat().st_size > 10_000 for p in written if p.suffix == ".png")
    only_central = leaderboard.build([results[0], results[1]], "t")  # the default grid's shape: one plot
    assert [p.name for p in leaderboard.write(only_central, tmp_path / "c") if p.suffix == ".png"] == ["prompt_vs_ft.png"]
