"""Selectors: which prompt of a bank each input row takes (DESIGN.md §5: IDP = bank prompt source + its
selector). One file each, with its config and paper link; registry.SELECTORS lists them.

A selector scores every prompt of the bank for every row, `scores(model, input_ids, attention_mask, context,
labels) -> (B, K)`, higher is better; `SoftPromptModel.select` takes the argmax (hard selection, no
gradient through the choice). Selection reads only a row's *context* (`context_mask`): never the target
tokens of a text-to-text row (generation never has them), and at most `context_tokens` real tokens. A row
whose every token is a target (raw text) has no context of its own: `context_tokens` must then say how many
of its first tokens selection reads (the recover objective and `softprompt perplexity` do not score them).

- attention (IDP, Hoang et al. 2023): the prompt the input tokens attend to most, read from hooks on the
  chosen layers during one extra pass of the context over all K prompts;
- key: the prompt whose learned key (an online k-means centroid of its rows' mean input embedding) is
  nearest the row's mean input embedding; no extra pass;
- oracle: the prompt with the lowest loss on the row (it reads the targets: for analysis and training).

Training (`train_with`): the loop's rows take the selector's own choice (`self`), or the oracle's (`oracle`:
each row trains the prompt that already fits it best, a hard EM over the bank), while evaluation and
generation always use the selector itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.errors import ConfigError, SoftPromptError

TRAIN_WITH = ("self", "oracle")


@dataclass(frozen=True)
class SelectorConfig:
    """Fields every selector shares (`selector:` section of a recipe)."""

    type: str = "attention"  # attention | key | oracle (registry.SELECTORS)
    # at most this many of a row's first real context tokens are read (None: its whole context)
    context_tokens: int | None = None
    train_with: str = "self"  # self | oracle: the choice that assigns training rows to prompts

    def __post_init__(self):
        if self.context_tokens is not None and (not isinstance(self.context_tokens, int) or self.context_tokens < 1):
            raise ConfigError(f"selector.context_tokens: must be a positive integer or null (the whole context), got "
                              f"{self.context_tokens!r}")
        if self.train_with not in TRAIN_WITH:
            raise ConfigError(f"selector.train_with: {self.train_with!r} is not valid; choose one of {list(TRAIN_WITH)}")


def check(cfg: SelectorConfig, full) -> None:
    """A selector picks among the prompts of a bank: any other prompt source has one prompt for every row. The
    oracle (as the selector or the training rule) needs token targets, which an objective scoring a head's
    outputs does not give the model."""
    if full.prompt.type != "bank":
        raise ConfigError(f"selector: chooses a prompt of a bank per row, and prompt.type is {full.prompt.type!r}; set "
                          "prompt.type: bank (with prompt.num_prompts), or drop the selector section")
    oracle = "selector.type: oracle" if cfg.type == "oracle" else "selector.train_with: oracle" if cfg.train_with == "oracle" else None
    if oracle and full.head is not None:  # a head's outputs are what the objective scores, never tokens
        raise ConfigError(f"{oracle}: the oracle picks the prompt with the lowest token loss, and objective "
                          f"{full.objective.type!r} scores a head's outputs, not tokens; use selector.type attention or "
                          "key with train_with: self")


def chooser(selector, training: bool):
    """What chooses the rows' prompts now: in training under `train_with: oracle`, the oracle; else the selector."""
    if training and selector.train_with == "oracle":
        from softprompt.selectors.oracle import OracleSelector

        return OracleSelector()
    return selector


def context_mask(attention_mask: torch.Tensor, labels: torch.Tensor | None, kind: str,
                 context_tokens: int | None) -> torch.Tensor:
    """The tokens selection may read (B, L) bool: a row's real tokens that are not targets (a causal row's
    labelled tokens are its answer), its first `context_tokens` of them at most. A row whose every token is a
    target (raw text) reads its first tokens; seq2seq labels belong to the decoder, so its whole input is
    context."""
    real = attention_mask.bool()
    context = real
    if labels is not None and kind == "causal" and labels.shape == attention_mask.shape:
        source = real & (labels == -100)
        raw = ~source.any(dim=1, keepdim=True)  # (B, 1): every real token is a target (raw text)
        if context_tokens is None and bool(raw.any()):
            raise SoftPromptError("selector: a row's every token is a target (labels on all of them), so selection would "
                                  "read the tokens it is scored on; set selector.context_tokens (the first tokens it may "
                                  "read), or give the row a source whose labels are -100")
        context = torch.where(raw, real, source)
    if context_tokens is not None:
        context = context & (context.long().cumsum(dim=1) <= context_tokens)
    return context  # (B, L)


def mean_embedding(model, input_ids: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Each row's mean input embedding over its context tokens (B, D), fp32, from the frozen table."""
    rows = model.input_table(input_ids).float()  # (B, L, D)
    weights = context.float().unsqueeze(-1)  # (B, L, 1)
    return (rows * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
