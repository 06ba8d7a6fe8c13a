"""Classification with a prompt and a head: PTEC, Buchner, Cao, Kalo, von Ehrenheim, "Prompt Tuned Embedding
Classification for Industry Sector Allocation", NAACL 2024 Industry, https://aclanthology.org/2024.naacl-industry.10/
(official code EQTPartners/PTEC; research/methods.md §3).

The model runs its body only (no LM head) and a head (heads.py) turns the pooled hidden state into one
logit per label; prompt and head train together at their own learning rates (optim.lr, head.lr).
- multi-label: BCE with logits, per label, with PTEC's inverse-frequency `pos_weight_j = max_k n_k / n_j`
  (n_j: label j's count in the train split), averaged over rows x labels as torch's BCEWithLogitsLoss
  does in the official code; a decision is sigmoid(logit) > threshold (0.5, as the official code).
- multi-class: cross-entropy over the labels, one per row; the decision is the argmax.
The normaliser the loop sums is rows x labels (multi-label) or rows (multi-class), so accumulation and
processes give the mean the official loss takes.

Labels come in one of three layouts (`objective.label_format`):
- columns: one 0/1 column per label name (PTEC's released format);
- list: `objective.label_column` holds a list of label names per row;
- index: `objective.label_column` holds a class index into `objective.labels` (multi-class).
The text is `data.source_template` over the row (PTEC's `prompt` column: `{prompt}`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from softprompt.data.collate import pad_right
from softprompt.data.templates import render, template_fields
from softprompt.errors import ConfigError, SoftPromptError

LABEL_FORMATS = ("columns", "list", "index")


@dataclass(frozen=True)
class ClassifyConfig:
    type: str = "classify"
    labels: tuple[str, ...] = ()  # label names, in the head's output order
    label_format: str = "columns"  # columns | list | index (see the module docstring)
    label_column: str = "labels"  # the column of the list and index formats
    multi_label: bool = True  # BCE per label; False: one label per row, cross-entropy
    pos_weight: str = "inverse_frequency"  # inverse_frequency (PTEC) | none; multi-label only
    threshold: float = 0.5  # sigmoid(logit) > threshold predicts a label (multi-label)

    def __post_init__(self):
        if not self.labels:
            raise ConfigError("objective.labels: the classify objective needs the label names, e.g. "
                              "objective.labels: [sports, politics, science]")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"objective.labels: names repeat in {list(self.labels)}; give each label once")
        if self.label_format not in LABEL_FORMATS:
            raise ConfigError(f"objective.label_format: {self.label_format!r} is not valid; choose one of {list(LABEL_FORMATS)}")
        if self.pos_weight not in ("inverse_frequency", "none"):
            raise ConfigError(f"objective.pos_weight: {self.pos_weight!r} is not valid; choose inverse_frequency or none")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"objective.threshold: must be in (0, 1), got {self.threshold}")
        if self.label_format == "index" and self.multi_label:
            raise ConfigError("objective.label_format: index gives one class per row; set objective.multi_label: false, "
                              "or give the labels as columns or a list")


def check(cfg: ClassifyConfig, full) -> None:
    """The head must give one output per label (checked before anything loads)."""
    if full.head is None:
        raise ConfigError("head: the classify objective scores a head's outputs; add `head: {type: linear}` "
                          f"with num_outputs: {len(cfg.labels)} (or use method: ptec)")
    if full.head.num_outputs != len(cfg.labels):
        raise ConfigError(f"head.num_outputs: {full.head.num_outputs}, but objective.labels has {len(cfg.labels)} "
                          f"labels; set head.num_outputs: {len(cfg.labels)}")


def inverse_frequency(targets: np.ndarray, labels: tuple[str, ...], split: str) -> torch.Tensor:
    """PTEC's pos_weight: max_k n_k / n_j over the train split's label counts n (L,)."""
    counts = targets.sum(0)  # (L,)
    never = [name for name, n in zip(labels, counts) if n == 0]
    if never:
        raise SoftPromptError(f"data: label(s) {never} never occur in the {split!r} split, so the classifier cannot "
                              "learn them (and their pos_weight would be infinite); drop them from objective.labels "
                              "or add rows that have them")
    return torch.tensor(counts.max() / counts, dtype=torch.float32)


class Classification:
    uses_head = True

    def __init__(self, cfg: ClassifyConfig):
        self.cfg = cfg
        self.pos_weight: torch.Tensor | None = None  # (L,) from the train split, set when it is encoded

    def check_model(self, kind: str, has_head: bool, name: str) -> None:
        if not has_head:
            raise SoftPromptError("head: the classify objective scores a head's outputs; add a head section")

    # -- data ----------------------------------------------------------------------------------------

    def encode(self, rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
        """Each row: the rendered source's ids (cut to data.max_length as data.truncation says) and its target
        vector (multi-label: (L,) 0/1) or class index."""
        from softprompt.data.loading import _truncate

        if len(rows) == 0:
            raise SoftPromptError(f"data: the {split!r} split is empty; give at least one row")
        limit = data_cfg.max_train_samples if split == data_cfg.train_split else data_cfg.max_eval_samples
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        fields = template_fields(data_cfg.source_template, "data.source_template")
        self._check_columns(set(rows.column_names), fields, split)
        targets = self._targets(rows, split)  # (N, L) 0/1, or (N,) class index
        out = []
        for i, row in enumerate(rows):
            missing = [n for n in fields if row.get(n) is None or (isinstance(row[n], float) and math.isnan(row[n]))]
            if missing:
                raise SoftPromptError(f"data: {split} row {i} has no value for column(s) {missing}, used by "
                                      "data.source_template; fill it in or drop the row")
            ids = tokenizer(render(data_cfg.source_template, row, "source_template"))["input_ids"]
            if len(ids) > data_cfg.max_length:
                ids = _truncate(ids, data_cfg.max_length, data_cfg.truncation, tokenizer.bos_token_id,
                                tokenizer.eos_token_id, f"{split} row {i}", data_cfg.max_length)
            out.append({"input_ids": ids, "target": targets[i].tolist()})
        if split == data_cfg.train_split and self.cfg.multi_label and self.cfg.pos_weight == "inverse_frequency":
            self.pos_weight = inverse_frequency(targets, self.cfg.labels, split)
        return out

    def _check_columns(self, columns: set[str], fields: list[str], split: str) -> None:
        lacking = [n for n in fields if n not in columns]
        if lacking:
            raise SoftPromptError(f"data.source_template: refers to column(s) {lacking}, which the {split!r} split lacks; "
                                  f"its columns are {sorted(columns)}")
        if self.cfg.label_format == "columns":
            lacking = [n for n in self.cfg.labels if n not in columns]
            if lacking:
                raise SoftPromptError(f"objective.labels: {lacking} are not columns of the {split!r} split (label_format "
                                      f"columns reads one 0/1 column per label); its columns are {sorted(columns)}")
        elif self.cfg.label_column not in columns:
            raise SoftPromptError(f"objective.label_column: {self.cfg.label_column!r} is not a column of the {split!r} "
                                  f"split; its columns are {sorted(columns)}")

    def _targets(self, rows, split: str) -> np.ndarray:
        labels, fmt = self.cfg.labels, self.cfg.label_format
        if fmt == "columns":
            table = rows.select_columns(list(labels)).to_dict()
            values = np.array([[_binary(v, split, i, name) for i, v in enumerate(table[name])] for name in labels]).T
        else:
            column = rows.select_columns([self.cfg.label_column]).to_dict()[self.cfg.label_column]
            if fmt == "index":
                return np.array([_index(v, len(labels), split, i, self.cfg.label_column) for i, v in enumerate(column)])
            position = {name: j for j, name in enumerate(labels)}
            values = np.zeros((len(column), len(labels)), dtype=int)
            for i, names in enumerate(column):
                if not isinstance(names, list):
                    raise SoftPromptError(f"data: {split} row {i}: {self.cfg.label_column!r} holds {names!r}, not a list "
                                          "of label names")
                unknown = [n for n in names if n not in position]
                if unknown:
                    raise SoftPromptError(f"data: {split} row {i}: label(s) {unknown} are not in objective.labels "
                                          f"{list(labels)}; add them there or fix the row")
                values[i, [position[n] for n in names]] = 1
        if not self.cfg.multi_label:
            counts = values.sum(1)
            if (counts != 1).any():
                i = int(np.flatnonzero(counts != 1)[0])
                raise SoftPromptError(f"data: {split} row {i} has {int(counts[i])} labels, but objective.multi_label is "
                                      "false (one label per row); set it to true for multi-label data")
            return values.argmax(1)
        return values

    def collate(self, items: list[dict], pad_id: int, kind: str) -> dict[str, torch.Tensor]:
        """Right padding (the model pools the last real token whatever the side) and the targets."""
        ids, mask = pad_right([it["input_ids"] for it in items], pad_id)  # (B, L)
        dtype = torch.float32 if self.cfg.multi_label else torch.long
        return {"input_ids": ids, "attention_mask": mask, "target": torch.tensor([it["target"] for it in items], dtype=dtype)}

    # -- loss ----------------------------------------------------------------------------------------

    def weight(self, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        return torch.tensor(batch["target"].numel())  # rows x labels (multi-label) or rows

    def loss(self, model, batch: dict[str, torch.Tensor], weighted: bool = True) -> torch.Tensor:
        # only model(...): under DDP/FSDP the model is a wrapper whose forward is all it exposes
        scores = model(batch["input_ids"], batch["attention_mask"], right_padded=True, output="scores").scores.float()
        target = batch["target"]
        if not self.cfg.multi_label:
            return F.cross_entropy(scores, target, reduction="sum")
        pos_weight = self.pos_weight.to(scores.device) if weighted and self.pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(scores, target, pos_weight=pos_weight, reduction="sum")

    # -- evaluation ----------------------------------------------------------------------------------

    def metric_names(self) -> list[str]:
        names = ["eval_loss", "eval_micro_f1", "eval_macro_f1", "eval_weighted_f1", "eval_samples_f1"]
        return names + ["eval_macro_precision", "eval_macro_recall", "eval_micro_jaccard", "eval_macro_ap", "eval_precision_at_1"]

    default_metric = "eval_macro_f1"  # PTEC selects by dev macro-F1

    def greater_is_better(self, metric: str) -> bool:
        return "loss" not in metric

    @torch.no_grad()
    def predict(self, model, items: list[dict], batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(scores (N, L): probabilities, decisions (N, L) 0/1, unweighted loss per unit) over `items`."""
        was_training = model.training
        model.eval()
        probs, total, count = [], 0.0, 0
        for start in range(0, len(items), batch_size):
            batch = self.collate(items[start:start + batch_size], model.tokenizer.pad_token_id, model.kind)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            scores = model(batch["input_ids"], batch["attention_mask"], right_padded=True, output="scores").scores.float()
            target = batch["target"]
            if self.cfg.multi_label:  # eval loss unweighted: comparable across runs whatever their train split
                total += F.binary_cross_entropy_with_logits(scores, target, reduction="sum").item()
                probs.append(torch.sigmoid(scores).cpu())
            else:
                total += F.cross_entropy(scores, target, reduction="sum").item()
                probs.append(torch.softmax(scores, -1).cpu())
            count += target.numel()
        model.train(was_training)
        scores = torch.cat(probs).numpy()
        if self.cfg.multi_label:
            decisions = (scores > self.cfg.threshold).astype(int)
        else:
            decisions = np.eye(scores.shape[1], dtype=int)[scores.argmax(1)]
        return scores, decisions, total / max(count, 1)

    def gold(self, items: list[dict]) -> np.ndarray:
        targets = np.array([it["target"] for it in items])
        return targets.astype(int) if self.cfg.multi_label else np.eye(len(self.cfg.labels), dtype=int)[targets]

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]:
        from softprompt.objectives.label_metrics import label_metrics

        scores, decisions, loss = self.predict(model, items, batch_size)
        return {"eval_loss": loss, **label_metrics(self.gold(items), decisions, scores)}


@dataclass
class Prediction:
    text: str
    labels: list[str]  # the decided labels (multi-label: probability > threshold; multi-class: the argmax)
    probabilities: dict[str, float]  # per label: sigmoid (multi-label) or softmax (multi-class)


@torch.no_grad()
def classify_texts(model, texts: list[str], cfg: ClassifyConfig, template: str = "{text}",
                   batch_size: int = 64) -> list[Prediction]:
    """Per-label probabilities and decisions for `texts`: one forward of the body and the head per batch, no
    generation. `template` renders each text as training rendered its rows (`{text}` is the text; the run's
    data.source_template with its one column, e.g. PTEC's `{prompt}`, works the same)."""
    fields = template_fields(template, "template")
    if len(fields) != 1:
        raise SoftPromptError(f"classify: the template {template!r} uses the columns {fields}; a text fills exactly "
                              "one column (give the texts as that column's values)")
    if model.head is None or model.head.describe()["num_outputs"] != len(cfg.labels):
        raise SoftPromptError(f"classify: the model's head does not give one output per label of {list(cfg.labels)}; "
                              "load the adapter its classify run saved")
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
            chosen = [name for name, p in zip(cfg.labels, row) if p > cfg.threshold] if cfg.multi_label else \
                [cfg.labels[max(range(len(row)), key=row.__getitem__)]]
            out.append(Prediction(text, chosen, dict(zip(cfg.labels, row))))
    model.train(was_training)
    return out


def _binary(value, split: str, i: int, name: str) -> int:
    if not isinstance(value, str) and value in (0, 1):  # 0/1, 0.0/1.0, false/true
        return int(value)
    raise SoftPromptError(f"data: {split} row {i}: label column {name!r} holds {value!r}; label columns hold 0 or 1")


def _index(value, n: int, split: str, i: int, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    raise SoftPromptError(f"data: {split} row {i}: {column!r} holds {value!r}, not a class index in [0, {n}) "
                          "into objective.labels")


def build(cfg: ClassifyConfig) -> Classification:
    return Classification(cfg)
