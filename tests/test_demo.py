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


def _classify_builder():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_demo_classify.py"
    spec = importlib.util.spec_from_file_location("build_demo_classify", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_classify_data_is_what_its_generator_writes(tmp_path):
    """The bundled companies are the generator's output byte for byte, with the labels the demo trains on."""
    from softprompt.cli import DEMO_CLASSIFY, DEMO_SECTORS

    build = _classify_builder()
    build.write(build.build(build.SEED, build.DEMO / "corpus.txt"), tmp_path)
    assert build.build(build.SEED, build.DEMO / "corpus.txt") == build.build(build.SEED, build.DEMO / "corpus.txt")
    splits = {}
    for split, size in {"train": 546, "validation": 170, "test": 252}.items():
        text = (DEMO_CLASSIFY / f"{split}.jsonl").read_text()
        assert text == (tmp_path / f"{split}.jsonl").read_text(), f"{split}: rerun scripts/build_demo_classify.py"
        rows = [json.loads(line) for line in text.splitlines()]
        assert len(rows) == size and all(set(r) == {"text", "labels"} for r in rows)
        assert all(1 <= len(r["labels"]) <= 3 and r["text"].endswith(" =") for r in rows)
        assert all(r["labels"] == [s for s in DEMO_SECTORS if s in r["labels"]] for r in rows)  # known, in order
        assert {s for r in rows for s in r["labels"]} == set(DEMO_SECTORS)  # every sector in every split
        splits[split] = {r["text"].split()[-2] for r in rows}  # the company
    assert build.SECTORS == DEMO_SECTORS
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["validation"]
    assert sum(f.stat().st_size for f in DEMO_CLASSIFY.glob("*.jsonl")) < 100_000


def _classify_demo(tmp_path, *extra: str) -> list[str]:
    return ["demo", "--task", "classify", f"train.output_dir={tmp_path}", "train.trackers=[]",
            "train.progress_bar=false", *extra]


def test_demo_classify_ends_with_macro_f1_and_reruns(tmp_path, capsys):
    """A 2-step classify demo: a three-row table and the macro-F1 headline; run again (--json) in the same run
    dir it replaces its own run, and the caller's torch threads are as they were."""
    import torch

    threads = torch.get_num_threads()
    short = ["train.max_steps=2", "train.eval_every=2", "optim.warmup_steps=0", "data.max_eval_samples=16"]
    assert main(_classify_demo(tmp_path, *short)) == 0
    out = capsys.readouterr().out
    assert re.search(r"^metric +eval before +eval final +test before +test final$", out, re.M), out
    table = out.split("\nmetric ")[1].split("\nsteps:")[0].splitlines()[1:]
    assert [line.split()[0] for line in table] == ["loss", "micro_f1", "macro_f1"], out
    assert re.search(r"^held-out companies before training: macro-F1 \d\.\d{3}  micro-F1 \d\.\d{3}$", out, re.M), out
    after = r"^held-out companies after training:  macro-F1 \d\.\d{3}  micro-F1 \d\.\d{3}  \(test split, 2 steps\)$"
    assert re.search(after, out, re.M), out
    assert f"adapter: {tmp_path / 'demo-classify' / 'final'}" in out
    assert torch.get_num_threads() == threads
    assert main(_classify_demo(tmp_path, *short, "--json")) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("\n{\n"):])  # the training lines, then the JSON
    assert report["steps"] == 2 and "test_macro_f1" in report["before"] and "test_weighted_f1" in report["test"]


@pytest.mark.slow
def test_demo_classify_macro_f1_rises(tmp_path, capsys):
    """The classify demo as shipped: held-out (test) macro-F1 rises from chance by a wide margin."""
    assert main(_classify_demo(tmp_path)) == 0
    out = capsys.readouterr().out
    before = float(re.search(r"before training: macro-F1 (\d\.\d+)", out).group(1))
    after = float(re.search(r"after training:  macro-F1 (\d\.\d+)", out).group(1))
    assert before < 0.4 and after >= before + 0.3 and after > 0.7, out  # seeds 0-2: 0.24-0.31 -> 0.77-0.78
    assert re.search(r"^macro_f1( +\d\.\d{3,4}){4}$", out, re.M), out
    assert (tmp_path / "demo-classify" / "final" / "adapter_model.safetensors").is_file()
