"""The oracle selector: each row takes the prompt of the bank under which its loss is lowest. It reads the
targets, so it is an upper bound for analysis (how much a perfect choice would give) and a training rule
(`selector.train_with: oracle`: each row trains the prompt that already fits it best, a hard EM over the
bank), never a way to serve: generation has no targets to read.

Loss per row: the mean token cross-entropy over its scored tokens: the label tokens when labels are given
(causal: next-token targets, seq2seq: the decoder's labels), else, for a causal row, its own tokens (raw
text, as the recover objective scores blocks). One no-grad forward per prompt of the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.errors import ConfigError, SoftPromptError
from softprompt.objectives.lm import scored_targets
from softprompt.selectors import SelectorConfig


@dataclass(frozen=True)
class OracleConfig(SelectorConfig):
    type: str = "oracle"

    def __post_init__(self):
        super().__post_init__()
        if self.context_tokens is not None:
            raise ConfigError("selector.context_tokens: the oracle reads a row's targets, not a context; drop the key")


@torch.no_grad()
def row_losses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean token loss of every row under every prompt of the bank (B, K), each prompt run on all rows."""
    if labels is None:
        if model.kind != "causal":
            raise SoftPromptError("selector oracle: a seq2seq or encoder row has no targets of its own; pass labels")
        labels = input_ids.masked_fill(attention_mask == 0, -100)  # the row's own next tokens
    targets = scored_targets(labels, model.kind, attention_mask if model.kind == "causal" else None)  # (B, T)
    counts = (targets != -100).sum(dim=1).clamp(min=1)  # (B,)
    batch, k = input_ids.shape[0], model.prompt.num_prompts
    losses = []
    for prompt in range(k):
        index = torch.full((batch,), prompt, dtype=torch.long, device=input_ids.device)
        extra = {"decoder_input_ids": model.decoder_inputs(labels)} if model.kind == "seq2seq" else {}
        logits = model(input_ids, attention_mask, prompt_index=index, **extra).logits  # (B, T, V)
        tokens = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                 reduction="none").view(batch, -1)  # (B, T)
        losses.append(tokens.sum(dim=1) / counts)
    return torch.stack(losses, dim=1)  # (B, K)


class OracleSelector(nn.Module):
    def __init__(self, train_with: str = "self"):
        super().__init__()
        self.train_with = train_with
        self.context_tokens = None  # it reads the targets, not a context

    def scores(self, model, input_ids, attention_mask, context, labels=None) -> torch.Tensor:
        return -row_losses(model, input_ids, attention_mask, labels)  # (B, K): lower loss, higher score

    def observe(self, model, input_ids, context, index) -> None:
        return None

    def describe(self) -> dict:
        return {"type": "oracle", "train_with": self.train_with}


def build(cfg: OracleConfig, source, table: torch.Tensor) -> OracleSelector:
    return OracleSelector(cfg.train_with)


def restore(description: dict, state: dict[str, torch.Tensor]) -> OracleSelector:
    return OracleSelector(description.get("train_with", "self"))
