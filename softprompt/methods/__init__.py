"""Methods: one file each, registered here by one entry.

A method is a preset over two orthogonal axes: how the prompt is parametrised (the layer's prompt and
optional offset) and what it is trained for (its loss and eval metric). The training loop talks to a
method only through the `Method` protocol below; there is no `if method == ...` outside this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from softprompt.methods import dept, prompt_tuning


class Method(Protocol):
    def build_model(self, base, tokenizer, kind: str): ...  # -> SoftPromptModel

    def param_groups(self, model) -> list[dict]: ...  # optimizer groups, each with its own lr/decay

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...  # (sum, count)

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]: ...

    def metric_names(self) -> tuple[str, ...]: ...  # what evaluate() returns (train.metric is checked against it)


@dataclass(frozen=True)
class MethodSpec:
    config_class: type
    build: Callable[[Any, Any], Method]  # (method config, full Config) -> Method


METHODS: dict[str, MethodSpec] = {
    "prompt_tuning": MethodSpec(prompt_tuning.PromptTuningConfig, prompt_tuning.build),
    "dept": MethodSpec(dept.DeptConfig, dept.build),
}


def build_method(cfg) -> Method:
    return METHODS[cfg.method.name].build(cfg.method, cfg)
