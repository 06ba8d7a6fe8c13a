"""Prompt initialisations. Each returns a (p, d) fp32 tensor; none touches the model.

Lester et al. 2021 §3.2 (https://arxiv.org/abs/2104.08691) compare random uniform, sampled vocabulary
and class-label inits; class-label is their default and random is worst (PTEC's label-name init is a
variant: the names' tokens, one per slot). PEFT's RANDOM is N(0, 1), far off the scale of decoder
embedding tables, and its SAMPLE_VOCAB draws from the whole vocabulary (rare and garbage rows
included), so our default samples frequent, non-special rows instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.errors import SoftPromptError, gist

LABEL_INITS = ("class_label", "label_names")  # inits that read init_labels (default: the objective's labels)


def uniform(num_tokens: int, dim: int, init_range: float, generator: torch.Generator) -> torch.Tensor:
    """U(-r, r). The paper states [-0.5, 0.5] (r = 0.5); the official flax code samples [0, 0.5)."""
    return (torch.rand(num_tokens, dim, generator=generator) * 2 - 1) * init_range


def frequent_ids(vocab_size: int, special_ids: set[int], top_k: int) -> torch.Tensor:
    """The first `top_k` non-special ids. SentencePiece vocabularies are frequency-ordered and BPE
    ids follow merge order (earlier merges are more frequent pairs), so low ids are frequent tokens."""
    ids = [i for i in range(min(top_k + len(special_ids), vocab_size)) if i not in special_ids]
    return torch.tensor(ids[:top_k], dtype=torch.long)


def sampled_vocab(
    table: torch.Tensor, num_tokens: int, special_ids: set[int], top_k: int, generator: torch.Generator
) -> torch.Tensor:
    """Rows of the embedding table for ids drawn without replacement (with, if p exceeds the pool)."""
    pool = frequent_ids(table.shape[0], special_ids, top_k)
    if len(pool) == 0:
        raise SoftPromptError("prompt.init 'vocab': the vocabulary has no non-special tokens; use init 'uniform'")
    if num_tokens <= len(pool):
        pick = pool[torch.randperm(len(pool), generator=generator)[:num_tokens]]
    else:
        pick = pool[torch.randint(len(pool), (num_tokens,), generator=generator)]
    return table[pick].detach().float().clone()


def text(table: torch.Tensor, token_ids: list[int], num_tokens: int) -> torch.Tensor:
    """The text's token embeddings tiled cyclically to p rows (truncated when longer), as PEFT's TEXT.

    The caller tokenizes as PEFT and the official DePT code do, special tokens included (T5: `... </s>`)."""
    if not token_ids:
        raise SoftPromptError("prompt.init_text: tokenizes to no tokens; give a non-empty text")
    reps = -(-num_tokens // len(token_ids))
    ids = torch.tensor((token_ids * reps)[:num_tokens], dtype=torch.long)
    return table[ids].detach().float().clone()


def class_label(
    table: torch.Tensor,
    label_token_ids: list[list[int]],
    num_tokens: int,
    special_ids: set[int],
    top_k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Slot i is the mean of label i's sub-token embeddings (Lester et al. average multi-token labels);
    the remaining slots are sampled vocabulary rows."""
    if len(label_token_ids) > num_tokens:
        raise SoftPromptError(
            f"prompt.init_labels: {len(label_token_ids)} labels but only {num_tokens} prompt tokens; "
            "raise prompt.num_virtual_tokens or pass fewer labels"
        )
    out = sampled_vocab(table, num_tokens, special_ids, top_k, generator)
    for i, ids in enumerate(label_token_ids):
        if not ids:
            raise SoftPromptError(f"prompt.init_labels: label #{i} tokenizes to no tokens")
        out[i] = table[torch.tensor(ids)].detach().float().mean(0)
    return out


def label_names(
    table: torch.Tensor,
    name_ids: list[int],
    num_tokens: int,
    special_ids: set[int],
    top_k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """PTEC's default init (methods.md §3.2): the tokens of all label names joined by spaces, one per slot, in
    order. Longer than p: a random subset of p tokens, kept in order. Shorter: the remaining slots are
    sampled vocabulary rows (PTEC fills them with ids 1000, 1001, ..., arbitrary rows of any vocabulary;
    frequent rows keep the scale of real embeddings, as the vocab init does)."""
    if not name_ids:
        raise SoftPromptError("prompt.init_labels: the label names tokenize to no tokens; give non-empty names")
    out = sampled_vocab(table, num_tokens, special_ids, top_k, generator)
    ids = torch.tensor(name_ids, dtype=torch.long)
    if len(ids) > num_tokens:
        ids = ids[torch.randperm(len(ids), generator=generator)[:num_tokens].sort().values]
    out[: len(ids)] = table[ids].detach().float()
    return out


def from_file(path: str, num_tokens: int, dim: int) -> torch.Tensor:
    """A (p, d) tensor from a safetensors file, a weights-only torch file, or an adapter dir."""
    p = Path(path)
    if p.is_dir():
        p = p / "adapter_model.safetensors"
    if not p.is_file():
        raise SoftPromptError(f"prompt.init_file: {str(p)!r} does not exist; give a .safetensors/.pt file or adapter dir")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(p))
        else:
            tensors = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated safetensors, pickled code, not a torch file at all
        reason = gist(e)
        raise SoftPromptError(
            f"prompt.init_file: cannot read {str(p)!r} ({type(e).__name__}: {reason}); give a .safetensors file, a "
            "weights-only .pt (torch.save of a tensor or dict of tensors) or an adapter dir"
        ) from None
    if isinstance(tensors, dict):
        key = "prompt_embeddings" if "prompt_embeddings" in tensors else next(iter(tensors), None)
        tensor = tensors.get(key) if key else None
    else:
        tensor = tensors
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (num_tokens, dim):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        raise SoftPromptError(
            f"prompt.init_file: {str(p)!r} holds a prompt of shape {shape}, expected {(num_tokens, dim)}; "
            "set prompt.num_virtual_tokens to match or use another file"
        )
    return tensor.float().clone()


def initial_prompt(pcfg, table: torch.Tensor, tokenizer, seed: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The (p, d) fp32 starting prompt chosen by `pcfg.init` (a prompt config's init fields) from the
    frozen embedding table (V, d). `generator` continues a draw (a bank's k-th prompt); else it is seeded
    from `pcfg.seed`, or `seed` when that is None."""
    p, d = pcfg.num_virtual_tokens, table.shape[1]
    if generator is None:
        generator = torch.Generator().manual_seed(pcfg.seed if pcfg.seed is not None else seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if pcfg.init == "uniform":
        return uniform(p, d, pcfg.init_range, generator)
    if pcfg.init == "vocab":
        return sampled_vocab(table, p, special, pcfg.vocab_top_k, generator)
    if pcfg.init == "text":
        ids = tokenizer(pcfg.init_text)["input_ids"]  # special tokens included, as PEFT's TEXT and DePT's code
        return text(table, ids, p)
    if pcfg.init in LABEL_INITS and not pcfg.init_labels:
        raise SoftPromptError(f"prompt.init_labels: required when prompt.init is {pcfg.init!r} and the objective has "
                              "no labels; give the label names, e.g. prompt.init_labels: [sports, politics]")
    if pcfg.init == "class_label":
        ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in pcfg.init_labels]
        return class_label(table, ids, p, special, pcfg.vocab_top_k, generator)
    if pcfg.init == "label_names":
        ids = tokenizer(" ".join(pcfg.init_labels), add_special_tokens=False)["input_ids"]
        return label_names(table, ids, p, special, pcfg.vocab_top_k, generator)
    if pcfg.init == "file":
        return from_file(pcfg.init_file, p, d)
    raise SoftPromptError(f"prompt.init: unknown init {pcfg.init!r}")
