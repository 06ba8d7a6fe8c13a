"""The `score` head: transformers' own sequence-classification head of decoder models, trained with the prompt.

`LlamaForSequenceClassification`, `GPT2ForSequenceClassification`, `MistralForSequenceClassification` and
the other decoder `*ForSequenceClassification` models end in `score = nn.Linear(hidden, num_labels,
bias=False)` read at the last real token (after the body's final norm). This head has exactly that layout, so
an adapter with it is a PEFT `SEQ_CLS` prompt-tuning adapter whose head PEFT loads through `modules_to_save`
(`base_model.score.weight`, PEFT's own key), and a PEFT `SEQ_CLS` adapter imports with its head.
PTEC (Buchner et al. 2024, https://aclanthology.org/2024.naacl-industry.6/) trains a head on the last token's
state the same way; `linear` (heads.py) adds a bias and other poolings, and lives in our sidecar only.

One difference on purpose: transformers pools the last non-pad id, and under PEFT (which passes embeddings,
not ids) the last column, which is a pad on right-padded rows; this head pools each row's last real token
whatever the padding, so the two agree on unpadded and left-padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softprompt.errors import ConfigError
from softprompt.heads import HeadConfig, pool

PEFT_MODULE = "score"  # the attribute name of the head on transformers' decoder classification models


@dataclass(frozen=True)
class ScoreConfig(HeadConfig):
    """`head.type: score`: num_outputs, lr and weight_decay as the linear head's; pooling is the last real token."""

    type: str = "score"


class ScoreHead(nn.Module):
    def __init__(self, dim: int, num_outputs: int, generator: torch.Generator | None = None):
        super().__init__()
        self.score = nn.Linear(dim, num_outputs, bias=False)  # fp32 master weights, like the prompt
        if generator is not None:  # a generator keeps the global RNG (dropout, data order) untouched
            bound = 1 / dim ** 0.5  # nn.Linear's own init range, drawn from `generator`
            with torch.no_grad():
                self.score.weight.uniform_(-bound, bound, generator=generator)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, "last")  # (B, D)
        return self.score(pooled.to(self.score.weight.dtype))  # (B, num_outputs)

    def describe(self) -> dict:
        return {"type": "score", "dim": self.score.in_features, "num_outputs": self.score.out_features,
                "pooling": "last"}

    def peft_view(self) -> tuple[str, dict[str, torch.Tensor]]:
        """(the module PEFT's `modules_to_save` names, its tensors by parameter name)."""
        return PEFT_MODULE, {"weight": self.score.weight.detach().float().cpu().contiguous()}  # (N, D)


def build(cfg: ScoreConfig, dim: int, seed: int, kind: str) -> ScoreHead:
    if cfg.num_outputs is None:
        raise ConfigError("head.num_outputs: not set, and no objective labels give it; set head.num_outputs")
    if kind != "causal":
        raise ConfigError(f"head.type: the score head is the decoder models' own classification head, and this base is {kind}; "
                          "use head.type: linear")
    if cfg.pooling not in ("auto", "last"):
        raise ConfigError(f"head.pooling: {cfg.pooling!r}, and the score head reads the last real token as "
                          "transformers' does; drop head.pooling, or use head.type: linear")
    return ScoreHead(dim, cfg.num_outputs, generator=torch.Generator().manual_seed(seed))


def restore(description: dict, state: dict[str, torch.Tensor]) -> ScoreHead:
    head = ScoreHead(description["dim"], description["num_outputs"])
    head.load_state_dict(state)
    return head
