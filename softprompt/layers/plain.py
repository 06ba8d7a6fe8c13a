"""The plain prompt: Lester, Al-Rfou, Constant 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning", https://arxiv.org/abs/2104.08691.

One trainable matrix P (p x d) put before the embedded input of a frozen model (a `PromptEmbedding`
with no offset). `PromptConfig` holds the fields every prompt source shares (length, init, kernel,
execution) and checks them itself, so a config built in Python (`SoftPromptModel.from_pretrained`) is
refused with the same messages as a recipe; the other sources' configs extend it with their own fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from softprompt.errors import ConfigError
from softprompt.layers.fused import KERNELS
from softprompt.layers.inits import LABEL_INITS, initial_prompt
from softprompt.layers.prompt_embedding import PromptEmbedding
from softprompt.shared_prefix import EXECUTIONS

INITS = ("vocab", "uniform", "text", *LABEL_INITS, "file")
CHOICES = {"init": INITS, "kernel": KERNELS, "execution": EXECUTIONS}
POSITIVE = {"num_virtual_tokens": int, "vocab_top_k": int, "init_range": float}  # each must be > 0


@dataclass(frozen=True)
class PromptConfig:
    type: str = "plain"  # plain | dept | bank (layers/plain.py, layers/dept.py, layers/bank.py)
    num_virtual_tokens: int = 20
    # vocab: rows of frequent non-special tokens (Lester et al. §3.2 use the 5,000 most common ids)
    # uniform: U(-init_range, init_range); text: init_text's tokens tiled to p;
    # class_label: mean sub-token embedding of each of init_labels, rest as vocab (Lester et al.);
    # label_names: the tokens of init_labels joined by spaces, one per slot, rest as vocab (PTEC);
    # init_labels default to objective.labels where the objective has them; file: init_file
    init: str = "vocab"
    init_range: float = 0.5
    init_text: str | None = None
    init_labels: tuple[str, ...] = ()
    init_file: str | None = None  # a .safetensors/.pt tensor (p, d), or an adapter dir: all it holds (build.continue_from)
    vocab_top_k: int = 5000
    seed: int | None = None  # init seed; None uses train.seed
    kernel: str = "auto"  # auto | torch | triton (the fused kernel, where available)
    # Decoder-only models: run the prompt once per step and share its keys/values across the batch
    # (softprompt/shared_prefix.py); auto falls back to concatenation where that is not exact.
    execution: str = "auto"  # auto | shared_prefix | concat

    def __post_init__(self):
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"prompt.{key}: {value!r} is not valid; choose one of {list(allowed)}")
        for key, kind in POSITIVE.items():
            value = getattr(self, key)
            number = (int, float) if kind is float else int
            if not isinstance(value, number) or isinstance(value, bool):
                raise ConfigError(f"prompt.{key}: expected {kind.__name__}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"prompt.{key}: must be a finite number, got {value!r}")
            if value <= 0:
                raise ConfigError(f"prompt.{key}: must be > 0, got {value}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("prompt.init_text: required when prompt.init is 'text'")
        if self.init == "file" and not self.init_file:
            raise ConfigError("prompt.init_file: required when prompt.init is 'file'")


def build(cfg: PromptConfig, table: torch.Tensor, tokenizer, kind: str, seed: int) -> PromptEmbedding:
    """A fresh plain prompt for a base whose input embedding table is `table` (V, d)."""
    return PromptEmbedding(initial_prompt(cfg, table, tokenizer, seed), kernel=cfg.kernel)


def param_groups(source: PromptEmbedding, cfg: PromptConfig, optim) -> list[dict]:
    return source.param_groups(optim.lr, optim.weight_decay)


def restore(description: dict, state: dict[str, torch.Tensor]) -> PromptEmbedding:
    """Rebuild from `describe()` and `state_dict()` as an adapter saved them."""
    return PromptEmbedding(state["prompt"])
