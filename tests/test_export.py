"""Adapters: PEFT loads our export and reproduces our logits; wrong bases are refused; round trips."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import build_model
from softprompt.config import PromptConfig
from softprompt.errors import SoftPromptError
from softprompt.layers import PromptEmbedding
from softprompt.layers.inits import initial_prompt
from softprompt.model import SoftPromptModel


def auto_class(family):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    return {"t5": AutoModelForSeq2SeqLM, "bart": AutoModelForSeq2SeqLM, "bert": AutoModelForMaskedLM,
            "roberta": AutoModelForMaskedLM}.get(family, AutoModelForCausalLM)


def trained_like(family, tokenizer, path, seed=0):
    base = auto_class(family).from_pretrained(path)
    prompt = initial_prompt(PromptConfig(num_virtual_tokens=5), base.get_input_embeddings().weight, tokenizer, seed) + 0.3 * torch.randn(5, 32)
    return SoftPromptModel(base, PromptEmbedding(prompt), tokenizer, base_config=path)


@pytest.mark.parametrize("family, task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("bert", "FEATURE_EXTRACTION"),
                                          ("roberta", "FEATURE_EXTRACTION")])
def test_peft_loads_export_and_reproduces_logits(saved_model, tokenizer, tmp_path, family, task):
    """Decoders unpadded (PEFT gives no position ids, so a left-padded row would differ in PEFT itself);
    encoders on a right-padded batch, PEFT's own layout [prompt; tokens; pads]."""
    import peft

    path = saved_model(family)
    ours = trained_like(family, tokenizer, path).eval()
    out = ours.save_adapter(tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_transformer_submodules"] == 1 and cfg["task_type"] == task
    pm = peft.PeftModel.from_pretrained(auto_class(family).from_pretrained(path), str(out)).eval()
    texts = ["the cat sat on the mat"] if task == "CAUSAL_LM" else ["the cat sat on the mat", "a dog"]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = pm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 5:]  # PEFT keeps p rows
        mine = ours(enc["input_ids"], enc["attention_mask"]).logits
    real = enc["attention_mask"].bool()  # pads' outputs are nobody's business
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-4)


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


def _other_architecture(path: str, vocab: int):
    """A Mistral of the Llama's shapes holding the Llama's very embedding table: only the architecture differs."""
    from transformers import AutoModelForCausalLM

    other = build_model("mistral", vocab)
    other.get_input_embeddings().weight.data.copy_(AutoModelForCausalLM.from_pretrained(path).get_input_embeddings().weight)
    return other


def _as_cached(name: str):
    """The same Llama weights, as transformers leaves a hub id loaded from the local cache (`_name_or_path`)."""
    def load(path: str, vocab: int):
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(path)
        base.config._name_or_path = f"/root/.cache/huggingface/hub/models--{name.replace('/', '--')}/snapshots/0a1b"
        return base
    return load


HUB_ID = "org/llama-base"  # what the adapter records as its base


@pytest.mark.parametrize("other, message", [
    (lambda path, n: build_model("llama", n, seed=123), "was trained on base model"),  # same shapes, other weights
    (lambda path, n: _resized(path, n + 8), r"trained on a base with \d+ embedding rows and this base has"),
    (lambda path, n: _wider(n), "the adapter's token_dim is 32 but the base's hidden size is 48"),
    (_other_architecture, "was trained on a llama base .* and this base is a mistral"),
    (_as_cached("org/llama-chat"), "was trained on hub model 'org/llama-base' and this base is 'org/llama-chat'"),
    (_as_cached(HUB_ID), None),  # the same hub model from the cache: accepted
    (lambda path, n: _as_cached(HUB_ID)(path, n).to(torch.bfloat16), None),  # another dtype of it: accepted
])
def test_adapter_from_another_base_is_refused(saved_model, tokenizer, tmp_path, other, message):
    path = saved_model("llama")
    ours = trained_like("llama", tokenizer, path)
    ours.base_config = replace(ours.base_config, name_or_path=HUB_ID)
    out = ours.save_adapter(tmp_path / "adapter")
    base = other(path, len(tokenizer))
    if message is None:
        assert SoftPromptModel.from_adapter(out, base=base, tokenizer=tokenizer).base is base
        return
    with pytest.raises(SoftPromptError, match=message):
        SoftPromptModel.from_adapter(out, base=base, tokenizer=tokenizer)
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


# Continuing training from an adapter (prompt.init: file with an adapter dir)


def _continue(model_dir, adapter_dir, tmp_path, **extra):
    from helpers import overrides, write_task
    from softprompt import load_config, train

    values = {"prompt.init": "file", "prompt.init_file": str(adapter_dir), "optim.lr": 0.0, "optim.weight_decay": 0.0,
              "train.max_steps": 1, "train.eval_every": 1, "train.save_every": 1, **extra}
    return train(load_config(None, overrides(model_dir, write_task(tmp_path / "data"), tmp_path / "out", **values)))


def test_training_continues_from_a_peft_seq2seq_adapter(saved_model, tmp_path):
    import peft
    from transformers import AutoModelForSeq2SeqLM

    pm = peft.get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(saved_model("t5")),
                             peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    pm.save_pretrained(str(tmp_path / "peft"))
    result = _continue(saved_model("t5"), tmp_path / "peft", tmp_path)  # lr 0: the start is what final/ holds
    assert torch.equal(result.model.prompt.prompt.detach(), pm.prompt_encoder["default"].embedding.weight[:4].detach())
    trained = _continue(saved_model("t5"), tmp_path / "peft", tmp_path / "b", **{"optim.lr": 0.1})
    assert not torch.equal(trained.model.prompt.prompt, result.model.prompt.prompt)  # and it trains on from there


def test_training_continues_from_an_official_dept_checkpoint(saved_model, tmp_path):
    from test_dept import write_official

    path, state = write_official(tmp_path / "official", saved_model("llama"), "CAUSAL_LM", alpha=5)
    dept = {"method": "dept", "prompt.rank": 3, "prompt.max_length": 12, "prompt.alpha": 5.0, "prompt.fixed_length": True,
            "data.max_length": 12, "data.max_target_length": 4, "prompt.offset_lr": 0.0}
    result = _continue(saved_model("llama"), path, tmp_path, **dept)
    offset = result.model.prompt.offset
    assert torch.equal(offset.A.detach(), state["prompt_encoder.lora_embedding_A"])
    assert torch.equal(offset.B.detach(), state["prompt_encoder.lora_embedding_B"])
    with pytest.raises(SoftPromptError, match=r"its prompt was built otherwise than the recipe's .*'offset.alpha': \(5.0, 8.0\)"):
        _continue(saved_model("llama"), path, tmp_path / "b", **{**dept, "prompt.alpha": 8.0})
    assert not (tmp_path / "b" / "out").exists()


def test_an_adapter_whose_parts_the_recipe_lacks_is_refused(saved_model, tokenizer, tmp_path):
    from softprompt.score_head import ScoreHead

    ours = trained_like("llama", tokenizer, saved_model("llama"))
    ours.head = ScoreHead(32, 3)
    ours.save_adapter(tmp_path / "adapter")
    with pytest.raises(SoftPromptError, match="holds a score head and the recipe builds none"):
        _continue(saved_model("llama"), tmp_path / "adapter", tmp_path, **{"prompt.num_virtual_tokens": 5})
    with pytest.raises(SoftPromptError, match="prompt.init_file: .*not an adapter dir"):
        _continue(saved_model("llama"), tmp_path / "data", tmp_path / "b")  # a dir, and no adapter in it
