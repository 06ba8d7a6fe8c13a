"""Evaluation drivers that objectives share: greedy generation and exact match (metrics belong to
objectives; this holds how a model is run to get them)."""

from __future__ import annotations

import torch

from softprompt.data import collate_sources


def normalise(text: str) -> str:
    return " ".join(text.strip().split())


def accuracy(predictions: list[str], items: list[dict]) -> float:
    """Share of rows whose prediction equals the target text, whitespace-normalised."""
    hits = sum(normalise(p) == normalise(it["target_text"]) for p, it in zip(predictions, items, strict=True))
    return hits / max(len(items), 1)


@torch.no_grad()
def generate_texts(model, items: list[dict], batch_size: int, max_new_tokens: int) -> list[str]:
    was_training = model.training
    model.eval()
    tok = model.tokenizer
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate_sources(items[start:start + batch_size], tok.pad_token_id)
        new = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
    model.train(was_training)
    return out
