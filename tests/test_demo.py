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
    assert (tmp_path / "demo" / "final" / "adapter_model.safetensors").is_file()
