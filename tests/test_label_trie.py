"""Trie-constrained decoding for PTEC's text-to-text baseline (research/methods.md §3.4): the trie's rules on
toy ids, the in-context label tokens a real tokenizer gives, and constrained `generate` on tiny random models,
each output checked by matching it directly against the label tokens (not through the trie)."""

from itertools import permutations

import pytest
import torch

from conftest import build_model
from softprompt.errors import SoftPromptError
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel
from softprompt.objectives.label_trie import (LabelTrie, TrieLogitsProcessor, labels_from_tokenizer, parse_labels,
                                              prefix_allowed_tokens_fn)

EOS, PAD = 2, 0
# toy ids: "ab" and "ac" share a first token; "a" is a token-prefix of both
AB, AC, A, D = [5, 6], [5, 7], [5], [8]
LABELS = ["red", "red green", "blue", "sky blue", "cat"]  # "red" is a token-prefix of "red green"
TEXTS = ["the cat sat on the mat", "sky", "apple = red", "one two three four five six"]


def allowed(trie, prefix):
    return set(trie.allowed(prefix))


def read_output(ids, label_ids, separator):
    """The label indices of `label (sep label)* eos [pad or eos ...]`, found by matching label tokens
    directly (with backtracking); fails the test if `ids` is not such an output."""
    assert EOS in ids, f"no EOS in {ids}"
    end = ids.index(EOS)
    assert all(t in (EOS, PAD) for t in ids[end + 1:]), f"not padding after EOS: {ids}"
    body = ids[:end]

    def match(pos, used):
        for i, label in enumerate(label_ids):
            stop = pos + len(label)
            if i in used or body[pos:stop] != label:
                continue
            if stop == len(body):
                return [i]
            if body[stop:stop + len(separator)] == separator:
                rest = match(stop + len(separator), used | {i})
                if rest is not None:
                    return [i] + rest
        return None

    found = match(0, frozenset())
    assert found is not None, f"{body} is not a separator-joined list of distinct labels"
    return found


# -- the trie's rules ------------------------------------------------------------------------------


def test_a_label_that_prefixes_another_may_end_or_continue():
    trie = LabelTrie([AB, AC, A, D], [9], EOS, PAD)
    assert allowed(trie, []) == {5, 8}
    assert allowed(trie, [5]) == {6, 7, 9, EOS}  # continue to "ab"/"ac", or end "a"
    assert allowed(trie, [5, 6]) == {9, EOS}
    assert allowed(trie, [5, 9]) == {5, 8}  # "a" used: "ab", "ac" and "d" remain
    assert allowed(trie, [5, 9, 5]) == {6, 7}  # "a" cannot end a second time: the label must go on
    assert allowed(trie, [5, 6, 9, 5]) == {7, 9, EOS}  # "ab" used; "a" still ends here


def test_labels_never_repeat():
    trie = LabelTrie([AB, AC, A, D], [9], EOS, PAD)
    assert allowed(trie, [8, 9]) == {5}
    assert allowed(trie, [5, 6, 9, 5, 7, 9, 5]) == {EOS, 9}  # "ab", "ac" used: "a" ends here, "d" may follow
    assert allowed(trie, [5, 6, 9, 5, 7, 9, 5, 9]) == {8}
    assert 6 not in allowed(trie, [5, 6, 9, 5])
    for repeat in ([8, 9, 8], [5, 6, 9, 5, 6], [5, 9, 5, 9]):
        with pytest.raises(SoftPromptError, match="not a prefix"):
            trie.allowed(repeat)


def test_separator_only_while_a_label_remains():
    trie = LabelTrie([A, D], [9], EOS, PAD)
    assert allowed(trie, [5]) == {9, EOS}
    assert allowed(trie, [5, 9, 8]) == {EOS}
    prefix_pair = LabelTrie([A, AB], [9], EOS, PAD)
    assert allowed(prefix_pair, [5, 6, 9, 5]) == {EOS}  # both used: no separator, no "b"
    assert allowed(prefix_pair, [5, 9, 5]) == {6}
    with pytest.raises(SoftPromptError):
        prefix_pair.allowed([5, 6, 9, 5, 9])


def test_multi_token_separator_and_finished_rows():
    trie = LabelTrie([AB, AC, A, D], [9, 10], EOS, PAD)
    assert allowed(trie, [8]) == {9, EOS}
    assert allowed(trie, [8, 9]) == {10}
    assert allowed(trie, [8, 9, 10]) == {5}
    with pytest.raises(SoftPromptError):
        trie.allowed([8, 9, 5])
    # after EOS: only EOS or padding, whatever `generate` wrote into the finished row
    assert allowed(trie, [8, EOS]) == {EOS, PAD}
    assert allowed(trie, [8, EOS, PAD, EOS, PAD]) == {EOS, PAD}
    assert allowed(LabelTrie([AB, D], [9], EOS), [8, EOS]) == {EOS}


@pytest.mark.parametrize("separator", [[9], [9, 10]])
def test_the_trie_allows_exactly_the_label_lists(separator):
    """Every path through `allowed` from the empty prefix, against all ordered subsets of distinct labels."""
    labels = [AB, AC, A, D]
    trie = LabelTrie(labels, separator, EOS, PAD)
    reached, frontier = set(), [[]]
    while frontier:
        prefix = frontier.pop()
        options = trie.allowed(prefix)
        assert len(options) == len(set(options)) and options, prefix
        for t in options:
            if t == EOS:
                reached.add(tuple(prefix + [t]))
            else:
                frontier.append(prefix + [t])
    expected = set()
    for k in range(1, len(labels) + 1):
        for order in permutations(range(len(labels)), k):
            ids = list(labels[order[0]])
            for i in order[1:]:
                ids += separator + labels[i]
            expected.add(tuple(ids + [EOS]))
    assert reached == expected
    assert max(map(len, reached)) == trie.max_length


@pytest.mark.parametrize("labels, separator, match", [
    ([], [9], "at least one"),
    ([AB, []], [9], "no tokens"),
    ([AB, [5, 6]], [9], "same tokens"),
    ([[5, EOS]], [9], "EOS"),
    ([AB], [], "separator"),
    ([AB], [EOS], "EOS"),
    ([A, [5, 9, 8]], [9], "continues"),  # after "a", 9 would be both the separator and "a9d" going on
])
def test_bad_label_sets_are_refused(labels, separator, match):
    with pytest.raises(SoftPromptError, match=match):
        LabelTrie(labels, separator, EOS, PAD)


# -- label tokens from the tokenizer ---------------------------------------------------------------


def test_label_tokens_in_context(tokenizer):
    label_ids, separator = labels_from_tokenizer(tokenizer, LABELS, ", ")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert label_ids == [encode(" " + label) for label in LABELS]  # the first label follows the prefix " "
    assert tokenizer.decode(separator) == ","  # the separator's space belongs to the next label's token
    assert label_ids[1][:len(label_ids[0])] == label_ids[0]  # "red" is a token-prefix of "red green"
    # "A, B" joined: the text's own tokens are the labels' and the separator's, and decode back to it exactly
    joined = [label_ids[0]]
    for ids in label_ids[1:]:
        joined.append(separator + ids)
    ids = [t for part in joined for t in part]
    text = " " + ", ".join(LABELS)
    assert encode(text) == ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(label_ids[0] + separator + label_ids[1]) == " red, red green"


@pytest.mark.parametrize("labels, separator, match", [
    (["red", "red"], ", ", "more than once"),
    (["red", ""], ", ", "non-empty"),
    (["red", " blue"], ", ", "whitespace"),
    (["red, blue", "cat"], ", ", "contains the separator"),
    (["red", "blue"], "", "separator is empty"),
    (["red", "blue"], ",", "does not keep"),  # " red,blue": "blue" after "," has no space, unlike " blue"
])
def test_label_tokens_refused(tokenizer, labels, separator, match):
    with pytest.raises(SoftPromptError, match=match):
        labels_from_tokenizer(tokenizer, labels, separator)


def test_no_space_separator_works_without_a_prefix(tokenizer):
    label_ids, separator = labels_from_tokenizer(tokenizer, ["red", "blue"], ",", prefix="")
    assert tokenizer.decode(label_ids[0] + separator + label_ids[1]) == "red,blue"


def test_parse_labels_splits_never_substring_matches():
    parsed = parse_labels(" red green, cat, Social red, red, cat", LABELS)
    assert parsed.labels == ["red green", "cat", "red"]  # "red green" is not also "red"; "cat" once
    assert parsed.unknown == ["Social red"]  # reported, not matched to "red"
    assert parse_labels(" sky blue", LABELS) == (["sky blue"], [])
    assert parse_labels("", LABELS) == ([], [])
    assert parse_labels("red; blue", LABELS, "; ").labels == ["red", "blue"]
    assert parse_labels("red, ", LABELS).unknown == [""]  # a dangling separator is reported


# -- constrained generate on tiny random models ----------------------------------------------------


@pytest.fixture(scope="module")
def trie_setup(tokenizer):
    label_ids, separator = labels_from_tokenizer(tokenizer, LABELS)
    return LabelTrie(label_ids, separator, tokenizer.eos_token_id, tokenizer.pad_token_id), label_ids, separator


def left_padded(tokenizer, texts):
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    assert (enc["attention_mask"][:, 0] == 0).any()  # rows of different lengths
    return enc["input_ids"], enc["attention_mask"]


def check_outputs(rows, tokenizer, label_ids, separator, expect_all=False):
    for ids in rows.tolist():
        found = read_output(ids, label_ids, separator)
        assert len(found) == len(set(found))
        if expect_all:
            assert sorted(found) == list(range(len(LABELS))), found
        parsed = parse_labels(tokenizer.decode(ids, skip_special_tokens=True), LABELS)
        assert parsed == ([LABELS[i] for i in found], [])


SETTINGS = {
    "greedy": {},
    "beams": dict(num_beams=3, num_return_sequences=2),
    "sample": dict(do_sample=True, top_k=4, num_return_sequences=2),
}


@pytest.mark.parametrize("execution", ["shared_prefix", "concat"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_constrained_generate_causal(tokenizer, trie_setup, setting, execution):
    trie, label_ids, separator = trie_setup
    base = build_model("llama", len(tokenizer))
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32) * 0.5), tokenizer, execution=execution)
    ids, mask = left_padded(tokenizer, TEXTS)
    kwargs = SETTINGS[setting]
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, logits_processor=[TrieLogitsProcessor(trie)],
                         max_new_tokens=trie.max_length, **kwargs)
    assert out.shape[0] == len(TEXTS) * kwargs.get("num_return_sequences", 1)
    check_outputs(out, tokenizer, label_ids, separator)
    # EOS kept out until nothing else is allowed: every row must then list every label once, which only the
    # separator rule ("only while a label remains") lets it end; the trie overrides min_new_tokens' -inf on EOS
    out = model.generate(ids, attention_mask=mask, logits_processor=[TrieLogitsProcessor(trie)],
                         max_new_tokens=trie.max_length, min_new_tokens=trie.max_length, **kwargs)
    check_outputs(out, tokenizer, label_ids, separator, expect_all=True)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_constrained_generate_seq2seq(tokenizer, trie_setup, setting):
    trie, label_ids, separator = trie_setup
    base = build_model("t5", len(tokenizer))
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32) * 0.5), tokenizer)
    ids, mask = left_padded(tokenizer, TEXTS)
    torch.manual_seed(0)
    # the decoder's ids start with its start token: the processor finds that on its own, the function is told
    for constraint in ({"logits_processor": [TrieLogitsProcessor(trie)]},
                       {"prefix_allowed_tokens_fn": prefix_allowed_tokens_fn(trie, start=1)}):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=trie.max_length, **constraint,
                             **SETTINGS[setting])
        assert (out[:, 0] == base.config.decoder_start_token_id).all()
        check_outputs(out[:, 1:], tokenizer, label_ids, separator)


def test_generate_from_input_ids_and_processor_reuse(tokenizer, trie_setup):
    """A causal base called with `input_ids` shows the input to processors; one processor serves calls of
    either kind in turn, and a wrong explicit start fails loudly rather than constraining the input."""
    trie, label_ids, separator = trie_setup
    base = build_model("llama", len(tokenizer))
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32) * 0.5), tokenizer)
    ids, mask = left_padded(tokenizer, TEXTS)
    processor = TrieLogitsProcessor(trie)
    for _ in range(2):
        out = model.generate(ids, attention_mask=mask, logits_processor=[processor], max_new_tokens=trie.max_length)
        check_outputs(out, tokenizer, label_ids, separator)
        out = base.generate(input_ids=ids, attention_mask=mask, logits_processor=[processor], do_sample=False,
                            max_new_tokens=trie.max_length, pad_token_id=tokenizer.pad_token_id)
        check_outputs(out[:, ids.shape[1]:], tokenizer, label_ids, separator)
    out = base.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=trie.max_length,
                        pad_token_id=tokenizer.pad_token_id,
                        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, start=ids.shape[1]))
    check_outputs(out[:, ids.shape[1]:], tokenizer, label_ids, separator)
    with pytest.raises(SoftPromptError, match="start="):
        base.generate(input_ids=ids, attention_mask=mask, logits_processor=[TrieLogitsProcessor(trie, start=0)],
                      do_sample=False, max_new_tokens=2, pad_token_id=tokenizer.pad_token_id)
