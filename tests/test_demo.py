"""The embedded default: bundled model, tokenizer and task load offline, and prompt tuning steers it."""

import json
import re

import pytest

from softprompt.cli import main
from softprompt.data.loading import DEMO_TASK
from softprompt.loading import DEMO_MODEL, load_base


def test_demo_assets_load_offline():
    model, tokenizer, kind = load_base("demo")
    assert kind == "causal" and tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    size = sum(f.stat().st_size for f in DEMO_MODEL.parent.rglob("*") if f.is_file())
    assert size < 8 * 2**20  # small enough to ship in the package
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (DEMO_TASK / f"{split}.jsonl").read_text().splitlines()]
        assert rows and {"source", "target"} <= set(rows[0])
    train_sources = {json.loads(x)["source"] for x in (DEMO_TASK / "train.jsonl").read_text().splitlines()}
    test_sources = {json.loads(x)["source"] for x in (DEMO_TASK / "test.jsonl").read_text().splitlines()}
    assert not train_sources & test_sources  # held-out items


@pytest.mark.slow
def test_demo_accuracy_rises(tmp_path, capsys):
    assert main(["demo", f"train.output_dir={tmp_path}", "train.trackers=[]", "train.progress_bar=false"]) == 0
    out = capsys.readouterr().out
    before = float(re.search(r"before prompt tuning: ([\d.]+)%", out).group(1))
    after = float(re.search(r"after prompt tuning:\s+([\d.]+)%", out).group(1))
    assert after >= before + 30, out
    assert re.search(r"trainable parameters: [\d,]+", out)
    assert re.search(r"^accuracy( +\d\.\d{3,4}){4}$", out, re.M), out  # the table
    assert (tmp_path / "demo" / "final" / "adapter_model.safetensors").is_file()


def test_demo_ends_with_a_rounded_table(tmp_path, capsys):
    """A 2-step demo: the end is a short table at 4 significant digits and the accuracy headline, no JSON."""
    short = [f"train.output_dir={tmp_path}", "train.trackers=[]", "train.progress_bar=false", "train.max_steps=2",
             "train.eval_every=2", "optim.warmup_steps=0", "data.max_eval_samples=8"]
    assert main(["demo", *short]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^step 2/2  eval_loss \S+  eval_ppl \S+  eval_accuracy \S+  \(best\)$", out, re.M), out
    assert re.search(r"^metric +eval before +eval final +test before +test final$", out, re.M), out
    assert re.search(r"^accuracy( +\d\.\d{3,4}){4}$", out, re.M), out
    assert f"adapter: {tmp_path / 'demo' / 'final'}" in out and "held-out accuracy after prompt tuning" in out
    assert "{" not in out and not re.search(r"\d\.\d{5,}", out), out
