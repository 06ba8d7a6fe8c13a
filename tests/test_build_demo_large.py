"""scripts/build_demo_large.py, built tiny (1 layer, 1 epoch: seconds) into a temporary cache: the layout the
project resolves as `demo-large`, held-out text that is really held out, facts that are the world's, and
pretraining blocks cut exactly as the recovery objective cuts text."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))  # scripts/ is not a package; the build script imports build_demo the same way

import build_demo  # noqa: E402
import build_demo_large  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cmd = [sys.executable, str(SCRIPTS / "build_demo_large.py"), "--out", str(cache / "demo-large"), "--layers", "1",
           "--hidden", "32", "--intermediate", "64", "--heads", "2", "--epochs", "1", "--batch-size", "16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return cache


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_build_is_what_demo_large_resolves_to(built, monkeypatch):
    from softprompt.data.loading import load_split
    from softprompt.loading import load_base

    monkeypatch.setenv("SOFTPROMPT_CACHE", str(built))
    assert sorted(p.name for p in built.iterdir()) == ["demo-large"]  # no temporary directory left behind
    model, tok, kind = load_base("demo-large")
    report = json.loads((built / "demo-large" / "report.json").read_text())
    assert kind == "causal" and report["params"] == sum(p.numel() for p in model.parameters())
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    for name in ("demo-large-text", "demo-large-task"):
        for split in ("train", "validation", "test"):
            assert len(load_split(name, split)) > 0
    assert report["dense"]["validation_ppl"] > 1 and report["stand_in_compressed"]["validation_ppl"] > 1


def test_held_out_text_is_held_out_and_task_targets_are_the_worlds_facts(built):
    root = built / "demo-large"
    train = {r["text"] for r in jsonl(root / "text" / "train.jsonl")}
    for split in ("validation", "test"):
        rows = [r["text"] for r in jsonl(root / "text" / f"{split}.jsonl")]
        assert rows and not train & set(rows)
    nouns, facts = build_demo.build_world(1234)
    for split in ("train", "validation", "test"):
        for r in jsonl(root / "task" / f"{split}.jsonl"):
            attribute, noun = r["source"].removesuffix(" =").split(" : ")
            assert r["target"] == f" {facts[noun][attribute]}"


def test_pretraining_blocks_are_the_recovery_objectives_blocks(built):
    """The dense model must be measured and recovered on the format it learned: the script's packing of lines
    equals split_blocks (the recovery objective's and `softprompt perplexity`'s) on the same lines."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from softprompt.objectives.recover import split_blocks

    root = built / "demo-large"
    tok = AutoTokenizer.from_pretrained(root / "model")
    lines = [r["text"] for r in jsonl(root / "text" / "validation.jsonl")][:300]
    seqs = [tok(line)["input_ids"] + [tok.eos_token_id] for line in lines]
    ours = build_demo_large.packed_blocks(seqs, 128, None)
    theirs = [b["input_ids"] for b in split_blocks(Dataset.from_dict({"text": lines}), "text", tok, 128, "validation")]
    assert len(ours) > 5 and ours == theirs
