"""Batching: dynamic padding, and a resumable, optionally length-grouped, batch order."""

from __future__ import annotations

import torch


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention mask), both (B, longest), padded on the right."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def collate(items: list[dict], pad_id: int, kind: str) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch (right padding; the model is padding-side invariant)."""
    ids, mask = pad_right([it["input_ids"] for it in items], pad_id)  # (B, L)
    label_width = ids.shape[1] if kind == "causal" else max(len(it["labels"]) for it in items)
    labels = torch.full((len(items), label_width), -100, dtype=torch.long)
    for row, it in enumerate(items):
        labels[row, : len(it["labels"])] = torch.tensor(it["labels"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_sources(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Source-only batch for generation (the model re-aligns rows itself)."""
    return collate([{"input_ids": it["source_ids"], "labels": []} for it in items], pad_id, "seq2seq")


def epoch_order(lengths: list[int], epoch: int, seed: int, batch_size: int, group_by_length: bool) -> list[int]:
    """The sample order of one epoch: a permutation seeded by (seed, epoch), so any position in any
    epoch can be recomputed on resume without saved sampler state. With `group_by_length`, each
    window of 50 batches is sorted by length (longest first) and its batches shuffled, which keeps
    padding low while keeping the order random at the window scale. The permutation is first cut to
    whole batches (the epoch's dropped remainder stays random), so every group is a full batch: a
    ragged group shuffled into the middle would shift all later batches across two groups and make
    one epoch's slices differ in shape between ranks."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return order
    if len(order) >= batch_size:  # smaller: one short group, which BatchStream cycles to a full batch
        order = order[: len(order) // batch_size * batch_size]
    window = batch_size * 50
    grouped = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            grouped.extend(batches[b])
    return grouped


class BatchStream:
    """Endless stream of global batches over epochs; `position` counts batches served so far.
    Each process takes its slice of every global batch, so all ranks agree on the order."""

    def __init__(self, items: list[dict], batch_size: int, seed: int, group_by_length: bool,
                 rank: int = 0, world: int = 1, position: int = 0):
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.group_by_length, self.rank, self.world = group_by_length, rank, world
        self.global_batch = batch_size * world
        self.per_epoch = max(1, len(items) // self.global_batch)  # drop the ragged last batch
        self.lengths = [len(it["input_ids"]) for it in items]
        self.position = position
        self._epoch, self._order = None, None

    def next(self) -> list[dict]:
        epoch, index = divmod(self.position, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = epoch_order(self.lengths, epoch, self.seed, self.global_batch, self.group_by_length)
            if len(self._order) < self.global_batch:  # tiny datasets: cycle to fill one batch
                self._order = (self._order * (self.global_batch // len(self._order) + 1))[: self.global_batch]
        start = index * self.global_batch + self.rank * self.batch_size
        self.position += 1
        return [self.items[i] for i in self._order[start:start + self.batch_size]]
