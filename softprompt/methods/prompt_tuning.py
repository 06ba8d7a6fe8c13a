"""Prompt tuning: Lester, Al-Rfou, Constant 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning", https://arxiv.org/abs/2104.08691.

What is trained: one prompt matrix P (p x d) put before the embedded input of a frozen LM; nothing
else. Every task is text-to-text: the loss is token cross-entropy on the target tokens only (causal
LMs score no prompt, source or padding position; seq2seq models score the decoder targets and carry
the prompt on the encoder only). Evaluation is loss / perplexity and exact match of greedy
generations against the target text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from softprompt.errors import SoftPromptError


@dataclass(frozen=True)
class PromptTuningConfig:
    name: ClassVar[str] = "prompt_tuning"


class PromptTuning:
    """The text-to-text objective over the shared layer; other presets reuse it by composition."""

    def __init__(self, cfg, offset_factory=None):
        self.cfg = cfg
        self.offset_factory = offset_factory  # base -> offset module or None (DePT plugs in here)

    def build_model(self, base, tokenizer, kind: str):
        from softprompt.layers import PromptEmbedding
        from softprompt.model import SoftPromptModel, initial_prompt

        if kind == "encoder":
            raise SoftPromptError(
                f"method {self.cfg.method.name!r} is text-to-text and needs a causal or seq2seq model; "
                f"{self.cfg.model.name_or_path!r} is an encoder (set model.kind, or pick another model)"
            )
        init = initial_prompt(self.cfg.prompt, base, tokenizer, self.cfg.train.seed)
        offset = self.offset_factory(base) if self.offset_factory else None
        layer = PromptEmbedding(init, offset=offset, kernel=self.cfg.prompt.kernel)
        return SoftPromptModel(base, layer, tokenizer, kind, self.cfg.model.name_or_path,
                               execution=self.cfg.prompt.execution)

    def param_groups(self, model) -> list[dict]:
        optim = self.cfg.optim
        return [{"params": [model.prompt.prompt], "lr": optim.lr, "weight_decay": optim.weight_decay, "name": "prompt"}]

    def loss(self, model, batch):
        out = model(**batch, right_padded=True)  # data.collate pads on the right: no per-step host sync
        return out.loss_sum, out.num_tokens

    def metric_names(self) -> list[str]:
        """What `evaluate` returns, known before any model is built (the loop checks train.metric with it)."""
        return ["eval_loss", "eval_ppl"] + (["eval_accuracy"] if self.cfg.train.generate_eval else [])

    def evaluate(self, model, items, batch_size):
        from softprompt.evaluate import exact_match, lm_loss

        metrics = lm_loss(model, items, batch_size)
        if self.cfg.train.generate_eval:
            metrics.update(exact_match(model, items, batch_size, self.cfg.train.max_new_tokens))
        return metrics


def build(method_cfg: PromptTuningConfig, cfg) -> PromptTuning:
    return PromptTuning(cfg)
