"""Label sets as text: PTEC's text-to-text (T2T) prompt-tuning baseline (Buchner, Cao, Kalo, von Ehrenheim,
"Prompt Tuned Embedding Classification for Industry Sector Allocation", NAACL 2024 Industry,
https://aclanthology.org/2024.naacl-industry.10/; official `pt_tuner.py`, `dataset.py`; research/methods.md §3.3-3.4).

A row's target is its labels joined by the separator ("Media; Politics") then EOS, after the source, as the
LM objective trains any target: token cross-entropy on the target tokens only (causal) or in the decoder
(seq2seq). The base's LM head writes the labels; there is no classification head.
- order (`label_order`): by training-set frequency, most frequent first (PTEC), ties in objective.labels'
  order; or objective.labels' order ("given").
- loss (`example_weight`): PTEC weights each row's mean token CE by the sum of its labels' inverse-frequency
  weights max_k n_k / n_j (n: train counts); "none" weighs rows equally.
- decoding (`decoding`): "trie" allows only separator-joined lists of distinct labels ending in EOS
  (label_trie.py); "free" is unconstrained. Either way the output is split on the separator, never searched
  for substrings; pieces that are no label, or repeat one, are dropped and counted (eval_invalid_*).
Every token id comes from the tokenizer: the targets are built from the same in-context label and separator
ids as the trie (`labels_from_tokenizer`), so every training target is a path the trie accepts.

Metrics: eval_loss (each row's mean target-token CE, averaged over rows, unweighted), the label-set metrics
of label_metrics.py on the parsed outputs (no scores, so no ranking metrics) and the invalid-output counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from softprompt.data.collate import collate, pad_right
from softprompt.data.loading import limited
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.objectives import label_data
from softprompt.objectives.label_data import LABEL_FORMATS
from softprompt.objectives.label_metrics import AVERAGES
from softprompt.objectives.label_trie import (LabelTokens, LabelTrie, TrieLogitsProcessor, labels_from_tokenizer,
                                              parse_labels)
from softprompt.objectives.lm import scored_targets
from softprompt.sharded_eval import EvalParts

log = logging.getLogger(__name__)

LABEL_ORDERS = ("frequency", "given")
DECODINGS = ("trie", "free")
EXAMPLE_WEIGHTS = ("inverse_frequency", "none")


@dataclass(frozen=True)
class LabelTextConfig:
    type: str = "label_text"
    labels: tuple[str, ...] = ()  # label names, also the order of label_order: given; none: read from the train split
    label_format: str = "columns"  # columns | list | index, as the classify objective (label_data.py)
    label_column: str = "labels"  # the column of the list and index formats
    separator: str = "; "  # between two labels in a target (PTEC's join)
    label_order: str = "frequency"  # frequency (train counts, descending; PTEC) | given
    decoding: str = "trie"  # trie (constrained to label lists) | free (unconstrained greedy or beam)
    num_beams: int = 1
    max_new_tokens: int | None = None  # None: the longest label list the trie allows (every label once)
    example_weight: str = "inverse_frequency"  # inverse_frequency (PTEC) | none
    # What the target text holds before the first label. None: " " (byte-level BPE marks a word start with
    # a space: GPT-2, Llama 3) where the tokenizer keeps labels intact after it, else "" (SentencePiece marks
    # word starts itself: Llama 2, T5).
    label_prefix: str | None = None

    multi_label = True  # not a field: a target lists any number of labels (label_data reads this)

    def __post_init__(self):
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"objective.labels: names repeat in {list(self.labels)}; give each label once")
        if not self.separator:
            raise ConfigError("objective.separator: must not be empty; PTEC joins labels with '; '")
        for label in self.labels:
            if not label.strip() or label != label.strip():
                raise ConfigError(f"objective.labels: {label!r} is empty or has leading/trailing whitespace, which "
                                  "reading the output back strips; remove it")
            if self.separator in label:
                raise ConfigError(f"objective.labels: {label!r} contains the separator {self.separator!r}, so outputs "
                                  "could not be split back into labels; set objective.separator to another string")
        for key, value, allowed in (("label_format", self.label_format, LABEL_FORMATS),
                                    ("label_order", self.label_order, LABEL_ORDERS),
                                    ("decoding", self.decoding, DECODINGS),
                                    ("example_weight", self.example_weight, EXAMPLE_WEIGHTS)):
            if value not in allowed:
                raise ConfigError(f"objective.{key}: {value!r} is not valid; choose one of {list(allowed)}")
        if self.num_beams < 1:
            raise ConfigError(f"objective.num_beams: must be >= 1 (1: greedy), got {self.num_beams}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"objective.max_new_tokens: must be > 0, got {self.max_new_tokens}; set it to null "
                              "for the longest label list")


def check(cfg: LabelTextConfig, full) -> None:
    """Cross-section checks before anything loads."""
    if full.head is not None:
        raise ConfigError("head: the label_text objective writes the labels with the base's LM head; drop the head "
                          "section (a trained head goes with objective.type: classify, method: ptec)")
    if not full.data.add_eos:
        raise ConfigError("data.add_eos: the label_text objective ends every target with EOS, where decoding "
                          "stops; set it to true")


class Decoded(NamedTuple):
    labels: list[str]  # the valid labels, in the order generated, each once
    invalid: int  # pieces between separators that are no label or repeat one
    finished: bool  # the output ended with EOS (not cut off by max_new_tokens)


class LabelText:
    uses_head = False

    def __init__(self, cfg: LabelTextConfig):
        self.cfg = cfg
        self.order: list[int] | None = None  # label indices in target order, set from the train split
        self.label_weight: np.ndarray | None = None  # (L,) max_k n_k / n_j, inverse_frequency only
        self._tokens: tuple | None = None  # (tokenizer, LabelTokens, LabelTrie), built on first use

    def check_model(self, kind: str, has_head: bool, name: str) -> None:
        if kind == "encoder":
            raise SoftPromptError(f"objective label_text generates the labels and needs a causal or seq2seq model; "
                                  f"{name!r} is an encoder (set model.kind, or use objective.type: classify)")
        if has_head:
            raise SoftPromptError("head: the label_text objective scores the base's own LM head; remove the head")

    # -- tokens --------------------------------------------------------------------------------------

    def label_tokens(self, tokenizer) -> tuple[LabelTokens, LabelTrie]:
        """The labels' and the separator's in-context ids, and the trie over them, for `tokenizer`."""
        if self._tokens is None or self._tokens[0] is not tokenizer:
            tokens = self._in_context(tokenizer)
            trie = LabelTrie(tokens.label_ids, tokens.separator_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
            self._tokens = (tokenizer, tokens, trie)
        return self._tokens[1], self._tokens[2]

    def _in_context(self, tokenizer) -> LabelTokens:
        """`labels_from_tokenizer` with objective.label_prefix, or else the first of " " and "" that the tokenizer
        keeps every label intact after."""
        labels, separator = list(self.cfg.labels), self.cfg.separator
        prefixes = (self.cfg.label_prefix,) if self.cfg.label_prefix is not None else (" ", "")
        for prefix in prefixes[:-1]:
            try:
                return labels_from_tokenizer(tokenizer, labels, separator, prefix)
            except SoftPromptError:
                pass  # e.g. SentencePiece: " red" alone is ["▁", "▁red"], after "; " just "▁red"
        try:
            return labels_from_tokenizer(tokenizer, labels, separator, prefixes[-1])
        except SoftPromptError as e:
            raise SoftPromptError(f"objective: {e} (keys: objective.separator, objective.label_prefix)") from None

    # -- data ----------------------------------------------------------------------------------------

    def encode(self, rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
        """Causal rows: source + target ids, labels on the target only; seq2seq: the target in the decoder.
        The source is cut as data.truncation says (as the LM objective's rows); targets are never cut."""
        from softprompt.data.loading import _truncate

        rows = limited(rows, data_cfg, split)
        label_data.check_columns(self.cfg, set(rows.column_names), data_cfg.source_template, split)
        matrix = label_data.label_matrix(self.cfg, rows, split)  # (N, L) 0/1
        empty = np.flatnonzero(matrix.sum(1) == 0)
        if len(empty):
            # An empty list is no output the trie allows (it starts with a label), so training on a bare EOS
            # would teach what decoding forbids; PTEC drops rows left with no label.
            raise SoftPromptError(f"data: {split} row {int(empty[0])} has no label ({len(empty)} such row(s)); a "
                                  "label_text target lists at least one label; drop those rows")
        if split == data_cfg.train_split:
            self._fit(matrix, split)
        elif self.order is None:
            self._fit(self._train_matrix(data_cfg, matrix, split), data_cfg.train_split, weights=False)
        tokens, _ = self.label_tokens(tokenizer)
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        position = {j: r for r, j in enumerate(self.order)}
        weighted = split == data_cfg.train_split and self.label_weight is not None  # only training weighs rows
        out = []
        for i, text in enumerate(label_data.sources(rows, data_cfg.source_template, split)):
            chosen = sorted(np.flatnonzero(matrix[i]).tolist(), key=position.__getitem__)
            tgt = list(tokens.label_ids[chosen[0]])
            for j in chosen[1:]:
                tgt += tokens.separator_ids + tokens.label_ids[j]
            tgt.append(eos)  # label ⧺ (sep ⧺ label)* ⧺ EOS: a path through the trie
            if len(tgt) > data_cfg.max_target_length:
                raise SoftPromptError(f"data: {split} row {i} has a label-list target of {len(tgt)} tokens, over "
                                      f"data.max_target_length={data_cfg.max_target_length}; raise it")
            src = tokenizer(text)["input_ids"]
            room = data_cfg.max_length - (len(tgt) if kind == "causal" else 0)
            if len(src) > room:
                src = _truncate(src, room, data_cfg.truncation, bos, eos, f"{split} row {i}", data_cfg.max_length)
            if kind == "causal":
                item = {"input_ids": src + tgt, "labels": [-100] * len(src) + tgt}
            else:
                item = {"input_ids": src, "labels": tgt}
            weight = float(self.label_weight[chosen].sum()) if weighted else 1.0
            item.update(source_ids=src, target=matrix[i].tolist(), weight=weight)
            out.append(item)
        return out

    def _fit(self, matrix: np.ndarray, split: str, weights: bool = True) -> None:
        """Target order and row weights from the train split's label matrix (N, L)."""
        counts = matrix.sum(0)  # (L,)
        labels = range(len(self.cfg.labels))
        self.order = sorted(labels, key=lambda j: -counts[j]) if self.cfg.label_order == "frequency" else list(labels)
        if weights and self.cfg.example_weight == "inverse_frequency":
            self.label_weight = label_data.inverse_frequency(matrix, self.cfg.labels, split).numpy()

    def _train_matrix(self, data_cfg, fallback: np.ndarray, split: str) -> np.ndarray:
        """The train split's label matrix, for the target order of a split encoded on its own (`softprompt
        eval`): the order only changes eval_loss, never the predictions. Without the train split, the split's
        own counts (what the official code orders each split by)."""
        if self.cfg.label_order == "given":
            return fallback
        from softprompt.data import load_splits

        try:
            train_split, rows = load_splits(data_cfg)["train"]
            rows = limited(rows, data_cfg, train_split)
            label_data.check_columns(self.cfg, set(rows.column_names), data_cfg.source_template, train_split)
            return label_data.label_matrix(self.cfg, rows, train_split)
        except SoftPromptError as e:
            log.warning("objective.label_order: the train split cannot be read (%s); the %r split's targets are "
                        "ordered by its own label counts, which may change eval_loss a little", e, split)
            return fallback

    def collate(self, items: list[dict], pad_id: int, kind: str) -> dict[str, torch.Tensor]:
        """The LM batch (right padding) plus, aligned with the logits, each position's target and its share
        of its row (1 / the row's target tokens), and each row's weight."""
        batch = collate(items, pad_id, kind)  # input_ids, attention_mask (B, L); labels (B, L) or (B, T)
        targets = scored_targets(batch["labels"], kind, batch["attention_mask"] if kind == "causal" else None)
        scored = targets != -100  # (B, T)
        share = scored / scored.sum(1, keepdim=True).clamp(min=1)  # (B, T): a row's shares sum to 1
        batch.update(targets=targets, share=share.float(),
                     weight=torch.tensor([it["weight"] for it in items], dtype=torch.float32))  # weight (B,)
        return batch

    # -- loss ----------------------------------------------------------------------------------------

    # The normaliser is the rows' summed weight: the loop divides the window's summed loss by it across
    # micro-batches and processes, so every step takes the gradient of the weighted mean of the rows' mean
    # token CE however rows fall into micro-batches and ranks. PTEC sums w_i * CE_i over its 32 rows instead:
    # the same direction, larger by the window's sum of weights (which Adam's update all but ignores); the
    # mean keeps train_loss on the CE scale and clipping at 1.0 meaningful.
    def weight(self, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        return batch["weight"].sum()

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (row_losses(model, batch) * batch["weight"]).sum()

    # -- evaluation ----------------------------------------------------------------------------------

    def metric_names(self) -> list[str]:
        sets = [f"eval_{a}_{m}" for a in AVERAGES for m in ("precision", "recall", "f1", "jaccard")]
        return ["eval_loss", *sets, "eval_avg_predicted_labels", "eval_avg_gold_labels", "eval_invalid_rate",
                "eval_invalid_labels"]

    default_metric = "eval_macro_f1"  # PTEC selects by dev macro-F1
    shown_metrics = ("eval_loss", "eval_micro_f1", "eval_macro_f1", "eval_samples_f1", "eval_invalid_rate")  # eval lines

    def greater_is_better(self, metric: str) -> bool:
        return not any(word in metric for word in ("loss", "invalid"))

    def evaluate(self, model, items: list[dict], batch_size: int) -> dict[str, float]:
        return self.eval_metrics(self.eval_parts(model, items, batch_size), items)

    def eval_parts(self, model, items: list[dict], batch_size: int) -> EvalParts:
        """Each row's decoded label list, and the rows' summed mean target-token CE."""
        decoded = self.decode(model, [it["source_ids"] for it in items], batch_size)
        return EvalParts({"loss": self.row_loss_sum(model, items, batch_size), "rows": len(items)}, {"decoded": decoded})

    def eval_metrics(self, parts: EvalParts, items: list[dict]) -> dict[str, float]:
        from softprompt.objectives.label_metrics import label_metrics

        decoded = parts.rows["decoded"]
        position = {name: j for j, name in enumerate(self.cfg.labels)}
        decisions = np.zeros((len(items), len(self.cfg.labels)), dtype=int)  # (N, L)
        for row, d in enumerate(decoded):
            decisions[row, [position[name] for name in d.labels]] = 1
        metrics = {"eval_loss": parts.sums["loss"] / max(parts.sums["rows"], 1)}
        metrics.update(label_metrics(np.array([it["target"] for it in items]), decisions))  # no scores: no ranking
        # an invalid output: a piece that is no label or repeats one, or no EOS within max_new_tokens
        metrics["eval_invalid_rate"] = float(np.mean([d.invalid > 0 or not d.finished for d in decoded]))
        metrics["eval_invalid_labels"] = float(np.mean([d.invalid for d in decoded]))
        return metrics

    def eval_loss(self, model, items: list[dict], batch_size: int) -> float:
        """The rows' mean target-token CE, averaged over rows, unweighted (comparable across train splits)."""
        return self.row_loss_sum(model, items, batch_size) / max(len(items), 1)

    @torch.no_grad()
    def row_loss_sum(self, model, items: list[dict], batch_size: int) -> float:
        """The sum over rows of each row's mean target-token CE."""
        was_training = model.training
        model.eval()
        total = 0.0
        for start in range(0, len(items), batch_size):
            batch = self.collate(items[start:start + batch_size], model.tokenizer.pad_token_id, model.kind)
            total += row_losses(model, {k: v.to(model.device) for k, v in batch.items()}).sum().item()
        model.train(was_training)
        return total

    @torch.no_grad()
    def decode(self, model, sources: list[list[int]], batch_size: int) -> list[Decoded]:
        """Generate each source's label list (trie-constrained unless decoding: free) and read it back."""
        tokenizer = model.tokenizer
        _, trie = self.label_tokens(tokenizer)
        max_new = self.cfg.max_new_tokens or trie.max_length
        was_training = model.training
        model.eval()
        out = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            ids, mask = pad_left(chunk, tokenizer.pad_token_id) if model.kind == "causal" else \
                pad_right(chunk, tokenizer.pad_token_id)  # (B, longest)
            # one processor per call: it finds where the new tokens start at its first step (label_trie.py)
            constraint = {"logits_processor": [TrieLogitsProcessor(trie)]} if self.cfg.decoding == "trie" else {}
            new = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new,
                                 num_beams=self.cfg.num_beams, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, **constraint)
            if model.kind != "causal":
                new = new[:, 1:]  # (B, T): the decoder's start token is no output
            out.extend(self.read(row, tokenizer) for row in new.tolist())
        model.train(was_training)
        return out

    def read(self, ids: list[int], tokenizer) -> Decoded:
        """Split one output (new token ids) on the separator, up to its first EOS."""
        eos = tokenizer.eos_token_id
        finished = eos in ids
        text = tokenizer.decode(ids[:ids.index(eos)] if finished else ids, skip_special_tokens=True)
        parsed = parse_labels(text, self.cfg.labels, self.cfg.separator)
        pieces = len(text.split(self.cfg.separator)) if text.strip() else 0
        return Decoded(parsed.labels, pieces - len(parsed.labels), finished)


def row_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) each row's mean token CE over its target tokens. Only `model(...)` is called (DDP/FSDP wrappers
    expose forward alone); `labels` make the seq2seq decoder's input (the model's own summed loss is unused:
    rows need their own means)."""
    logits = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], right_padded=True).logits
    share = batch["share"]  # (B, T), aligned with the logits as batch["targets"] is
    ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100,
                         reduction="none")  # (B*T,) from logits (B*T, V)
    return (ce.view_as(share) * share).sum(1)  # (B, T) -> (B,)


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention mask), both (B, longest), padded on the left (PTEC's generation)."""
    ids, mask = pad_right([seq[::-1] for seq in sequences], pad_id)  # (B, longest), each row reversed
    return ids.flip(1), mask.flip(1)


def predict_labels(model, inputs: list[str] | list[dict], cfg: LabelTextConfig, template: str = "{text}",
                   batch_size: int = 64) -> list[list[str]]:
    """The label list generated for each input, parsed on the separator (invalid pieces dropped). `inputs`:
    texts, each rendered by `template` as training rendered its rows (`{text}`: the text itself), or items
    from `LabelText.encode` (their `source_ids`)."""
    from softprompt.data.templates import render, template_fields

    if inputs and isinstance(inputs[0], dict):
        sources = [it["source_ids"] for it in inputs]
    else:
        fields = template_fields(template, "template")
        if len(fields) != 1:
            raise SoftPromptError(f"predict_labels: the template {template!r} uses the columns {fields}; a text "
                                  "fills exactly one column")
        sources = [model.tokenizer(render(template, {fields[0]: t}, "template"))["input_ids"] for t in inputs]
    return [d.labels for d in LabelText(cfg).decode(model, sources, batch_size)]


def build(cfg: LabelTextConfig) -> LabelText:
    return LabelText(cfg)
