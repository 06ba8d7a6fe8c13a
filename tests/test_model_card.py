"""Model cards in every adapter dir, and pushing an export to the hub (refused cleanly offline)."""

import re

import pytest
import torch

from conftest import build_model
from helpers import overrides, write_task
from softprompt import SoftPromptModel, load_config, train
from softprompt.cli import main
from softprompt.layers import PromptBank
from softprompt.selectors.key import KeySelector


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


@pytest.fixture(scope="module")
def run(tmp_path_factory, saved_model):
    tmp = tmp_path_factory.mktemp("card")
    return train(load_config(None, overrides(saved_model(), write_task(tmp / "data"), tmp / "out")))


def test_a_runs_card_says_what_the_adapter_is_and_its_code_runs(run):
    card = (run.adapter_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert f"Trainable parameters: {run.trainable_parameters:,}." in card
    assert f"| eval_loss | {run.best['eval_loss']:.4g} |" in card
    assert "method:prompt_tuning" in card and "max_steps: 6" in card
    blocks = python_blocks(card)
    assert len(blocks) == 2  # softprompt, then PEFT
    ids = torch.tensor([[5, 6, 7, 8]])
    loaded = {}
    for block in blocks:  # the card's own code, on this dir
        scope = {}
        exec(block.replace("PATH_TO_THIS_DIR", str(run.adapter_dir)), scope)
        loaded[block.split()[1]] = scope["model"]
    ours, theirs = loaded["softprompt"], loaded["peft"]
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids).logits, theirs.eval()(input_ids=ids).logits[:, 4:], rtol=1e-4, atol=1e-5)


def test_a_banks_card_names_its_selector_and_member_adapters(tmp_path):
    base = build_model("llama", 400)
    bank = PromptBank(torch.randn(2, 3, 32))
    model = SoftPromptModel(base, bank, kind="causal", base_config="x", selector=KeySelector(torch.randn(2, 32)))
    card = (model.save_adapter(tmp_path / "a") / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: softprompt\n")
    assert "a bank of 2 soft prompts of 3 rows" in card and "`key` selector" in card
    assert "`members/prompt_KK/` are PEFT adapters" in card and "from peft" not in card


@pytest.mark.parametrize("repo, env, message", [
    ("not/a/repo/id", {}, r"--push-to-hub: 'not/a/repo/id' is not a hub repo id"),
    ("me/adapter", {"HF_HUB_OFFLINE": "1"}, r"--push-to-hub: offline mode is on \(HF_HUB_OFFLINE=1\)"),
])
def test_push_to_hub_is_refused_before_anything_is_written(run, tmp_path, monkeypatch, capsys, repo, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    step = sorted(run.run_dir.glob("step_*"))[-1]
    assert main(["export", str(step), str(tmp_path / "out"), "--push-to-hub", repo]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_seq2seq_cards_peft_code_loads_its_base_and_prompt(saved_model, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from softprompt.layers import PromptEmbedding

    path = saved_model("t5")
    base = AutoModelForSeq2SeqLM.from_pretrained(path)
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, base.config.d_model)), tokenizer, base_config=path)
    card = (model.save_adapter(tmp_path / "a") / "README.md").read_text()
    scope = {}
    exec(python_blocks(card)[1].replace("PATH_TO_THIS_DIR", str(tmp_path / "a")), scope)
    assert isinstance(scope["model"], PeftModel)
    torch.testing.assert_close(scope["model"].prompt_encoder["default"].embedding.weight, model.prompt.prompt.detach())
