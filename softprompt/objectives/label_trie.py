"""Trie-constrained decoding for text-to-text multi-label classification: PTEC's T2T baseline (Buchner, Cao,
Kalo, von Ehrenheim, NAACL 2024 Industry, https://aclanthology.org/2024.naacl-industry.10/; official
`sectors/utils/trie.py`; research/methods.md §3.4).

The target is "label1<sep>label2<eos>". At each step `generate` may only pick a token that keeps the output
a prefix of such a string: whole labels from a fixed set, each at most once, separated by the separator's
tokens and ended by EOS. What differs from the official trie, and why:

- The state is recomputed from the generated tokens alone, at every step (`LabelTrie.allowed`). The official
  code deletes finished labels from a per-`batch_id` copy of the trie; under beam search that id names
  B x beams rows, and the copies outlive the `generate` call (methods.md §3.8).
- A label that is a token-prefix of another ("red" and "red green") is one trie node that both ends a label
  and continues to the longer one; a used label no longer ends there, an exhausted subtree is no longer entered.
- Every token id comes from the tokenizer, in context (`labels_from_tokenizer`); the official code
  hard-codes the separator's id per model family.
- Labels are read back by splitting on the separator (`parse_labels`), not by substring search, which
  counts "Media" as found inside "Social Media".

With `inputs_embeds` (how `SoftPromptModel.generate` calls a causal base) transformers 5 starts `input_ids`
empty, so processors see the new tokens only; a seq2seq decoder's ids start with its decoder start token;
a causal base called with `input_ids` shows the (left-padded) input first. `TrieLogitsProcessor` finds
where the new tokens begin on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch

from softprompt.errors import SoftPromptError

_DONE = "done"  # walk phases: inside a label, inside the separator, after EOS
_LABEL = "label"
_SEP = "separator"


@dataclass
class _Node:
    children: dict[int, "_Node"] = field(default_factory=dict)
    label: int | None = None  # the label whose tokens end here
    below: int = 0  # bitmask of the labels ending here or deeper: entered only while one of them is unused


class LabelTrie:
    """The tokens allowed after a generated prefix, for outputs `label (sep label)* eos`.

    `label_token_ids`: each label's tokens as they appear in the output (see `labels_from_tokenizer`);
    `separator_ids`: the separator's tokens between two labels; `pad_id`: what `generate` writes into a
    finished row (allowed after EOS besides EOS itself)."""

    def __init__(self, label_token_ids: list[list[int]], separator_ids: list[int], eos_id: int,
                 pad_id: int | None = None):
        labels = [list(map(int, ids)) for ids in label_token_ids]
        separator = list(map(int, separator_ids))
        if not labels:
            raise SoftPromptError("label trie: give at least one label")
        if not separator:
            raise SoftPromptError("label trie: the separator has no tokens")
        for i, ids in enumerate(labels):
            if not ids:
                raise SoftPromptError(f"label trie: label {i} has no tokens")
            if eos_id in ids:
                raise SoftPromptError(f"label trie: label {i} contains the EOS id {eos_id}, which would end the output")
        if eos_id in separator:
            raise SoftPromptError(f"label trie: the separator {separator} contains the EOS id {eos_id}")
        seen: dict[tuple[int, ...], int] = {}
        for i, ids in enumerate(labels):
            if tuple(ids) in seen:
                raise SoftPromptError(f"label trie: labels {seen[tuple(ids)]} and {i} have the same tokens {ids}; "
                                      "the output could not tell them apart")
            seen[tuple(ids)] = i
        self.labels, self.separator, self.eos_id, self.pad_id = labels, separator, int(eos_id), pad_id
        self.root = _Node()
        for i, ids in enumerate(labels):
            node = self.root
            node.below |= 1 << i
            for t in ids:
                node = node.children.setdefault(t, _Node())
                node.below |= 1 << i
            node.label = i
        for i, ids in enumerate(labels):  # a walk must never have to guess between "label goes on" and "separator"
            end = self._node(ids)
            if separator[0] in end.children:
                raise SoftPromptError(
                    f"label trie: after label {i} ({ids}) the separator's first token {separator[0]} also continues "
                    "a longer label; choose a separator whose tokens no label continues with")
        self.all_labels = (1 << len(labels)) - 1

    def _node(self, ids: Sequence[int]) -> _Node:
        node = self.root
        for t in ids:
            node = node.children[t]
        return node

    @property
    def max_length(self) -> int:
        """Tokens in the longest valid output (every label, the separators, EOS): `max_new_tokens` at least
        this many lets every row end with EOS rather than be cut off."""
        return sum(map(len, self.labels)) + len(self.separator) * (len(self.labels) - 1) + 1

    def _walk(self, prefix: Sequence[int]):
        """(phase, node, separator position, used-label bitmask) after `prefix`; None if it is no valid prefix."""
        phase, node, pos, used = _LABEL, self.root, 0, 0
        for t in prefix:
            if phase == _DONE:  # a finished row: `generate` pads it (pad_token_id, or EOS), whatever we allowed
                continue
            if phase == _SEP:
                if t != self.separator[pos]:
                    return None
                pos += 1
                if pos == len(self.separator):
                    phase, node, pos = _LABEL, self.root, 0
                continue
            child = node.children.get(t)
            if child is not None and child.below & ~used:
                node = child
                continue
            if node.label is None or used >> node.label & 1:  # no unused label ends here: nothing else may follow
                return None
            used |= 1 << node.label
            if t == self.eos_id:
                phase = _DONE
            elif t == self.separator[0] and used != self.all_labels:
                phase, pos = (_SEP, 1) if len(self.separator) > 1 else (_LABEL, 0)
                node = self.root
            else:
                return None
        return phase, node, pos, used

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """The token ids that may follow `prefix` (the generated tokens only, EOS and padding included)."""
        state = self._walk(prefix)
        if state is None:
            raise SoftPromptError(
                f"label trie: the generated tokens {list(prefix)} are not a prefix of 'label(, label)* <eos>'; the "
                "constraint was applied to more than the new tokens (pass TrieLogitsProcessor(start=...))")
        phase, node, pos, used = state
        if phase == _DONE:
            return [self.eos_id] if self.pad_id is None or self.pad_id == self.eos_id else [self.eos_id, self.pad_id]
        if phase == _SEP:
            return [self.separator[pos]]
        out = [t for t, child in node.children.items() if child.below & ~used]
        if node.label is not None and not used >> node.label & 1:  # an unused label is complete here
            out.append(self.eos_id)
            if (used | 1 << node.label) != self.all_labels:  # a separator only if a label is left to follow it
                out.append(self.separator[0])
        return out

    @classmethod
    def from_tokenizer(cls, tokenizer, labels: list[str], separator: str = ", ", prefix: str = " ") -> "LabelTrie":
        """The trie for `labels` as `tokenizer` writes "prefix + label1 + separator + label2" (see
        `labels_from_tokenizer`), ending with the tokenizer's EOS; finished rows may hold its pad id."""
        label_ids, separator_ids = labels_from_tokenizer(tokenizer, labels, separator, prefix)
        return cls(label_ids, separator_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)


class LabelTokens(NamedTuple):
    label_ids: list[list[int]]  # each label's tokens, as at the start of the output and after the separator
    separator_ids: list[int]  # the separator's tokens between two labels


def _check_labels(labels: Sequence[str], separator: str) -> None:
    if not separator:
        raise SoftPromptError("labels: the separator is empty")
    if not labels:
        raise SoftPromptError("labels: give at least one label")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise SoftPromptError(f"labels: {label!r} is not a non-empty string")
        if label != label.strip():
            raise SoftPromptError(f"labels: {label!r} has leading or trailing whitespace, which reading the "
                                  "output back strips; remove it")
        if separator in label:
            raise SoftPromptError(f"labels: {label!r} contains the separator {separator!r}, so the output could "
                                  "not be split back into labels; choose another separator")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise SoftPromptError(f"labels: {duplicates} appear more than once")


def labels_from_tokenizer(tokenizer, labels: list[str], separator: str = ", ", prefix: str = " ") -> LabelTokens:
    """The token ids of each label and of the separator as they appear in the target text
    `prefix + separator.join(chosen labels)`, tokenized as targets are (`add_special_tokens=False`).

    `prefix` is what the target text holds before the first label: " " for the target template
    " {label_name}" that byte-level BPE tokenizers need (GPT-2, Llama 3, Qwen mark a word start with a
    leading space); "" for SentencePiece tokenizers (Llama 2, T5), which mark word starts themselves."""
    _check_labels(labels, separator)
    if tokenizer.eos_token_id is None:
        raise SoftPromptError("labels: the tokenizer has no EOS token, which ends a constrained output")

    def encode(texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # Why each label is encoded as `prefix + label`, and the separator as what lies between two labels: the
    # tokens a BPE model sees for a label depend on what precedes it. " red, blue" is [" red", ",", " blue"]:
    # the separator's space joins the next label's first token, so a label after the separator is the same
    # tokens as a label after the prefix (" blue"), and the separator alone is [","]. The trie needs one
    # token sequence per label wherever it stands, so that identity is checked for every ordered pair below
    # rather than assumed; a separator or prefix that breaks it (e.g. "," with prefix " ": "blue" after ","
    # has no space) is refused with the pair that shows it.
    label_ids = encode([prefix + label for label in labels])
    for label, ids in zip(labels, label_ids):
        if not ids:
            raise SoftPromptError(f"labels: {label!r} gives no tokens")
    pairs = [(j, i) for j in range(len(labels)) for i in range(len(labels)) if i != j] or [(0, 0)]
    joined = [prefix + labels[j] + separator + labels[i] for j, i in pairs]
    separator_ids = None
    for (j, i), text, ids in zip(pairs, joined, encode(joined)):
        first, second = label_ids[j], label_ids[i]
        middle = ids[len(first):len(ids) - len(second)]
        if ids[:len(first)] != first or ids[len(ids) - len(second):] != second or not middle:
            raise SoftPromptError(
                f"labels: in {text!r} the tokenizer does not keep {labels[j]!r} and {labels[i]!r} as they are on their "
                f"own ({ids} vs {first} + separator + {second}); choose another separator (e.g. ', ') or prefix")
        if separator_ids is None:
            separator_ids = middle
        elif middle != separator_ids:
            raise SoftPromptError(f"labels: the separator {separator!r} gives tokens {middle} in {text!r} but "
                                  f"{separator_ids} elsewhere; choose another separator")
    # Round trip: what generation decodes from these tokens must be the joined text, or parse_labels would
    # read something other than what the trie allowed.
    decoded_pairs = tokenizer.batch_decode([label_ids[j] + separator_ids + label_ids[i] for j, i in pairs])
    for text, decoded in zip(joined, decoded_pairs):
        if decoded != text:
            raise SoftPromptError(f"labels: the tokens of {text!r} decode to {decoded!r}; choose another separator "
                                  "or prefix")
    return LabelTokens(label_ids, separator_ids)


class ParsedLabels(NamedTuple):
    labels: list[str]  # known labels, in the order generated, each once
    unknown: list[str]  # pieces that are no label (stripped), reported rather than matched approximately


def parse_labels(text: str, labels: Sequence[str], separator: str = ", ") -> ParsedLabels:
    """Split generated text on the separator; a piece is a label only if it equals one exactly (after
    stripping whitespace). Never substring matching: "Social Media" does not contain the label "Media"."""
    _check_labels(labels, separator)
    known = set(labels)
    found: list[str] = []
    unknown: list[str] = []
    if not text.strip():
        return ParsedLabels(found, unknown)  # nothing generated: no label predicted
    for piece in text.split(separator):
        piece = piece.strip()
        if piece in known:
            if piece not in found:
                found.append(piece)
        else:
            unknown.append(piece)
    return ParsedLabels(found, unknown)


class TrieLogitsProcessor:
    """A `transformers` logits processor (duck-typed: `LogitsProcessorList` only calls it, so this module
    needs no transformers import): every token the trie does not allow gets -inf.

    Pass it as `generate(..., logits_processor=LogitsProcessorList([TrieLogitsProcessor(trie)]))`, also
    through `SoftPromptModel.generate`. transformers 5 (read in 5.24) runs it before temperature, top-k, top-p, so
    sampling draws from the allowed tokens. Rows are independent, so batches, beams (B x beams rows), returned
    sequences and padding need no bookkeeping.

    `start`: how many leading columns of `input_ids` are not generated (0: causal from `inputs_embeds`; 1: a
    seq2seq decoder start token; the padded input length: causal from `input_ids`). None takes the width of
    `input_ids` at the first step of each `generate` call, a call being recognised by `input_ids` not being
    one column wider than at the previous step. A reused processor would take a new call whose input is
    exactly that wide for a continuation (and fail loudly, the input being no label list): build one per
    call, or pass `start`. Candidate decoding (assistant models, prompt lookup) steps by more than one
    column: pass `start` there."""

    def __init__(self, trie: LabelTrie, start: int | None = None):
        self.trie = trie
        self.start = start
        self._auto_start: int | None = None
        self._last_width: int | None = None

    def _start(self, width: int) -> int:
        if self.start is not None:
            return self.start
        if self._last_width is None or width != self._last_width + 1:
            self._auto_start = width  # a new generate call
        self._last_width = width
        return self._auto_start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        start = self._start(input_ids.shape[1])
        mask = torch.full_like(scores, -math.inf)  # (rows, V)
        for row, prefix in enumerate(input_ids[:, start:].tolist()):
            mask[row, self.trie.allowed(prefix)] = 0
        out = scores + mask
        # Another processor may have put every allowed token at -inf (min_new_tokens on EOS, bad_words_ids);
        # the trie wins there: those rows choose among their allowed tokens alone, as transformers'
        # PrefixConstrainedLogitsProcessor does.
        blocked = out.amax(dim=-1).isneginf()  # (rows,)
        return torch.where(blocked[:, None], mask, out)


def prefix_allowed_tokens_fn(trie: LabelTrie, start: int = 0):
    """The same constraint as `generate(prefix_allowed_tokens_fn=...)`: transformers calls it per row with that
    row's `input_ids`; `start` is as in `TrieLogitsProcessor` (0 for `SoftPromptModel.generate` on a causal
    model, 1 on seq2seq). Every padded row has the same width, so one `start` serves every row."""

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.allowed(input_ids[start:].tolist())

    return allowed
