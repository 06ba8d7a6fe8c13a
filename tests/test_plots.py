"""curves.png: what each panel draws, checked on the figure's axes and series, not on pixels."""

from __future__ import annotations

import math

import pytest
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D

from softprompt.plots import draw_curves, plot_curves

STEPS, LOG_EVERY, EVAL_EVERY = 100, 10, 25


def lm_history() -> list[dict]:
    """What the loop records for the LM objective with a test split: before evals and test at step 0,
    train entries, evals, and the final adapter's test metrics at the last step."""
    history = [{"step": 0, "eval_loss": 2.9, "eval_ppl": math.exp(2.9), "eval_accuracy": 0.1,
                "test_loss": 2.8, "test_ppl": math.exp(2.8), "test_accuracy": 0.12}]
    for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        history.append({"step": step, "train_loss": 0.4 + 2.5 * math.exp(-step / 30), "lr": lr_at(step),
                        "tokens_per_s": 4000.0, "grad_norm": math.exp(-step / 50)})
        if step % EVAL_EVERY == 0 or step == STEPS:
            loss = 0.6 + 2.3 * math.exp(-step / 30)
            history.append({"step": step, "eval_loss": loss, "eval_ppl": math.exp(loss),
                            "eval_accuracy": accuracy_at(step)})
    history.append({"step": STEPS, "test_loss": 0.7, "test_ppl": math.exp(0.7), "test_accuracy": 0.8})
    return history


def lr_at(step: int) -> float:
    return 0.3 * (1 - step / STEPS)


def accuracy_at(step: int) -> float:
    return {25: 0.5, 50: 0.82, 75: 0.79, 100: 0.78}[step]


def bce_history() -> list[dict]:
    """Another objective's names: no eval_loss, eval_bce and eval_auc instead; no grad_norm."""
    history = [{"step": 0, "eval_bce": 0.69, "eval_auc": 0.5, "test_bce": 0.7, "test_auc": 0.49}]
    for step in range(5, 41, 5):
        history.append({"step": step, "train_loss": 0.7 - step / 100, "lr": 1e-3, "tokens_per_s": 900.0})
        if step % 10 == 0:
            history.append({"step": step, "eval_bce": 0.7 - step / 90, "eval_auc": 0.5 + step / 100})
    history.append({"step": 40, "test_bce": 0.3, "test_auc": 0.9})
    return history


def panel(fig, label: str):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, f"no single {label!r} axes in {[ax.get_label() for ax in fig.axes]}"
    return found[0]


def series(ax) -> dict[str, Line2D]:
    handles, labels = ax.get_legend_handles_labels()
    return {label.split(":")[0]: handle for handle, label in zip(handles, labels)}


def xy(line: Line2D) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata())]


def test_title_and_panels():
    fig = draw_curves(lm_history(), title="demo run", metric="eval_accuracy", best_step=50, greater_is_better=True)
    assert fig.get_suptitle() == "demo run"
    assert [ax.get_label() for ax in fig.axes] == ["loss", "metrics", "lr", "grad_norm"]  # at most four panels
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "eval_accuracy (↑ better)", "learning rate", "grad norm"]
    assert fig.axes[-1].get_xlabel() == "step"
    assert tuple(fig.get_size_inches()) == tuple(draw_curves(bce_history()).get_size_inches())  # fixed size


def test_losses_share_one_axes_and_perplexity_is_left_out():
    history = lm_history()
    fig = draw_curves(history, metric="eval_accuracy", best_step=50)
    loss = series(panel(fig, "loss"))
    assert {"train_loss", "eval_loss"} <= set(loss)
    assert xy(loss["train_loss"]) == [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    assert xy(loss["eval_loss"]) == [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    assert loss["eval_loss"].get_marker() not in ("None", "", None)  # evals are few: each is a visible point
    assert loss["train_loss"].get_linestyle() != "None" and loss["eval_loss"].get_linestyle() != "None"
    assert panel(fig, "loss").get_legend() is not None
    for ax in fig.axes:  # ppl = exp(loss) adds nothing beside the loss
        assert not any("ppl" in label for label in ax.get_legend_handles_labels()[1])
    assert "eval_accuracy" in series(panel(fig, "metrics"))


def test_learning_rate_panel_holds_the_schedule():
    fig = draw_curves(lm_history())
    (line,) = panel(fig, "lr").get_lines()
    assert xy(line) == [(s, lr_at(s)) for s in range(LOG_EVERY, STEPS + 1, LOG_EVERY)]


def test_test_metrics_are_markers_at_their_steps_never_a_line():
    fig = draw_curves(lm_history())
    drawn = {}
    for ax in fig.axes:
        for name, handle in series(ax).items():
            if name.startswith("test_"):
                drawn[name] = handle
    assert set(drawn) == {"test_loss", "test_accuracy"}  # test_ppl left out beside test_loss
    for handle in drawn.values():
        assert isinstance(handle, PathCollection) or handle.get_linestyle() == "None"
    assert xy(drawn["test_loss"]) == [(0, 2.8), (STEPS, 0.7)]  # before, and the final adapter's at the last step
    assert xy(drawn["test_accuracy"]) == [(0, 0.12), (STEPS, 0.8)]
    assert drawn["test_loss"].axes is panel(fig, "loss") and drawn["test_accuracy"].axes is panel(fig, "metrics")


@pytest.mark.parametrize("metric, on, value", [("eval_accuracy", "metrics", 0.82), ("eval_loss", "loss", None)])
def test_best_step_is_marked_on_the_metric_axes(metric, on, value):
    history = lm_history()
    fig = draw_curves(history, metric=metric, best_step=50, greater_is_better=metric == "eval_accuracy")
    ax = panel(fig, on)
    best = {label: h for h, label in zip(*ax.get_legend_handles_labels()) if label.startswith("best (final/)")}
    assert len(best) == 1
    (star,) = best.values()
    if value is None:  # the eval_loss recorded at step 50
        value = next(h["eval_loss"] for h in history if h["step"] == 50 and "eval_loss" in h)
    assert xy(star) == [(50, value)] and star.get_linestyle() == "None"
    assert any(list(line.get_xdata()) == [50, 50] for line in ax.get_lines())  # the vertical line at best_step
    if on == "loss":  # eval_loss is drawn on the loss axes, so it has no panel of its own
        assert "eval_loss" not in series(panel(fig, "metrics"))


def test_another_objective_is_drawn_by_its_own_names():
    fig = draw_curves(bce_history(), title="bce", metric="eval_bce", best_step=40, greater_is_better=False)
    assert [ax.get_label() for ax in fig.axes] == ["loss", "metrics", "lr"]  # no grad_norm logged: no panel
    metrics = panel(fig, "metrics")
    assert metrics.get_ylabel() == "eval_bce (↓ better)"
    drawn = series(metrics)
    assert {"eval_bce", "eval_auc", "test_bce", "test_auc"} <= set(drawn)
    assert xy(drawn["test_bce"]) == [(0, 0.7), (40, 0.3)] and drawn["test_bce"].get_linestyle() == "None"
    assert xy(drawn["best (final/), step 40"]) == [(40, 0.7 - 40 / 90)]  # the star on eval_bce at step 40
    assert set(series(panel(fig, "loss"))) == {"train_loss"}


def test_train_only_history_and_nothing_to_draw(tmp_path):
    fig = draw_curves([{"step": 1, "train_loss": 1.0, "lr": 0.1}, {"step": 2, "train_loss": 0.5, "lr": 0.1}])
    assert [ax.get_label() for ax in fig.axes] == ["loss", "lr"]
    assert draw_curves([]) is None and draw_curves([{"step": 0}]) is None
    plot_curves([], tmp_path / "curves.png", title="empty")
    assert not (tmp_path / "curves.png").exists()


def test_plot_curves_writes_a_png_matplotlib_reads_back(tmp_path):
    import matplotlib.image

    out = tmp_path / "curves.png"
    plot_curves(lm_history(), out, title="demo", metric="eval_accuracy", best_step=50, greater_is_better=True)
    assert out.stat().st_size > 0
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400  # ~100 dpi on a fixed figure size
