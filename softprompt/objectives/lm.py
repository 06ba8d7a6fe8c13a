"""The text-to-text LM objective (Lester et al. 2021, https://arxiv.org/abs/2104.08691): every task is
text in, text out, and the loss is token cross-entropy on the target tokens only. Causal LMs score no
prompt, source or padding position; seq2seq models score the decoder targets.

The normaliser is the number of scored target tokens, so the loop's gradient is the per-token mean
however tokens fall into micro-batches and processes. Which logit scores which label (the causal
shift) is decided once, in `scored_targets`, for the loss, its normaliser and `SoftPromptModel`'s
HF-style `labels=` convenience alike.

Evaluation: loss / perplexity, and exact match of greedy generations against the target text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.data import collate, encode_rows
from softprompt.errors import SoftPromptError
from softprompt.sharded_eval import EvalParts


@dataclass(frozen=True)
class LMConfig:
    type: str = "lm"
    generate_eval: bool = True  # exact-match accuracy by greedy generation at each eval
    max_new_tokens: int = 16  # generation length for that accuracy

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            from softprompt.errors import ConfigError

            raise ConfigError(f"objective.max_new_tokens: must be > 0, got {self.max_new_tokens}")


def perplexity_of(nll: float) -> float:
    """exp of a mean NLL, capped at exp(50): an untrained model's loss would overflow it."""
    return math.exp(min(nll, 50.0))


def scored_targets(labels: torch.Tensor, kind: str, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The label each logit position is scored against (-100: none), aligned with the logits (B, T).

    Causal: the logit at position t predicts token t+1, so labels move left by one; the prompt's last
    position would predict the first token, which is never a target (a target always follows its
    source). A pad position predicts nothing: in a left-padded row the pad before the first token would
    otherwise be scored against it. Labels move rather than logits being sliced: slicing (B, L, V) would
    copy it, forward and back. Seq2seq and encoders: logits and labels are already aligned."""
    if kind != "causal":
        return labels
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, L): targets[:, t] = labels[:, t+1]
    return targets if attention_mask is None else targets.masked_fill(attention_mask == 0, -100)


def token_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str,
               attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the scored positions, and their count. logits (B, T, V), labels (B, T)."""
    targets = scored_targets(labels, kind, attention_mask)
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss_sum, (targets != -100).sum()


class TextToText:
    uses_head = False

    def __init__(self, cfg: LMConfig):
        self.cfg = cfg

    def check_model(self, kind: str, has_head: bool, name: str) -> None:
        if kind == "encoder":
            raise SoftPromptError(f"objective lm is text-to-text and needs a causal or seq2seq model; {name!r} is an "
                                  "encoder (set model.kind, or pick another model)")
        if has_head:
            raise SoftPromptError("head: the lm objective scores the base's own LM head; remove the head section "
                                  "(a trained head goes with a classification objective)")

    def encode(self, rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
        return encode_rows(rows, tokenizer, data_cfg, kind, split)

    def collate(self, items: list[dict], pad_id: int, kind: str) -> dict[str, torch.Tensor]:
        return collate(items, pad_id, kind)

    def weight(self, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        return (scored_targets(batch["labels"], kind, batch["attention_mask"]) != -100).sum()

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The model scores HF-style `labels` with `token_loss` (seq2seq: they also make the decoder's input).
        # Only the model's forward is called: under DDP/FSDP `model` is a wrapper that exposes nothing else.
        # right_padded: data.collate pads on the right, so causal models skip the per-step host sync.
        return model(**batch, right_padded=True).loss_sum

    def metric_names(self) -> list[str]:
        return ["eval_loss", "eval_ppl"] + (["eval_accuracy"] if self.cfg.generate_eval else [])

    default_metric = "eval_loss"

    def greater_is_better(self, metric: str) -> bool:
        return not any(word in metric.lower() for word in ("loss", "ppl", "perplexity"))  # accuracy: higher

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]:
        return self.eval_metrics(self.eval_parts(model, items, batch_size), items)

    @torch.no_grad()
    def eval_parts(self, model, items: list[dict], batch_size: int) -> EvalParts:
        """Summed target-token loss and its token count; each row's greedy continuation (generate_eval)."""
        from softprompt.evaluate import generate_texts

        total, count = 0.0, 0
        was_training = model.training
        model.eval()
        for start in range(0, len(items), batch_size):
            batch = self.collate(items[start:start + batch_size], model.tokenizer.pad_token_id, model.kind)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            total += self.loss(model, batch).item()
            count += int(self.weight(batch, model.kind))
        model.train(was_training)
        rows = {"prediction": generate_texts(model, items, batch_size, self.cfg.max_new_tokens)} if self.cfg.generate_eval else {}
        return EvalParts({"loss": total, "tokens": count}, rows)

    def eval_metrics(self, parts: EvalParts, items: list[dict]) -> dict[str, float]:
        """Token-weighted loss and its perplexity; exact-match accuracy of the continuations."""
        from softprompt.evaluate import accuracy

        loss = parts.sums["loss"] / max(parts.sums["tokens"], 1)
        metrics = {"eval_loss": loss, "eval_ppl": perplexity_of(loss)}
        if self.cfg.generate_eval:
            metrics["eval_accuracy"] = accuracy(parts.rows["prediction"], items)
        return metrics


def build(cfg: LMConfig) -> TextToText:
    return TextToText(cfg)
