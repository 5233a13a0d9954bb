"""The leaderboard's four pictures of the FireAct study, drawn when the grid holds the rows they need.

em_vs_size.png        exact match against fine-tuning data size, per model and data mix (prompting as a line)
prompt_vs_ft.png      best prompting method against fine-tuning, per model and dataset (clean tool)
noise.png             each method under the clean, "none" and random-result tool
heldin_heldout.png    HotpotQA (the fine-tuning task) against the datasets fine-tuning never saw
Error bars are 95% Wilson intervals.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

HELD_IN = "hotpotqa"


def _err(rows):
    return [[r["em"] - r["em_ci95"][0] for r in rows], [r["em_ci95"][1] - r["em"] for r in rows]]


def _name(r) -> str:
    if r["method"] != "ft":
        return r["method"]
    a = r["adapter"]
    return f"ft {a['methods']}/{a['tasks']}/{a['size']}"


def _bars(ax, groups: dict[str, list[dict]], title: str):
    """groups: x label -> rows (one bar each, labelled by method)."""
    names = sorted({_name(r) for rows in groups.values() for r in rows})
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, rows = [], []
        for x, label in enumerate(groups):
            match = [r for r in groups[label] if _name(r) == name]
            if match:
                xs.append(x + i * width)
                rows.append(match[0])
        ax.bar(xs, [100 * r["em"] for r in rows], width, yerr=[[100 * e for e in side] for side in _err(rows)],
               capsize=3, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(groups))], list(groups), fontsize=8)
    ax.set_ylabel("exact match (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def plot_all(board: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in board["rows"] if r["seed"] == 0]
    written = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    clean = [r for r in rows if r["noise"] == "clean"]
    ft_clean = [r for r in clean if r["method"] == "ft" and r["dataset"] == HELD_IN]
    if ft_clean:
        fig, ax = plt.subplots(figsize=(6, 4))
        lines = defaultdict(list)
        for r in ft_clean:
            lines[(r["model"], r["adapter"]["methods"], r["adapter"]["tasks"])].append(r)
        for (model, methods, tasks), pts in sorted(lines.items()):
            pts.sort(key=lambda r: r["adapter"]["size"])
            ax.errorbar([r["adapter"]["size"] for r in pts], [100 * r["em"] for r in pts],
                        yerr=[[100 * e for e in side] for side in _err(pts)], marker="o", capsize=3,
                        label=f"{model} ft {methods}/{tasks}")
        for r in clean:
            if r["method"] == "react" and r["dataset"] == HELD_IN:
                ax.axhline(100 * r["em"], linestyle="--", linewidth=1, label=f"{r['model']} few-shot ReAct")
        ax.set_xlabel("fine-tuning trajectories")
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"{HELD_IN}: exact match against data size (clean tool)", fontsize=10)
        ax.legend(fontsize=7)
        save(fig, "em_vs_size.png")

    if any(r["method"] == "ft" for r in clean) and any(r["method"] != "ft" for r in clean):
        fig, ax = plt.subplots(figsize=(7, 4))
        groups = defaultdict(list)
        for r in clean:
            groups[f"{r['model']}\n{r['dataset']}"].append(r)
        _bars(ax, dict(sorted(groups.items())), "prompting against fine-tuning (clean tool)")
        save(fig, "prompt_vs_ft.png")

    if len({r["noise"] for r in rows}) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        groups = defaultdict(list)
        for r in rows:
            if r["method"] in ("react", "reflexion", "ft"):
                groups[f"{r['model']} {r['dataset']}\n{r['noise']}"].append(r)
        _bars(ax, dict(sorted(groups.items(), key=lambda kv: (kv[0].split("\n")[0], ["clean", "none", "random"].index(kv[0].split("\n")[1])))),
              "clean against noisy tools")
        save(fig, "noise.png")

    held_out = {r["dataset"] for r in clean} - {HELD_IN}
    if held_out and any(r["dataset"] == HELD_IN for r in clean):
        fig, ax = plt.subplots(figsize=(7, 4))
        groups = defaultdict(list)
        for r in clean:
            groups[f"{r['dataset']}\n({'held-in' if r['dataset'] == HELD_IN else 'held-out'})"].append(r)
        _bars(ax, dict(sorted(groups.items(), key=lambda kv: (HELD_IN not in kv[0], kv[0]))), "held-in against held-out datasets")
        save(fig, "heldin_heldout.png")
    return written
