"""Adapters: PEFT loads our export and reproduces our logits; wrong bases are refused; round trips."""

import json
from pathlib import Path

import pytest
import torch

from conftest import build_model
from softprompt.config import PromptConfig
from softprompt.errors import SoftPromptError
from softprompt.layers import PromptEmbedding
from softprompt.layers.inits import initial_prompt
from softprompt.model import SoftPromptModel


def trained_like(family, tokenizer, path, seed=0):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    base = auto.from_pretrained(path)
    prompt = initial_prompt(PromptConfig(num_virtual_tokens=5), base.get_input_embeddings().weight, tokenizer, seed) + 0.3 * torch.randn(5, 32)
    return SoftPromptModel(base, PromptEmbedding(prompt), tokenizer, base_config=path)


def test_peft_loads_export_and_reproduces_logits(saved_model, tokenizer, tmp_path):
    import peft
    from transformers import AutoModelForCausalLM

    path = saved_model("llama")
    ours = trained_like("llama", tokenizer, path)
    out = ours.save_adapter(tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_transformer_submodules"] == 1
    pm = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(out)).eval()
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits[:, 5:]  # PEFT returns virtual positions too
        mine = ours(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_round_trip_and_serving_bundle(saved_model, tokenizer, tmp_path):
    path = saved_model("llama")
    ours = trained_like("llama", tokenizer, path)
    out = ours.save_adapter(tmp_path / "adapter")
    back = SoftPromptModel.from_adapter(out)  # base loaded from the path recorded in the adapter
    assert torch.equal(back.prompt.prompt, ours.prompt.prompt)
    assert back.generate(["apple =", "the"], max_new_tokens=4) == ours.generate(["apple =", "the"], max_new_tokens=4)
    serving = json.loads((out / "serving" / "serving_meta.json").read_text())
    assert serving["num_virtual_tokens"] == 5 and serving["hidden_size"] == 32
    assert not list(tmp_path.glob(".adapter*"))  # no temp dirs left behind


def test_seq2seq_export_loads_in_peft(saved_model, tokenizer, tmp_path):
    import peft
    from transformers import AutoModelForSeq2SeqLM

    path = saved_model("t5")
    ours = trained_like("t5", tokenizer, path)
    out = ours.save_adapter(tmp_path / "adapter")
    pm = peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(path), str(out)).eval()
    ids = torch.tensor([tokenizer("the cat sat")["input_ids"]])
    labels = torch.tensor([tokenizer("red", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        theirs = pm(input_ids=ids, labels=labels).logits
        mine = ours(ids, labels=labels).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def _resized(path: str, rows: int):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path)
    base.resize_token_embeddings(rows)  # the first rows (what the probe reads) stay as they were
    return base


def _wider(vocab: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    return AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                                        num_attention_heads=4, vocab_size=vocab))


@pytest.mark.parametrize("other, message", [
    (lambda path, n: build_model("llama", n, seed=123), "was trained on base model"),  # same shapes, other weights
    (lambda path, n: _resized(path, n + 8), r"trained on a base with \d+ embedding rows and this base has"),
    (lambda path, n: _wider(n), "the adapter's token_dim is 32 but the base's hidden size is 48"),
])
def test_adapter_from_another_base_is_refused(saved_model, tokenizer, tmp_path, other, message):
    ours = trained_like("llama", tokenizer, saved_model("llama"))
    out = ours.save_adapter(tmp_path / "adapter")
    with pytest.raises(SoftPromptError, match=message):
        SoftPromptModel.from_adapter(out, base=other(saved_model("llama"), len(tokenizer)), tokenizer=tokenizer)
    with pytest.raises(SoftPromptError, match="not an adapter dir"):
        SoftPromptModel.from_adapter(tmp_path)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_peft_seq2seq_adapter_with_two_submodules_imports_with_peft_outputs(saved_model, tokenizer, tmp_path, family):
    """PEFT's seq2seq default saves (2p, d) (num_transformer_submodules 2), and its prompt tuning runs the first p
    rows on the encoder only. Both halves randomised, so taking any other rows would show: logits, loss and
    greedy generations equal PEFT's own on a padded batch."""
    import peft
    from transformers import AutoModelForSeq2SeqLM

    path = saved_model(family)
    pm = peft.get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(path),
                             peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    pm.save_pretrained(str(tmp_path / "peft"))
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["num_transformer_submodules"] == 2
    theirs = peft.PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(path), str(tmp_path / "peft")).eval()
    ours = SoftPromptModel.from_adapter(tmp_path / "peft", tokenizer=tokenizer).eval()
    assert tuple(ours.prompt.prompt.shape) == (4, 32)
    enc = tokenizer(["the cat sat on the mat", "a dog"], return_tensors="pt", padding=True)
    labels = tokenizer(["red blue", "green"], return_tensors="pt", padding=True, add_special_tokens=False)["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        expected = theirs(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels)
        got = ours(enc["input_ids"], enc["attention_mask"], labels=labels)
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-4)
        settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert torch.equal(ours.generate(enc["input_ids"], enc["attention_mask"], **settings),
                           theirs.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **settings))


def test_two_submodule_peft_adapter_of_a_causal_task_is_refused(saved_model, tmp_path):
    import peft
    from transformers import AutoModelForSeq2SeqLM

    base = AutoModelForSeq2SeqLM.from_pretrained(saved_model("t5"))
    peft.get_peft_model(base, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)).save_pretrained(
        str(tmp_path / "peft"))
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "CAUSAL_LM"}))
    with pytest.raises(SoftPromptError, match="num_transformer_submodules is 2 with task_type 'CAUSAL_LM'"):
        SoftPromptModel.from_adapter(tmp_path / "peft")


def test_peft_seq2seq_adapter_with_one_submodule_loads(saved_model, tokenizer, tmp_path):
    import peft
    from transformers import AutoModelForSeq2SeqLM

    base = AutoModelForSeq2SeqLM.from_pretrained(saved_model("t5"))
    cfg = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, num_transformer_submodules=1)
    peft.get_peft_model(base, cfg).save_pretrained(str(tmp_path / "peft"))
    model = SoftPromptModel.from_adapter(tmp_path / "peft", tokenizer=tokenizer)
    assert model.kind == "seq2seq" and tuple(model.prompt.prompt.shape) == (4, 32)


def test_peft_p_tuning_adapter_imports_as_its_materialised_prompt(saved_model, tokenizer, tmp_path):
    """A P-tuning adapter (an MLP prompt encoder, randomised so it is not the identity) saved by real PEFT: the
    imported prompt gives PEFT's own logits of that dir."""
    import peft
    from transformers import AutoModelForCausalLM

    path = saved_model("llama")
    cfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=16)
    trained = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(path), cfg)
    with torch.no_grad():
        for p in trained.prompt_encoder.parameters():
            p.normal_(generator=torch.Generator().manual_seed(0))
    trained.save_pretrained(str(tmp_path / "ptuning"))
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "ptuning")).eval()
    ours = SoftPromptModel.from_adapter(tmp_path / "ptuning", tokenizer=tokenizer).eval()
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(input_ids=ids).logits[:, 5:], atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # and not because the encoder passes embeddings through: the file differs from them
        assert not torch.allclose(ours.prompt.prompt, trained.prompt_encoder["default"].embedding.weight)


def test_new_output_checks(tmp_path, monkeypatch):
    from softprompt.export import check_new_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for bad, message in ((".", "current directory"), ("full", "not empty"), ("file", "existing file")):
        with pytest.raises(SoftPromptError, match=message):
            check_new_output(bad)
    assert check_new_output("empty") and check_new_output("new/dir")


def test_auto_peft_loads_an_adapter_on_the_demo_base_offline(tmp_path):
    """adapter_config.json names a base PEFT can load: the embedded demo model's absolute path, not our alias
    "demo" (AutoPeftModel would look it up on the hub). The sidecar keeps "demo" for from_adapter."""
    import peft

    from softprompt.loading import DEMO_MODEL

    ours = SoftPromptModel.from_pretrained("demo", num_virtual_tokens=4).eval()
    with torch.no_grad():
        ours.prompt.prompt.add_(0.3 * torch.randn(ours.prompt.prompt.shape, generator=torch.Generator().manual_seed(0)))
    out = ours.save_adapter(tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(DEMO_MODEL.resolve())
    assert json.loads((out / "softprompt.json").read_text())["base_model"] == "demo"
    assert json.loads((out / "serving" / "serving_meta.json").read_text())["base_model"] == str(DEMO_MODEL.resolve())
    pm = peft.AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    ids = ours.tokenizer(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits[:, 4:]  # PEFT returns virtual positions too
        mine = ours(ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    back = SoftPromptModel.from_adapter(out)  # our own loading: "demo" wherever softprompt is installed
    assert back.base_name == "demo" and torch.equal(back.prompt.prompt, ours.prompt.prompt)


def test_a_local_base_is_recorded_for_peft_as_an_absolute_path(saved_model, tokenizer, tmp_path, monkeypatch):
    path = saved_model("llama")
    monkeypatch.chdir(Path(path).parent)
    ours = trained_like("llama", tokenizer, Path(path).name)  # a relative path: PEFT must not depend on the cwd
    out = ours.save_adapter(tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(Path(path).resolve())
    assert json.loads((out / "softprompt.json").read_text())["base_model"] == Path(path).name
