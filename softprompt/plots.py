"""The run's curves (`curves.png` in the run dir), drawn from the metrics history the loop records.

`history` is the loop's list of `{"step": int, **metrics}` dicts: train entries (train_loss, lr,
tokens_per_s, grad_norm), eval entries (eval_* of the objective), the step-0 entry (the "before"
evals, plus test_* of the initial prompt when there is a test split) and, after training, a test_*
entry at the last step. At most four panels share the step axis, top to bottom:

1. loss: train_loss (line) and eval_loss (line with markers) overlaid, test_loss as markers;
2. eval metrics: every other eval_* series (the selection metric `metric` drawn heavier), test_*
   as markers; perplexity is left out when a loss is drawn, since ppl = exp(loss) adds nothing;
3. learning rate (small);
4. grad norm (small, log scale); tokens_per_s stays in metrics.jsonl.

test_* values are single markers at their steps (before: 0, final: the last step), never a line: two
numbers from different adapters are not a curve. `best_step` (the step final/ comes from) is marked
with a dotted line and a star on the axes that hold `metric`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (8.0, 8.5)  # inches; fixed, whatever the number of metrics
DPI = 100
MAX_METRICS = 4  # metrics drawn in the metrics panel, the selection metric first
PERPLEXITY = {"ppl", "perplexity"}  # exp(loss): redundant beside the loss itself
SKIPPED = {"tokens_per_s"}  # throughput says nothing about the curves; it stays in metrics.jsonl
LOSS_COLORS = {"train": "C0", "eval": "C1"}
TRAIN_KEYS = {"train_loss", "lr", "grad_norm"}


def plot_curves(history: list[dict], out: Path, *, title: str = "", metric: str | None = None,
                best_step: int | None = None, greater_is_better: bool | None = None) -> None:
    """Write the curves of `history` to `out` (PNG); nothing is written when there is nothing to draw."""
    fig = draw_curves(history, title=title, metric=metric, best_step=best_step, greater_is_better=greater_is_better)
    if fig is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch, no figure left open in a notebook
    fig.savefig(out, dpi=DPI)


def draw_curves(history: list[dict], *, title: str = "", metric: str | None = None, best_step: int | None = None,
                greater_is_better: bool | None = None) -> Figure | None:
    """The figure `plot_curves` saves (None when `history` holds nothing to draw); see the module doc."""
    from matplotlib.figure import Figure  # here, not at import: `softprompt train` starts without matplotlib
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    series = collect(history)
    names = set(series)
    has_loss = bool(names & {"train_loss", "eval_loss", "test_loss"})
    losses = [k for k in ("train_loss", "eval_loss", "test_loss") if k in names]
    others = [k for k in sorted(names) if k not in TRAIN_KEYS and k not in losses and k not in SKIPPED
              and not (has_loss and base(k) in PERPLEXITY)]
    # curves before test markers, the selection metric's first (it gets the first colour and heads the legend)
    others.sort(key=lambda k: (k.startswith("test_"), base(k) != base(metric or ""), base(k), k))
    # An objective may report many metrics (classification: P/R/F1/Jaccard by four averagings); a readable
    # panel holds the selection metric and a few more, each with its test markers.
    kept = list(dict.fromkeys(base(k) for k in others))[:MAX_METRICS]
    others = [k for k in others if base(k) in kept]
    panels = [("loss", losses, 3.0), ("metrics", others, 3.0), ("lr", ["lr"] if "lr" in names else [], 1.2),
              ("grad_norm", ["grad_norm"] if "grad_norm" in names else [], 1.2)]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [p[2] for p in panels]})[:, 0]
    by_name = {}
    for ax, (name, keys, _) in zip(axes, panels):
        by_name[name] = ax
        ax.set_label(name)  # tests and callers find a panel by this label
        ax.grid(True, alpha=0.3)
        if name == "loss":
            for key in keys:
                draw_series(ax, key, series[key], LOSS_COLORS.get(key.split("_")[0], "C1"))
            ax.set_ylabel("loss")
        elif name == "metrics":
            colors = {}
            for key in keys:  # eval_x and test_x share a colour
                color = colors.setdefault(base(key), f"C{(len(colors) + 2) % 10}")
                draw_series(ax, key, series[key], color, heavy=key == metric)
            curves = [k for k in keys if not k.startswith("test_")]
            ax.set_ylabel(direction(metric, greater_is_better) if metric in keys
                          else curves[0] if len(curves) == 1 else "eval metrics")
        elif name == "lr":
            ax.plot(*zip(*series["lr"]), color="C7", label="lr")
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        else:
            steps, values = zip(*series["grad_norm"])
            ax.plot(steps, values, color="C5", label="grad_norm")
            if min(values) > 0:
                ax.set_yscale("log")  # gradient norms fall by orders of magnitude over a run
                # a few ticks (1-2-5, 1-3 or decades, by the span) as plain numbers: the default
                # "2x10^-1" labels on every minor tick crowd a small panel
                decades = math.log10(max(values) / min(values))
                subs = (1.0, 2.0, 5.0) if decades <= 1 else (1.0, 3.0) if decades <= 3 else (1.0,)
                ax.yaxis.set_major_locator(LogLocator(subs=subs))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("grad norm")
    if best_step is not None:
        mark_best(by_name, series, metric, best_step)
    for ax in axes:
        if ax.get_label() in ("loss", "metrics"):  # lr and grad norm: one series each, named by the y label
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def collect(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """`{metric: [(step, value), ...]}` in step order, finite numbers only."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in sorted(history, key=lambda h: h.get("step", 0)):
        for key, value in entry.items():
            if key == "step" or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            series.setdefault(key, []).append((int(entry["step"]), float(value)))
    return series


def base(key: str) -> str:
    """The metric's name without its split: eval_accuracy, test_accuracy -> accuracy."""
    split, _, rest = key.partition("_")
    return rest if split in ("train", "eval", "test") and rest else key


def direction(metric: str, greater_is_better: bool | None) -> str:
    if greater_is_better is None:
        return metric
    return f"{metric} ({'↑' if greater_is_better else '↓'} better)"


def draw_series(ax, key: str, points: list[tuple[int, float]], color: str, heavy: bool = False) -> None:
    steps, values = zip(*points)
    if key.startswith("test_"):  # before and final: separate adapters, so markers, never a line
        label = key if len(values) == 1 else f"{key}: {values[0]:.3g} → {values[-1]:.3g}"
        ax.plot(steps, values, linestyle="None", marker="D", markersize=7, markerfacecolor="white",
                markeredgecolor=color, markeredgewidth=1.8, zorder=4, label=label)
    elif key == "train_loss":
        ax.plot(steps, values, color=color, linewidth=1.3, label=key)
    else:
        ax.plot(steps, values, color=color, linewidth=2.2 if heavy else 1.4, marker="o",
                markersize=3.5 if len(values) <= 60 else 1.5, label=key, zorder=3)


def mark_best(by_name: dict, series: dict, metric: str | None, best_step: int) -> None:
    """A dotted line at `best_step` on the axes holding `metric` (the loss axes when it is drawn there or
    is not drawn at all) and a star on the metric's value there."""
    on_metrics = metric in series and metric not in ("train_loss", "eval_loss") and "metrics" in by_name
    ax = by_name["metrics"] if on_metrics else by_name.get("loss") or next(iter(by_name.values()))
    value = next((v for s, v in series.get(metric or "", []) if s == best_step), None)
    label = f"best (final/), step {best_step}"
    ax.axvline(best_step, color="0.35", linestyle=":", linewidth=1.2, zorder=1,
               label="_best_step" if value is not None else label)  # the star carries the legend entry
    if "loss" in by_name and ax is not by_name["loss"]:  # where final/ sits on the loss curves
        by_name["loss"].axvline(best_step, color="0.35", linestyle=":", linewidth=1.2, zorder=1, label="_best_step")
    if value is not None:
        ax.plot([best_step], [value], linestyle="None", marker="*", markersize=15, color="gold",
                markeredgecolor="black", markeredgewidth=0.8, zorder=5, label=label)
