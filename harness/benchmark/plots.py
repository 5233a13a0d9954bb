"""The leaderboard's pictures, one per finding of FireAct, each drawn when the grid holds the rows it needs.

prompt_vs_ft.png      every prompting method against fine-tuning, per model and dataset (clean tool)
data_scaling.png      exact match against the number of fine-tuning trajectories (FireAct fig. 3)
method_mix.png        ReAct vs ReAct+CoT vs ReAct+CoT+Reflexion training data (table 4)
noise.png             each method under the clean, "none" and random-result tool (table 3)
generalization.png    HotpotQA-only against multi-task training data, held-in and held-out datasets (table 5)

Every bar carries its value, so a zero is read as zero, and a 95% Wilson interval (a zero rate still has an
upper bound: that whisker is the interval, not a bar).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fireact_bench.harness.study import EVAL_DATASETS, HELD_IN, NOISES, TASK_MIXES

MIX_ORDER = ("react", "react+cot", "react+reflexion", "all")
MIX_NAMES = {"react": "ReAct", "react+cot": "ReAct+CoT", "react+reflexion": "ReAct+Reflexion", "all": "ReAct+CoT+Reflexion"}


def standing(dataset: str) -> str:
    """Where an evaluation set stands against the fine-tuning data: in every task mix (held-in), in none (held-out),
    or in some only: StrategyQA and MMLU are held out of HotpotQA-only data but part of the multi-task data, which is
    how FireAct's table 5 reads them."""
    mixes = [name for name, tasks in TASK_MIXES.items() if dataset in tasks]
    if len(mixes) == len(TASK_MIXES):
        return "held-in"
    return "held-out" if not mixes else f"in {', '.join(mixes)} data only"


def _name(r) -> str:
    if r["method"] != "ft":
        return f"few-shot {r['method']}"
    a = r["adapter"]
    return f"ft {MIX_NAMES[a['methods']]} / {a['tasks']} / {a['size']}"


def _bars(ax, groups: dict[str, list[dict]], title: str, series=_name, legend: bool = True) -> None:
    """groups: x label -> rows; one bar per series (series(row) names it), the same colour in every group."""
    names = list(dict.fromkeys(series(r) for rows in groups.values() for r in rows))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, rows = [], []
        for x, label in enumerate(groups):
            match = [r for r in groups[label] if series(r) == name]
            if match:
                xs.append(x + (i - (len(names) - 1) / 2) * width)
                rows.append(match[0])
        ems = [100 * r["em"] for r in rows]
        errs = [[100 * (r["em"] - r["em_ci95"][0]) for r in rows], [100 * (r["em_ci95"][1] - r["em"]) for r in rows]]
        bars = ax.bar(xs, ems, width, yerr=errs, capsize=3, label=name, error_kw={"elinewidth": 0.8, "alpha": 0.6})
        for bar, em in zip(bars, ems):
            ax.annotate(f"{em:.0f}", (bar.get_x() + bar.get_width() / 2, em), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
            if em == 0:  # a zero bar has no height: mark where it stands
                ax.plot([bar.get_x(), bar.get_x() + bar.get_width()], [0, 0], color=bar.get_facecolor(), linewidth=3)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="upper left")


def _per_model(plt, rows: list[dict], draw, name: str, out: Path, written: list, width: float = 6.0) -> None:
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(width * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        draw(ax, [r for r in rows if r["model"] == model], model)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    written.append(out / name)


def _prompting_then_mix_order(row: dict) -> tuple:
    """Prompting rows first, then the adapters in the paper's method-mix order (ReAct, +CoT, +Reflexion)."""
    mix = MIX_ORDER.index(row["adapter"]["methods"]) if row["method"] == "ft" else -1
    return (mix, _name(row))


def largest_adapter(tuned: list[dict]):
    """A test on fine-tuned rows: is this row's adapter the largest of its model, method mix and task mix? A finding
    compares data mixes at their full size; the smaller ones belong to data scaling. (Comparing sizes across mixes
    would hide the HotpotQA ReAct adapter behind the larger multi-task one.)"""
    def mix(r):
        return r["model"], r["adapter"]["methods"], r["adapter"]["tasks"]
    sizes = defaultdict(int)
    for r in tuned:
        sizes[mix(r)] = max(sizes[mix(r)], r["adapter"]["size"])
    return lambda r: r["adapter"]["size"] == sizes[mix(r)]


def _models_comparing(rows: list[dict], key) -> list[dict]:
    """The rows of the models that have more than one value of key(row): a model with a single method mix (or a
    single evaluated dataset) gets no panel of its own in that finding's plot."""
    values = defaultdict(set)
    for r in rows:
        values[r["model"]].add(key(r))
    return [r for r in rows if len(values[r["model"]]) > 1]


def plot_all(board: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in board["rows"] if r["seed"] == 0]
    clean = [r for r in rows if r["noise"] == "clean"]
    tuned = [r for r in rows if r["method"] == "ft"]
    written: list[Path] = []

    largest = largest_adapter(tuned)
    # the central question: each prompting method against fine-tuning on all of the ReAct data of a task mix
    central_rows = [r for r in clean if r["method"] != "ft" or r["adapter"]["methods"] == "react" and largest(r)]
    if any(r["method"] == "ft" for r in central_rows) and any(r["method"] != "ft" for r in central_rows):
        order = ("io", "cot", "react", "reflexion", "ft")

        def central(ax, rs, model):
            groups = defaultdict(list)
            for r in sorted(rs, key=lambda r: (order.index(r["method"]), _name(r))):
                groups[r["dataset"]].append(r)
            _bars(ax, dict(sorted(groups.items(), key=lambda kv: EVAL_DATASETS.index(kv[0]))),
                  f"{model}: prompting against fine-tuning (clean tool)")
        _per_model(plt, central_rows, central, "prompt_vs_ft.png", out, written, width=7)

    scaling = [r for r in tuned if r["noise"] == "clean" and r["dataset"] == HELD_IN and r["adapter"]["methods"] == "react"
               and r["adapter"]["tasks"] == "hotpotqa"]
    if len({r["adapter"]["size"] for r in scaling}) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for model in sorted({r["model"] for r in scaling}):
            pts = sorted((r for r in scaling if r["model"] == model), key=lambda r: r["adapter"]["size"])
            sizes, ems = [r["adapter"]["size"] for r in pts], [100 * r["em"] for r in pts]
            line = ax.errorbar(sizes, ems, yerr=[[e - 100 * r["em_ci95"][0] for e, r in zip(ems, pts)],
                                                 [100 * r["em_ci95"][1] - e for e, r in zip(ems, pts)]],
                               marker="o", capsize=3, label=f"{model} fine-tuned (ReAct data)")
            for s, e in zip(sizes, ems):
                ax.annotate(f"{e:.0f}", (s, e), fontsize=7, xytext=(4, 2), textcoords="offset points")
            for r in clean:
                if r["model"] == model and r["method"] == "react" and r["dataset"] == HELD_IN:
                    ax.axhline(100 * r["em"], linestyle="--", linewidth=1, color=line[0].get_color(),
                               label=f"{model} few-shot ReAct ({100 * r['em']:.0f})")
        ax.set_xlabel("fine-tuning trajectories (HotpotQA, ReAct)")
        ax.set_ylabel("exact match (%)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{HELD_IN}: exact match against fine-tuning data size (clean tool)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "data_scaling.png", dpi=110)
        plt.close(fig)
        written.append(out / "data_scaling.png")

    mixes = [r for r in tuned if r["noise"] == "clean" and r["dataset"] == HELD_IN and r["adapter"]["tasks"] == "hotpotqa"
             and largest(r)]
    mixes = _models_comparing(mixes, lambda r: r["adapter"]["methods"])
    if mixes:
        def mix(ax, rs, model):
            groups = {MIX_NAMES[m]: [r for r in rs if r["adapter"]["methods"] == m] for m in MIX_ORDER
                      if any(r["adapter"]["methods"] == m for r in rs)}
            _bars(ax, groups, f"{model}: fine-tuning data's method mix ({HELD_IN}, clean tool)", series=lambda r: "ft",
                  legend=False)
        _per_model(plt, mixes, mix, "method_mix.png", out, written)

    noisy = [r for r in rows if r["dataset"] == HELD_IN and r["method"] in ("react", "reflexion", "ft")]
    if len({r["noise"] for r in noisy}) > 1:
        def noise(ax, rs, model):
            names = [n for n in dict.fromkeys(_name(r) for r in sorted(rs, key=_prompting_then_mix_order))
                     if sum(_name(r) == n for r in rs) > 1]  # methods measured under more than one tool
            groups = {n.replace(" / ", "\n", 1): sorted((r for r in rs if _name(r) == n), key=lambda r: NOISES.index(r["noise"]))
                      for n in names}
            _bars(ax, groups, f"{model}: each method under each tool ({HELD_IN})", series=lambda r: f"{r['noise']} tool")
        _per_model(plt, noisy, noise, "noise.png", out, written, width=8)

    general = [r for r in clean if r["method"] == "react" or r["method"] == "ft" and r["adapter"]["methods"] == "react"
               and largest(r)]
    general = _models_comparing(general, lambda r: r["dataset"] if r["method"] == "ft" else HELD_IN)
    if general:
        def gen(ax, rs, model):
            groups = {f"{d}\n({standing(d)})":
                      sorted((r for r in rs if r["dataset"] == d), key=lambda r: (r["method"] == "ft", _name(r)))
                      for d in EVAL_DATASETS if any(r["dataset"] == d for r in rs)}
            _bars(ax, groups, f"{model}: held-in against held-out datasets (clean tool)")
        _per_model(plt, general, gen, "generalization.png", out, written, width=7)
    return written
