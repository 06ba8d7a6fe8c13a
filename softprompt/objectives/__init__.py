"""Objectives: what a prompt is trained for (DESIGN.md §5). One file each, registered in registry.py.

An objective owns everything the loop must not know about a task: how rows become examples, how
examples become a batch, the loss and its normaliser, and the eval metrics with their direction. The
loop only ever calls the `Objective` protocol below.
"""

from __future__ import annotations

from typing import Protocol

import torch

from softprompt.sharded_eval import EvalParts


class Objective(Protocol):
    uses_head: bool  # True: the model runs the base's body and a trainable head (never the LM head)

    def check_model(self, kind: str, has_head: bool, name: str) -> None: ...  # refuse a base it cannot train

    def encode(self, rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]: ...  # every item has input_ids

    def collate(self, items: list[dict], pad_id: int, kind: str) -> dict[str, torch.Tensor]: ...

    def weight(self, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor: ...  # the batch's share of the normaliser

    # Summed over what weight() counts. Call only `model(...)`: under DDP/FSDP it is a wrapper whose
    # forward is all it exposes (`output="hidden"` / `"scores"` reach the body and the head).
    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def metric_names(self) -> list[str]: ...  # what evaluate() returns, known before any model is built

    default_metric: str  # what selects final/'s adapter when train.metric is not set
    # Optional: the metrics an eval line prints (default: metric_names(); metrics.jsonl always has all)
    shown_metrics: tuple[str, ...]

    def greater_is_better(self, metric: str) -> bool: ...

    # Evaluation in two steps, so processes can share it (sharded_eval.py): eval_parts runs the model over
    # some rows (additive sums and per-row results), eval_metrics turns the parts of all rows into metrics;
    # evaluate is the two in one process.
    def eval_parts(self, model, items: list[dict], batch_size: int) -> EvalParts: ...

    def eval_metrics(self, parts: EvalParts, items: list[dict]) -> dict[str, float]: ...

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]: ...

    # Optional (an objective without them fits nothing): a decision rule fitted on the eval split after
    # training (PTEC's per-label thresholds) from its eval_parts, saved in the adapter's sidecar as "decision"
    # and given back to use_decision by `softprompt eval`; fit_decision returns None where there is nothing to fit.
    def fit_decision(self, parts: EvalParts, items: list[dict]) -> dict | None: ...

    def use_decision(self, decision: dict | None) -> None: ...
