"""Prompt initialisations against the embedding table they read from."""

import pytest
import torch

from conftest import build_model
from softprompt.config import PromptConfig
from softprompt.errors import SoftPromptError
from softprompt.layers.inits import initial_prompt


@pytest.fixture()
def base(tokenizer):
    return build_model("llama", len(tokenizer))


def test_uniform_range(base, tokenizer):
    out = initial_prompt(PromptConfig(num_virtual_tokens=50, init="uniform", init_range=0.25), base.get_input_embeddings().weight, tokenizer, 0)
    assert out.shape == (50, 32) and out.dtype == torch.float32
    assert out.min() >= -0.25 and out.max() <= 0.25 and out.min() < -0.2 and out.max() > 0.2


def test_vocab_rows_are_frequent_non_special_rows(base, tokenizer):
    table = base.get_input_embeddings().weight
    out = initial_prompt(PromptConfig(num_virtual_tokens=10, init="vocab", vocab_top_k=40), base.get_input_embeddings().weight, tokenizer, 0)
    special = set(tokenizer.all_special_ids)
    allowed = [i for i in range(60) if i not in special][:40]
    for row in out:
        matches = [i for i in range(table.shape[0]) if torch.equal(table[i], row)]
        assert len(matches) == 1 and matches[0] in allowed
    assert len({tuple(r.tolist()) for r in out}) == 10  # without replacement


def test_text_init_tiles_cyclically(base, tokenizer):
    ids = tokenizer("apple red")["input_ids"]  # special tokens included, as PEFT tokenizes init text
    out = initial_prompt(PromptConfig(num_virtual_tokens=len(ids) * 2 + 1, init="text", init_text="apple red"), base.get_input_embeddings().weight, tokenizer, 0)
    table = base.get_input_embeddings().weight
    expected = [ids[i % len(ids)] for i in range(len(ids) * 2 + 1)]
    for row, i in zip(out, expected):
        assert torch.equal(row, table[i])


def test_class_label_init_means_subtokens(base, tokenizer):
    labels = ("banana", "sky")
    out = initial_prompt(PromptConfig(num_virtual_tokens=4, init="class_label", init_labels=labels), base.get_input_embeddings().weight, tokenizer, 0)
    table = base.get_input_embeddings().weight
    for slot, label in enumerate(labels):
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(out[slot], table[ids].mean(0))
    with pytest.raises(SoftPromptError, match="labels but only"):
        initial_prompt(PromptConfig(num_virtual_tokens=1, init="class_label", init_labels=labels), base.get_input_embeddings().weight, tokenizer, 0)


def test_file_init_roundtrip_and_shape_error(base, tokenizer, tmp_path):
    from safetensors.torch import save_file

    t = torch.randn(3, 32)
    save_file({"prompt_embeddings": t}, str(tmp_path / "p.safetensors"))
    out = initial_prompt(PromptConfig(num_virtual_tokens=3, init="file", init_file=str(tmp_path / "p.safetensors")), base.get_input_embeddings().weight, tokenizer, 0)
    assert torch.equal(out, t)
    with pytest.raises(SoftPromptError, match=r"shape \(3, 32\), expected \(4, 32\)"):
        initial_prompt(PromptConfig(num_virtual_tokens=4, init="file", init_file=str(tmp_path / "p.safetensors")), base.get_input_embeddings().weight, tokenizer, 0)


@pytest.mark.parametrize("num_tokens", [12, 3])
def test_label_names_init_is_the_names_tokens_in_order(base, tokenizer, num_tokens):
    """PTEC's default: the tokens of the names joined by spaces, one per slot; fewer slots than tokens take an
    ordered subset, more slots are filled with frequent vocabulary rows."""
    labels = ("banana split", "sky", "red apple")
    table = base.get_input_embeddings().weight
    ids = tokenizer(" ".join(labels), add_special_tokens=False)["input_ids"]
    assert 3 < len(ids) < 12  # the two cases below: a subset, and a fill
    out = initial_prompt(PromptConfig(num_virtual_tokens=num_tokens, init="label_names", init_labels=labels,
                                      vocab_top_k=40), table, tokenizer, 0)
    which = [[i for i in range(table.shape[0]) if torch.equal(table[i], row)] for row in out]
    assert all(len(w) == 1 for w in which)
    rows = [w[0] for w in which]
    if num_tokens < len(ids):  # an ordered subsequence of the name tokens
        it = iter(ids)
        assert all(r in it for r in rows)
    else:
        assert rows[:len(ids)] == ids
        special = set(tokenizer.all_special_ids)
        assert all(r not in special and r < 40 + len(special) for r in rows[len(ids):])


def test_label_inits_take_the_objectives_labels():
    from softprompt.config import load_config
    from softprompt.errors import ConfigError

    ptec = ["method=ptec", "objective.labels=[sports, politics]", "head.num_outputs=2"]
    cfg = load_config(None, ptec)
    assert cfg.prompt.init == "label_names" and cfg.prompt.init_labels == ("sports", "politics")  # PTEC's default
    assert load_config(None, [*ptec, "prompt.init=vocab"]).prompt.init == "vocab"  # a recipe's own init wins
    cfg = load_config(None, [*ptec, "prompt.init=class_label", "prompt.init_labels=[a, b]"])
    assert cfg.prompt.init_labels == ("a", "b")  # given names win over the objective's
    assert load_config(None, []).prompt.init == "vocab"  # prompt tuning keeps its own default
    with pytest.raises(ConfigError, match="prompt.init_labels: required when prompt.init is 'label_names'"):
        load_config(None, ["prompt.init=label_names"])  # the lm objective has no labels
