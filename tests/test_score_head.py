"""The `score` head (score_head.py): transformers' own decoder classification head, so a classifier exports to
PEFT's SEQ_CLS layout (the head in modules_to_save) and imports back; real PEFT throughout."""

import json

import pytest
import torch

from conftest import tiny_config
from softprompt import load_config, train
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel
from softprompt.score_head import ScoreHead
from test_classify import ptec_overrides, write_multilabel
from test_model_card import python_blocks

DECODERS = ("llama", "gpt2", "qwen3")


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tokenizer):
    """Each family saved once as a causal LM (what softprompt trains on) and loadable as a sequence classifier."""
    from transformers import AutoModelForCausalLM

    def make(family):
        path = tmp_path_factory.mktemp(f"cls-{family}")
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer))).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path)

    cache = {}
    return lambda family: cache.setdefault(family, make(family))


def ours_with_score(path, tokenizer, seed=0):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(seed)
    head = ScoreHead(32, 3, generator=g)
    return SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32, generator=g)), tokenizer, base_config=path,
                           head=head).eval()


def unpadded_batch(tokenizer):
    """Rows of one length: transformers pools the last column under PEFT, which is every row's last token here."""
    rows = [tokenizer("the cat sat on")["input_ids"], tokenizer("a dog ran by")["input_ids"]]
    n = min(len(r) for r in rows)
    return torch.tensor([r[:n] for r in rows])


@pytest.mark.parametrize("family", DECODERS)
def test_score_head_exports_as_peft_seq_cls_with_our_scores(bases, tokenizer, tmp_path, family):
    import peft
    from transformers import AutoModelForSequenceClassification

    ours = ours_with_score(bases(family), tokenizer)
    out = ours.save_adapter(tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"]
    base = AutoModelForSequenceClassification.from_pretrained(bases(family), num_labels=3)
    theirs = peft.PeftModel.from_pretrained(base, str(out)).eval()
    ids = unpadded_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(ours.head_outputs(ids).scores, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    back = SoftPromptModel.from_adapter(out, tokenizer=tokenizer).eval()
    with torch.no_grad():
        assert torch.equal(back.head_outputs(ids).scores, ours.head_outputs(ids).scores)
    sidecar = json.loads((out / "softprompt.json").read_text())
    assert sidecar["peft_head"] == "score" and sidecar["peft_ignores"] == []


def test_the_cards_peft_code_loads_the_head(bases, tokenizer, tmp_path):
    ours = ours_with_score(bases("llama"), tokenizer)
    out = ours.save_adapter(tmp_path / "adapter")
    block = next(b for b in python_blocks((out / "README.md").read_text()) if "from peft" in b)
    scope = {}
    exec(block.replace("PATH_TO_THIS_DIR", str(out)), scope)
    ids = unpadded_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(input_ids=ids).logits, ours.head_outputs(ids).scores,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", DECODERS)
def test_peft_seq_cls_adapter_imports_with_peft_scores(bases, tokenizer, tmp_path, family):
    import peft
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(bases(family), num_labels=3)
    trained = peft.get_peft_model(base, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    with torch.no_grad():  # as if trained: neither the prompt nor the head at its init
        for p in trained.parameters():
            if p.requires_grad:
                p.normal_(generator=torch.Generator().manual_seed(1))
    trained.save_pretrained(str(tmp_path / "peft"))
    theirs = peft.PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(bases(family), num_labels=3), str(tmp_path / "peft")).eval()
    ours = SoftPromptModel.from_adapter(tmp_path / "peft", tokenizer=tokenizer).eval()
    assert isinstance(ours.head, ScoreHead)
    ids = unpadded_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(ours.head_outputs(ids).scores, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_a_peft_head_softprompt_cannot_rebuild_is_refused(tmp_path, tokenizer):
    """BERT's SEQ_CLS head is `classifier` on its pooler (which PEFT feeds the first virtual token): not a score head."""
    import peft
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_config("bert", len(tokenizer))
    cfg.num_labels = 3
    base = AutoModelForSequenceClassification.from_config(cfg)
    base.save_pretrained(tmp_path / "bert")
    peft.get_peft_model(base, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)).save_pretrained(
        str(tmp_path / "peft"))
    with pytest.raises(SoftPromptError, match=r"modules_to_save \['classifier', 'score'.*base_model.classifier.bias"):
        SoftPromptModel.from_adapter(tmp_path / "peft")


def test_training_with_the_score_head_exports_to_peft(bases, tokenizer, tmp_path):
    import peft
    from transformers import AutoModelForSequenceClassification

    data = write_multilabel(tmp_path / "d")
    result = train(load_config(None, ptec_overrides(bases("llama"), data, tmp_path / "out",
                                                    **{"method": "null", "objective.type": "classify", "head.type": "score",
                                                       "train.max_steps": 4})))
    assert isinstance(result.model.head, ScoreHead)
    assert {n for n, p in result.model.named_parameters() if p.requires_grad} == {"prompt.prompt", "head.score.weight"}
    theirs = peft.PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(bases("llama"), num_labels=3), str(result.adapter_dir)).eval()
    ids = unpadded_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval().head_outputs(ids).scores, theirs(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-4)
    sidecar = json.loads((result.adapter_dir / "softprompt.json").read_text())
    assert any("per-label thresholds" in x for x in sidecar["peft_ignores"])  # PTEC's tuned thresholds: ours only


@pytest.mark.parametrize("setting, message", [
    ({"model.name_or_path": "t5"}, "the score head is the decoder models' own classification head, and this base is seq2seq"),
    ({"head.pooling": "mean"}, "head.pooling: 'mean', and the score head reads the last real token"),
])
def test_score_head_refusals(saved_model, tmp_path, setting, message):
    data = write_multilabel(tmp_path / "d")
    values = {"method": "null", "objective.type": "classify", "head.type": "score", **setting}
    if values.get("model.name_or_path") == "t5":
        values["model.name_or_path"] = saved_model("t5")
    with pytest.raises(ConfigError, match=message):
        train(load_config(None, ptec_overrides(saved_model(), data, tmp_path / "out", **values)))
    assert not (tmp_path / "out").exists()
