"""Inference entry points on a loaded adapter: `classify_texts` for classify runs (PTEC), one forward of
the body and the head per batch, no generation. Kept apart from the objectives because it reads the run's
recorded config (softprompt.config), which imports the objectives through the registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from softprompt.config import from_dict
from softprompt.data.collate import pad_right
from softprompt.data.templates import render, template_fields
from softprompt.errors import SoftPromptError
from softprompt.objectives.classify import ClassifyConfig, thresholds_for


@dataclass
class Prediction:
    text: str
    labels: list[str]  # the decided labels (multi-label: probability > its threshold; multi-class: the argmax)
    probabilities: dict[str, float]  # per label: sigmoid (multi-label) or softmax (multi-class)


@torch.no_grad()
def classify_texts(model, texts: list[str], cfg: ClassifyConfig | None = None, template: str | None = None,
                   batch_size: int = 64, threshold: float | str | None = None) -> list[Prediction]:
    """Per-label probabilities and decisions for `texts`: one forward of the body and the head per batch, no
    generation. `cfg` (labels, multi-label or not) defaults to the run's that trained the adapter
    (`SoftPromptModel.from_adapter` of a classify run's final/), `template` to that run's, else "{text}".
    `template` renders each text as
    training rendered its rows (`{text}` is the text; a data.source_template with one column, e.g. PTEC's
    `{prompt}`, works the same). Multi-label decisions: probability > cfg.threshold (None, the default),
    > `threshold` (a float, every label), or > each label's threshold the run fitted on its eval split and
    saved with the adapter (`threshold="tuned"`, model.decision)."""
    if cfg is None:
        cfg, run_template = _run_settings(model)
        template = template or run_template
    elif template is None:
        template = _run_settings(model)[1] if getattr(model, "run_config", None) else "{text}"
    fields = template_fields(template, "template")
    if len(fields) != 1:
        raise SoftPromptError(f"classify: the template {template!r} uses the columns {fields}; a text fills exactly "
                              "one column (give the texts as that column's values)")
    if model.head is None or model.head.describe()["num_outputs"] != len(cfg.labels):
        raise SoftPromptError(f"classify: the model's head does not give one output per label of {list(cfg.labels)}; "
                              "load the adapter its classify run saved")
    if threshold is not None and not cfg.multi_label:
        raise SoftPromptError("classify: a threshold decides multi-label runs; this one is multi-class and decides "
                              "by the most probable label, so drop the threshold")
    if threshold == "tuned":
        if not getattr(model, "decision", None):
            raise SoftPromptError("classify: the adapter saved no tuned thresholds (its run had no eval split, or "
                                  "objective.tune_thresholds: false); decide at a fixed threshold instead")
        cut = thresholds_for(model.decision, cfg.labels)
    elif threshold is None:
        cut = np.full(len(cfg.labels), cfg.threshold)
    elif isinstance(threshold, str) or not 0 <= threshold <= 1:
        raise SoftPromptError(f"classify: threshold must be a probability in [0, 1] or 'tuned', got {threshold!r}")
    else:
        cut = np.full(len(cfg.labels), float(threshold))
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids = [model.tokenizer(render(template, {fields[0]: t}, "template"))["input_ids"] for t in chunk]
        input_ids, mask = pad_right(ids, model.tokenizer.pad_token_id)  # (B, L)
        scores = model(input_ids.to(model.device), mask.to(model.device), right_padded=True, output="scores").scores.float()
        probs = (torch.sigmoid(scores) if cfg.multi_label else torch.softmax(scores, -1)).cpu()  # (B, L)
        for text, row in zip(chunk, probs.tolist()):
            chosen = [name for name, p, t in zip(cfg.labels, row, cut) if p > t] if cfg.multi_label else \
                [cfg.labels[max(range(len(row)), key=row.__getitem__)]]
            out.append(Prediction(text, chosen, dict(zip(cfg.labels, row))))
    model.train(was_training)
    return out


def _run_settings(model) -> tuple[ClassifyConfig, str]:
    """The classify config and source template of the run that trained `model`'s adapter."""
    run = getattr(model, "run_config", None)
    if run is None:
        raise SoftPromptError("classify: the model records no run config (its labels are unknown); load a classify "
                              "run's final/ with SoftPromptModel.from_adapter, or pass cfg=ClassifyConfig(labels=...)")
    full = from_dict(run, warn_moved=False)
    if full.objective.type != "classify":
        raise SoftPromptError(f"classify: the adapter was trained with objective {full.objective.type!r}, not classify; "
                              "use generate for text-to-text adapters")
    return full.objective, full.data.source_template
