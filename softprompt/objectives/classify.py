"""Classification with a prompt and a head: PTEC, Buchner, Cao, Kalo, von Ehrenheim, "Prompt Tuned Embedding
Classification for Industry Sector Allocation", NAACL 2024 Industry, https://aclanthology.org/2024.naacl-industry.10/
(official code EQTPartners/PTEC; research/methods.md §3).

The model runs its body only (no LM head) and a head (heads.py) turns the pooled hidden state into one
logit per label; prompt and head train together at their own learning rates (optim.lr, head.lr).
- multi-label: BCE with logits, per label, with PTEC's inverse-frequency `pos_weight_j = max_k n_k / n_j`
  (n_j: label j's count in the train split), averaged over rows x labels as torch's BCEWithLogitsLoss
  does in the official code; a decision is sigmoid(logit) > threshold (0.5, as the official code).
- multi-class: cross-entropy over the labels, one per row; the decision is the argmax.
Evals during training decide at the fixed threshold, so steps compare on one rule. After training, with
`tune_thresholds` (multi-label), one threshold per label is fitted on the eval split (thresholds.py) and
saved with the adapter (its sidecar's "decision"); the final metrics add `tuned_*` F1s (on dev: optimistic,
it fitted them; on test: fair), and `classify_texts(..., threshold="tuned")` / `softprompt classify
--threshold tuned` decide with them (by default they decide at `threshold`, as the evals did).
The normaliser the loop sums is rows x labels (multi-label) or rows (multi-class), so accumulation and
processes give the mean the official loss takes.

Labels come in one of three layouts (`objective.label_format`, read by label_data.py): one 0/1 column
per label (PTEC's released format), a list of names per row, or a class index per row. The text is
`data.source_template` over the row (PTEC's `prompt` column: `{prompt}`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from softprompt.data.collate import pad_right
from softprompt.data.loading import limited
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.objectives import label_data
from softprompt.objectives.label_data import LABEL_FORMATS
from softprompt.sharded_eval import EvalParts


@dataclass(frozen=True)
class ClassifyConfig:
    type: str = "classify"
    labels: tuple[str, ...] = ()  # label names, in the head's output order; none: read from the train split
    label_format: str = "columns"  # columns | list | index (see the module docstring)
    label_column: str = "labels"  # the column of the list and index formats
    multi_label: bool = True  # BCE per label; False: one label per row, cross-entropy
    pos_weight: str = "inverse_frequency"  # inverse_frequency (PTEC) | none; multi-label only
    threshold: float = 0.5  # sigmoid(logit) > threshold predicts a label (multi-label)
    tune_thresholds: bool = True  # multi-label: fit per-label thresholds on the eval split after training

    def __post_init__(self):
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
    if cfg.labels and full.head.num_outputs not in (None, len(cfg.labels)):
        raise ConfigError(f"head.num_outputs: {full.head.num_outputs}, but objective.labels has {len(cfg.labels)} "
                          f"labels; set head.num_outputs: {len(cfg.labels)}")


class Classification:
    uses_head = True

    def __init__(self, cfg: ClassifyConfig):
        self.cfg = cfg
        self.pos_weight: torch.Tensor | None = None  # (L,) from the train split, set when it is encoded
        self.tuned: np.ndarray | None = None  # (L,) per-label thresholds fitted after training (use_decision)

    def check_model(self, kind: str, has_head: bool, name: str) -> None:
        if not has_head:
            raise SoftPromptError("head: the classify objective scores a head's outputs; add a head section")

    # -- data ----------------------------------------------------------------------------------------

    def encode(self, rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
        """Each row: the rendered source's ids (cut to data.max_length as data.truncation says) and its target
        vector (multi-label: (L,) 0/1) or class index."""
        from softprompt.data.loading import _truncate

        rows = limited(rows, data_cfg, split)
        label_data.check_columns(self.cfg, set(rows.column_names), data_cfg.source_template, split)
        matrix = label_data.label_matrix(self.cfg, rows, split)  # (N, L) 0/1
        targets = matrix if self.cfg.multi_label else matrix.argmax(1)  # (N, L) or (N,) class index
        out = []
        for i, text in enumerate(label_data.sources(rows, data_cfg.source_template, split)):
            ids = tokenizer(text)["input_ids"]
            if len(ids) > data_cfg.max_length:
                ids = _truncate(ids, data_cfg.max_length, data_cfg.truncation, tokenizer.bos_token_id,
                                tokenizer.eos_token_id, f"{split} row {i}", data_cfg.max_length)
            out.append({"input_ids": ids, "target": targets[i].tolist()})
        if split == data_cfg.train_split and self.cfg.multi_label and self.cfg.pos_weight == "inverse_frequency":
            self.pos_weight = label_data.inverse_frequency(matrix, self.cfg.labels, split)
        return out

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
        """(scores (N, L): probabilities, decisions (N, L) 0/1 at the fixed threshold, unweighted loss per
        unit) over `items`."""
        parts = self.eval_parts(model, items, batch_size)
        scores = self.scores_of(parts)
        return scores, self.decide(scores, self.cfg.threshold), parts.sums["loss"] / max(parts.sums["units"], 1)

    @torch.no_grad()
    def eval_parts(self, model, items: list[dict], batch_size: int) -> EvalParts:
        """The summed unweighted loss and its unit count; each row's probabilities (L,)."""
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
        rows = [row for chunk in probs for row in chunk.numpy()]  # (L,) each
        return EvalParts({"loss": total, "units": count}, {"scores": rows})

    def scores_of(self, parts: EvalParts) -> np.ndarray:
        """(N, L) probabilities of the rows `parts` holds."""
        rows = parts.rows.get("scores") or []
        return np.stack(rows) if rows else np.zeros((0, len(self.cfg.labels)), dtype=np.float32)

    def decide(self, scores: np.ndarray, thresholds) -> np.ndarray:
        """(N, L) 0/1: multi-label, score > its label's threshold (a float or (L,)); multi-class, the argmax."""
        if self.cfg.multi_label:
            return (scores > np.asarray(thresholds)).astype(int)
        return np.eye(scores.shape[1], dtype=int)[scores.argmax(1)]

    def gold(self, items: list[dict]) -> np.ndarray:
        targets = np.array([it["target"] for it in items])
        return targets.astype(int) if self.cfg.multi_label else np.eye(len(self.cfg.labels), dtype=int)[targets]

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]:
        return self.eval_metrics(self.eval_parts(model, items, batch_size), items)

    def eval_metrics(self, parts: EvalParts, items: list[dict]) -> dict[str, float]:
        """metric_names() at the fixed threshold; with fitted thresholds (use_decision), also eval_tuned_*."""
        from softprompt.objectives.label_metrics import label_metrics

        scores = self.scores_of(parts)
        decisions, loss = self.decide(scores, self.cfg.threshold), parts.sums["loss"] / max(parts.sums["units"], 1)
        gold = self.gold(items)
        metrics = {"eval_loss": loss, **label_metrics(gold, decisions, scores)}
        if self.tuned is not None:
            tuned = label_metrics(gold, self.decide(scores, self.tuned), prefix="eval_tuned_")
            metrics.update({k: v for k, v in tuned.items() if k.endswith(TUNED_REPORTED)})
        return metrics

    # -- the decision rule saved with the adapter ------------------------------------------------------

    def fit_decision(self, parts: EvalParts, items: list[dict]) -> dict | None:
        """Per-label thresholds maximising each label's F1 on `items` (the eval split; `parts`: their
        eval_parts), as the adapter sidecar's "decision" (None: nothing to fit, multi-class or tune_thresholds off)."""
        from softprompt.objectives.thresholds import tune_thresholds

        if not (self.cfg.multi_label and self.cfg.tune_thresholds):
            return None
        scores = self.scores_of(parts)
        tuned = tune_thresholds(self.gold(items), scores, self.cfg.threshold)
        return {"thresholds": dict(zip(self.cfg.labels, tuned.tolist())), "fitted_on_rows": len(items),
                "rule": "per-label max F1 on the eval split"}

    def use_decision(self, decision: dict | None) -> None:
        """Decide with a fitted decision (an adapter's), or the fixed threshold again (None)."""
        self.tuned = None if decision is None else thresholds_for(decision, self.cfg.labels)


TUNED_REPORTED = ("_f1", "_precision", "_recall")  # the decision metrics thresholds change (not ranking ones)


def thresholds_for(decision: dict, labels: tuple[str, ...], where: str = "adapter") -> np.ndarray:
    """(L,) the thresholds a saved decision gives `labels`; refuses one fitted for other labels."""
    saved = decision.get("thresholds") if isinstance(decision, dict) else None
    if not isinstance(saved, dict) or sorted(saved) != sorted(labels):
        names = sorted(saved) if isinstance(saved, dict) else None
        raise SoftPromptError(f"{where}: its decision thresholds are for labels {names}, not {sorted(labels)}; "
                              "use the adapter and config of one run")
    values = np.array([saved[name] for name in labels], dtype=np.float64)
    if not np.all((values >= 0) & (values <= 1)):
        raise SoftPromptError(f"{where}: decision thresholds must be probabilities in [0, 1], got {values.tolist()}")
    return values


def build(cfg: ClassifyConfig) -> Classification:
    return Classification(cfg)
