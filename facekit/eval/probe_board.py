"""The probes' leaderboard, from plain reports: one row per pre-training run, its verdicts, tables and plot.

A row (:func:`board_row`) joins what the ``probe@RUN`` stage measured on the held-out people (``learned``,
``random_init`` spread over init seeds, ``checkpoints``: the learning curve) with the run's held-out
verification after fine-tuning (``finetuned``: the ``verify`` stage's holistic scores). Verdicts:

- ``beats_random_init``: in kNN or the linear probe, learned > random-init mean + :data:`SPREADS` × std;
- ``finetuned_beats_scratch``: held-out verification accuracy after fine-tuning > that of the fine-tuned
  ``scratch`` run + its 10-fold std.

:func:`markdown` writes the tables, :func:`verdicts` the per-method sentences, :func:`plot` the bar chart
(a bar per run: learned, and its random init with the std as error bar).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: How many random-init standard deviations a learned score must clear to count as learned.
SPREADS = 2.0
#: The probes the verdicts and the plot use (a method beats its random init in either).
PROBES = ("knn_top1", "linear_probe")
SCRATCH = "scratch"


def beats(learned: float, random_init: dict[str, float]) -> bool:
    """``learned > mean + SPREADS × std`` of a random-init spread ``{mean, std, ...}``."""
    return learned > random_init["mean"] + SPREADS * random_init["std"]


def board_row(probe: dict[str, Any], finetuned: dict[str, Any] | None, pretrain: dict[str, Any]) -> dict[str, Any]:
    """One run's row: ``probe`` (its ``probe@RUN`` report), ``finetuned`` (its held-out verification scores
    of the holistic set, or None), ``pretrain`` (its pretrain report: steps, wall time)."""
    row: dict[str, Any] = {
        "method": probe["method"],
        "backbone": probe["backbone"],
        "pretrain_steps": pretrain.get("steps", 0),
        "pretrain_wall_s": pretrain.get("wall_time_s", 0.0),
        "random_init": {m: probe["random_init"][m] for m in probe["random_init"] if m != "runs"},
    }
    if "learned" in probe:
        row["learned"] = probe["learned"]
        row["curve"] = {step: {m: v[m] for m in PROBES} for step, v in probe["checkpoints"].items()}
        row["beats_random_init"] = any(beats(probe["learned"][m], probe["random_init"][m]) for m in PROBES)
    if finetuned is not None:
        row["finetuned"] = {k: finetuned[k] for k in ("accuracy", "accuracy_std", "auc")}
    return row


def finetune_verdicts(rows: dict[str, dict[str, Any]]) -> None:
    """Set ``finetuned_beats_scratch`` on every fine-tuned row but scratch's (in place)."""
    scratch = rows.get(SCRATCH, {}).get("finetuned")
    for name, row in rows.items():
        if name != SCRATCH and scratch is not None and "finetuned" in row:
            bar = scratch["accuracy"] + scratch["accuracy_std"]
            row["finetuned_beats_scratch"] = row["finetuned"]["accuracy"] > bar


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pm(spread: dict[str, float]) -> str:
    return f"{_f(spread['mean'])} ± {_f(spread['std'])}"


def _yes(flag: bool | None) -> str:
    return "–" if flag is None else ("**yes**" if flag else "no")


def markdown(board: dict[str, Any]) -> str:
    """The board's tables: the probes (learned vs random init), the learning curves, the controls."""
    held = board["held_out"]
    lines = [
        f"Held-out people: {held['identities']} ({held['faces']} faces), never seen by a training stage. Pairs: "
        f"{held['same_pairs']} same, {held['different_pairs']} different, so TAR at FAR = {held['far']:.1e}.",
        "",
        "| run | pre-train steps (minutes) | kNN learned | kNN random init | linear learned | linear random init "
        "| frozen AUC learned / random init | beats random init | fine-tuned accuracy / AUC | beats scratch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in board["runs"].items():
        learned, rand, ft = r.get("learned", {}), r["random_init"], r.get("finetuned")
        tuned = f"{_f(ft['accuracy'])} ± {_f(ft['accuracy_std'])} / {_f(ft['auc'])}" if ft else "–"
        lines.append(
            f"| `{name}` | {r['pretrain_steps']} ({r['pretrain_wall_s'] / 60:.1f}) | {_f(learned.get('knn_top1'))} "
            f"| {_pm(rand['knn_top1'])} "
            f"| {_f(learned.get('linear_probe'))} | {_pm(rand['linear_probe'])} "
            f"| {_f(learned.get('verification_auc'))} / {_pm(rand['verification_auc'])} "
            f"| {_yes(r.get('beats_random_init'))} | {tuned} | {_yes(r.get('finetuned_beats_scratch'))} |"
        )
    lines += ["", "| run | learning curve: kNN (linear) at pre-training step … |", "|---|---|"]
    for name, r in board["runs"].items():
        if r.get("curve"):
            points = [f"{s}: {_f(v['knn_top1'])} ({_f(v['linear_probe'])})" for s, v in r["curve"].items()]
            lines.append(f"| `{name}` | {' → '.join(points)} |")
    lines += ["", "| control | kNN | linear | frozen verification accuracy | AUC | TAR |", "|---|---|---|---|---|---|"]
    for name, c in board["controls"].items():
        lines.append(
            f"| {name} | {_f(c['knn_top1'])} | {_f(c['linear_probe'])} | {_f(c['verification_accuracy'])} "
            f"| {_f(c['verification_auc'])} | {_f(c['verification_tar'])} |"
        )
    return "\n".join(lines) + "\n"


def verdicts(board: dict[str, Any]) -> str:
    """One sentence per pre-training method: did it beat its random init, did fine-tuning from it beat scratch."""
    out = []
    for name, r in board["runs"].items():
        if "learned" not in r:
            continue
        learned, rand = r["learned"], r["random_init"]
        probes = ", ".join(f"{m} {_f(learned[m])} vs {_pm(rand[m])}" for m in PROBES)
        said = "beats" if r["beats_random_init"] else "does **not** beat"
        text = f"- `{name}` {said} its random init by more than {SPREADS:g} std ({probes})"
        if r.get("curve"):
            text += "; kNN over pre-training " + " → ".join(_f(v["knn_top1"]) for v in r["curve"].values())
        if "finetuned_beats_scratch" in r:
            tuned = "beats" if r["finetuned_beats_scratch"] else "does **not** beat"
            text += f"; fine-tuned from it {tuned} fine-tuned from scratch ({_f(r['finetuned']['accuracy'])}"
            text += f" vs {_f(board['runs'][SCRATCH]['finetuned']['accuracy'])} held-out accuracy)"
        out.append(text + ".")
    return "\n".join(out) + "\n"


def plot(board: dict[str, Any], path: Path) -> None:
    """A bar per run and probe: learned (none for scratch) beside its random init (mean, std error bar);
    dashed lines: the raw-pixel and reference controls. Written as PNG to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy; only the plot needs it
    from matplotlib.figure import Figure

    names = list(board["runs"])
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for ax, metric in zip(fig.subplots(1, len(PROBES)), PROBES, strict=True):
        x = list(range(len(names)))
        rand = [board["runs"][n]["random_init"][metric] for n in names]
        learned = [board["runs"][n].get("learned", {}).get(metric, 0.0) for n in names]
        ax.bar([i - 0.2 for i in x], learned, 0.4, label="pre-trained")
        ax.bar(
            [i + 0.2 for i in x],
            [r["mean"] for r in rand],
            0.4,
            yerr=[r["std"] for r in rand],
            capsize=3,
            label="random init (mean ± std)",
            color="0.7",
        )
        for control, style in (("pixels", ":"), ("reference", "--")):
            if control in board["controls"]:
                ax.axhline(board["controls"][control][metric], ls=style, color="k", lw=1, label=control)
        ax.set_xticks(x, names, rotation=30)
        ax.set_title(f"{metric} on held-out people")
        ax.set_ylim(0, 1)
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
