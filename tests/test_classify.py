"""The classification objective (PTEC, objectives/classify.py): data layouts, the pos_weight formula,
pooling of the last real token, joint training of prompt and head through the loop (plain and DePT
prompts), and the metrics."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_model
from softprompt.config import load_config
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.heads import LinearHead
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel

LABELS = ["red", "green", "blue"]
WORDS = ["apple", "grass", "sky", "cherry", "leaf", "sea", "rose", "moss", "ice"]
COLOUR = {"apple": "red", "cherry": "red", "rose": "red", "grass": "green", "leaf": "green", "moss": "green",
          "sky": "blue", "sea": "blue", "ice": "blue"}


def write_multilabel(root: Path, n: int = 48) -> Path:
    """PTEC's layout: a text column and one 0/1 column per label; rows have one or two colours."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n + 24):
        words = [WORDS[i % 9]] + ([WORDS[(i * 4 + 1) % 9]] if i % 3 == 0 else [])
        row = {"text": " and ".join(words)}
        row.update({c: int(any(COLOUR[w] == c for w in words)) for c in LABELS})
        rows.append(row)
    for name, part in {"train": rows[:n], "validation": rows[n:n + 12], "test": rows[n + 12:]}.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


def ptec_overrides(model_dir: str, data: Path, out: Path, **extra) -> list[str]:
    values = {
        "method": "ptec", "model.name_or_path": model_dir, "data.path": str(data), "data.source_template": "{text}",
        "objective.labels": "[red, green, blue]", "head.num_outputs": 3, "head.lr": 0.05,
        "prompt.num_virtual_tokens": 4, "optim.lr": 0.05, "train.output_dir": str(out), "train.run_name": "c",
        "train.max_steps": 16, "train.batch_size": 8, "train.eval_every": 8, "train.save_every": 8,
        "train.log_every": 4, "train.progress_bar": "false", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def test_pos_weight_is_max_count_over_count(tmp_path, tokenizer):
    from softprompt.build import build_objective
    from softprompt.data import load_split

    data = write_multilabel(tmp_path / "d")
    cfg = load_config(None, ptec_overrides("demo", data, tmp_path))
    objective = build_objective(cfg)
    items = objective.encode(load_split(str(data), "train"), tokenizer, cfg.data, "causal", "train")
    counts = np.array([[it["target"][j] for it in items] for j in range(3)]).sum(1)  # independently counted
    assert torch.allclose(objective.pos_weight, torch.tensor(counts.max() / counts, dtype=torch.float32))
    assert objective.pos_weight.min() == 1.0 and objective.pos_weight.max() > 1.0  # the data is unbalanced


def test_list_and_index_layouts_give_the_same_targets(tmp_path, tokenizer):
    from datasets import Dataset

    from softprompt.objectives.classify import ClassifyConfig, Classification

    rows = [{"text": "apple", "labels": ["red"], "label": 0}, {"text": "sea and moss", "labels": ["blue", "green"], "label": 2}]
    data_cfg = load_config(None, ["data.source_template={text}"]).data
    as_list = Classification(ClassifyConfig(labels=tuple(LABELS), label_format="list"))
    targets = [it["target"] for it in as_list.encode(Dataset.from_list(rows), tokenizer, data_cfg, "causal", "train")]
    assert targets == [[1, 0, 0], [0, 1, 1]]
    as_index = Classification(ClassifyConfig(labels=tuple(LABELS), label_format="index", label_column="label",
                                             multi_label=False))
    assert [it["target"] for it in as_index.encode(Dataset.from_list(rows), tokenizer, data_cfg, "causal", "train")] == [0, 2]


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a", "labels": ["purple"]}], r"label\(s\) \['purple'\] are not in objective.labels"),
    ([{"text": "a", "red": 2, "green": 0, "blue": 0}], r"label column 'red' holds 2"),
    ([{"text": "a", "red": 1, "green": 0}], r"\['blue'\] are not columns"),
    ([{"text": "a", "red": 1, "green": 0, "blue": 0}, {"text": "b", "red": 1, "green": 0, "blue": 0}],
     r"label\(s\) \['green', 'blue'\] never occur in the 'train' split"),
    ([{"text": None, "red": 1, "green": 1, "blue": 1}], r"train row 0 has no value for column\(s\) \['text'\]"),
])
def test_bad_label_data_is_one_clear_error(rows, message, tokenizer):
    from datasets import Dataset

    from softprompt.objectives.classify import ClassifyConfig, Classification

    fmt = "list" if "labels" in rows[0] else "columns"
    objective = Classification(ClassifyConfig(labels=tuple(LABELS), label_format=fmt))
    data_cfg = load_config(None, ["data.source_template={text}"]).data
    with pytest.raises(SoftPromptError, match=message):
        objective.encode(Dataset.from_list(rows), tokenizer, data_cfg, "causal", "train")


@pytest.mark.parametrize("fmt, rows, expected", [
    ("columns", [{"id": 7, "text": "a", "red": 1, "x": 0.0, "green": False}, {"id": 1, "text": "b", "red": 0, "x": 1.0, "green": True}],
     ("red", "x", "green")),  # 0/1 columns in data order: ints, floats, bools; not the id, not the text
    ("list", [{"text": "a", "labels": ["sky", "red"]}, {"text": "b", "labels": []}], ("red", "sky")),
    ("index", [{"text": "a", "labels": 2}, {"text": "b", "labels": 0}, {"text": "c", "labels": 1}], ("0", "1", "2")),
])
def test_label_names_from_the_train_split(fmt, rows, expected, tmp_path):
    """A recipe without objective.labels takes them from the train split, with the head's size and a label
    init's names; the completed config is what the run records."""
    from softprompt.build import complete_config

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = ["method=ptec", f"data.path={tmp_path}", "data.source_template={text}", f"objective.label_format={fmt}",
             "data.eval_split=null", "data.test_split=null"]
    if fmt == "index":
        items.append("objective.multi_label=false")
    cfg = load_config(None, items)
    assert cfg.objective.labels == () and cfg.head.num_outputs is None
    done = complete_config(cfg)
    assert done.objective.labels == expected and done.head.num_outputs == len(expected)
    assert done.prompt.init_labels == expected  # PTEC's label-name init reads them too
    assert complete_config(done) == done  # given labels are kept as they are
    with pytest.raises(SoftPromptError, match=rf"head.num_outputs: 9, but the 'train' split has {len(expected)} labels"):
        complete_config(load_config(None, [*items, "head.num_outputs=9"]))


def test_label_names_the_data_cannot_give(tmp_path):
    from softprompt.build import complete_config

    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "a", "kind": "x", "score": 3}) + "\n")
    base = ["method=ptec", f"data.path={tmp_path}", "data.source_template={text}", "data.eval_split=null",
            "data.test_split=null"]
    with pytest.raises(SoftPromptError, match="no column of the 'train' split holds only 0/1 values"):
        complete_config(load_config(None, base))
    with pytest.raises(SoftPromptError, match="'kind' does not hold a list of label names"):
        complete_config(load_config(None, [*base, "objective.label_format=list", "objective.label_column=kind"]))
    with pytest.raises(ConfigError, match="prompt.init_labels: required when prompt.init is 'label_names'"):
        load_config(None, ["prompt.init=label_names"])  # the lm objective has no labels to give


@pytest.mark.parametrize("items, message", [
    (["method=ptec", "objective.labels=[a, b, c]", "head.num_outputs=2"], r"head.num_outputs: 2, but objective.labels has 3"),
    (["objective.type=classify", "objective.labels=[a, b]"], r"head: the classify objective scores a head"),
    (["method=ptec", "objective.labels=[a, a]"], r"names repeat"),
    (["method=ptec", "objective.labels=[a, b]", "objective.label_format=index"], r"set objective.multi_label: false"),
])
def test_config_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, items)


@pytest.mark.parametrize("execution", ["shared_prefix", "concat"])
def test_scores_pool_the_last_real_token_under_either_padding(execution, tokenizer):
    base = build_model("llama", len(tokenizer))
    head = LinearHead(base.config.hidden_size, 3, "last", generator=torch.Generator().manual_seed(0))
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, base.config.hidden_size)), tokenizer, "causal",
                            execution=execution, head=head).eval()
    texts = ["apple and sea", "moss", "the sky is blue today"]
    with torch.no_grad():
        scores = {}
        for side in ("right", "left"):
            tokenizer.padding_side = side
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            scores[side] = model(enc["input_ids"], enc["attention_mask"], output="scores").scores
        tokenizer.padding_side = "right"
        alone = torch.cat([model(tokenizer([t], return_tensors="pt")["input_ids"], output="scores").scores for t in texts])
    torch.testing.assert_close(scores["left"], scores["right"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores["right"], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompt_type", ["plain", "dept"])
def test_ptec_trains_prompt_and_head_only(prompt_type, saved_model, tmp_path):
    from softprompt import train

    data = write_multilabel(tmp_path / "d")
    extra = {"method": "null", "objective.type": "classify", "head.type": "linear"} if prompt_type == "dept" else {}
    if prompt_type == "dept":
        extra.update({"prompt.type": "dept", "prompt.rank": 2, "prompt.max_length": 32, "data.max_length": 32,
                      "data.max_target_length": 8})
    cfg = load_config(None, ptec_overrides(saved_model("llama"), data, tmp_path / "out", **extra))
    assert cfg.train.metric is None
    result = train(cfg)
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    expected = {"prompt.prompt", "head.proj.weight", "head.proj.bias"}
    if prompt_type == "dept":
        expected |= {"prompt.offset.A", "prompt.offset.B"}
    assert trained == expected
    meta = json.loads((result.adapter_dir / "softprompt.json").read_text())
    assert meta["chosen_by"] == "best eval_macro_f1" and meta["head"]["num_outputs"] == 3
    assert {"eval_macro_f1", "eval_micro_f1", "eval_macro_ap"} <= set(result.best)
    from softprompt.plots import draw_curves

    figure = draw_curves(result.history, metric="eval_macro_f1", best_step=meta["source_step"])
    panel = next(ax for ax in figure.axes if ax.get_label() == "metrics")
    drawn = {line.get_label().split(":")[0] for line in panel.get_lines()}
    assert "eval_macro_f1" in drawn and len({d.split("_", 1)[-1] for d in drawn if d.startswith("eval_")}) <= 4
    assert result.history[0]["eval_loss"] > min(h["eval_loss"] for h in result.history if "eval_loss" in h)
    back = SoftPromptModel.from_adapter(result.adapter_dir)  # prompt and head come back
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(back.head_outputs(ids).scores, result.model.head_outputs(ids).scores)


def test_metrics_against_hand_computed_values():
    from softprompt.objectives.label_metrics import label_metrics

    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])
    scores = np.array([[.9, .1, .4], [.2, .8, .3], [.7, .4, .1], [.6, .2, .9]])
    m = label_metrics(gold, pred, scores)
    # by hand: TP per label (2, 1, 1), FP (1, 0, 0), FN (0, 1, 1)
    assert m["eval_micro_precision"] == pytest.approx(4 / 5) and m["eval_micro_recall"] == pytest.approx(4 / 6)
    f1 = [2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1), 2 * 1 / (2 * 1 + 0 + 1)]
    assert m["eval_macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["eval_precision_at_1"] == pytest.approx((1 + 1 + 1 + 1) / 4)  # each row's top score is a gold label
    assert m["eval_avg_predicted_labels"] == pytest.approx(5 / 4) and m["eval_avg_gold_labels"] == pytest.approx(6 / 4)


HATESPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hatespeech"


@pytest.mark.slow
@pytest.mark.skipif(not HATESPEECH.is_dir(), reason="the shared HateSpeech data is not beside the repo")
def test_ptec_recipe_runs_on_the_released_hatespeech_data(tmp_path):
    """The PTEC recipe reads the PTEC repo's files as released (22 label columns, the `prompt` column)."""
    from softprompt import train

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "ptec" / "demo_hatespeech.yaml"
    cfg = load_config(recipe, [f"data.path={HATESPEECH}", f"train.output_dir={tmp_path}", "train.max_steps=4",
                               "train.eval_every=4", "train.save_every=4",
                               "data.max_eval_samples=48", "train.progress_bar=false"])
    result = train(cfg)
    assert result.steps == 4 and result.chosen_by == "best eval_macro_f1"
    assert 0 <= result.test["test_macro_f1"] <= 1 and "test_micro_f1" in result.test


@pytest.mark.slow
def test_classify_texts_and_the_cli_give_the_trained_heads_probabilities(saved_model, tmp_path):
    """One forward per batch, no generation: the library call equals the head's own sigmoid on each text
    alone, and `softprompt classify` (a real process) prints the same labels from the run's config."""
    import subprocess
    import sys

    from softprompt import train
    from softprompt.predict import classify_texts

    data = write_multilabel(tmp_path / "d")
    cfg = load_config(None, ptec_overrides(saved_model("llama"), data, tmp_path / "out", **{"train.max_steps": 4}))
    result = train(cfg)
    texts = ["apple and sea", "moss", "the sky"]
    generate_calls = []
    result.model.base.generate = lambda *a, **k: generate_calls.append(1)  # must never be called
    predictions = classify_texts(result.model, texts, cfg.objective, "{text}", batch_size=2)  # at objective.threshold
    for text, p in zip(texts, predictions):
        ids = result.model.tokenizer([text], return_tensors="pt")["input_ids"]
        expected = torch.sigmoid(result.model.head_outputs(ids).scores)[0].tolist()
        assert list(p.probabilities) == LABELS and p.probabilities == pytest.approx(dict(zip(LABELS, expected)), abs=1e-5)
        assert p.labels == [name for name, q in zip(LABELS, expected) if q > 0.5]
    assert generate_calls == []
    # "tuned": the run's per-label thresholds, fitted on its eval split and saved in final/; a float: one for all
    tuned = json.loads((result.adapter_dir / "softprompt.json").read_text())["decision"]["thresholds"]
    by_tuned = classify_texts(result.model, texts, cfg.objective, "{text}", batch_size=2, threshold="tuned")
    assert [p.labels for p in by_tuned] == [[n for n in LABELS if p.probabilities[n] > tuned[n]] for p in predictions]
    low = classify_texts(result.model, texts, cfg.objective, "{text}", threshold=0.05)
    assert [p.labels for p in low] == [[n for n in LABELS if p.probabilities[n] > 0.05] for p in predictions]
    default = predictions
    from softprompt import SoftPromptModel

    loaded = classify_texts(SoftPromptModel.from_adapter(result.adapter_dir), texts)  # labels, template: the run's
    assert [(p.labels, p.probabilities) == (q.labels, pytest.approx(q.probabilities, abs=1e-5)) for p, q in
            zip(loaded, default)] == [True] * 3
    (tmp_path / "texts.txt").write_text("moss\n\nthe sky\n")
    done = subprocess.run([sys.executable, "-m", "softprompt", "classify", str(result.adapter_dir), "apple and sea",
                           "--file", str(tmp_path / "texts.txt"), "--json", "--threshold", "tuned"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["text"] for line in lines] == texts
    assert [line["labels"] for line in lines] == [p.labels for p in by_tuned]
    bad = subprocess.run([sys.executable, "-m", "softprompt", "classify", str(result.adapter_dir), "moss", "--threshold",
                          "high"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == ("softprompt: error: classify: --threshold must be a "
                                                          "probability in [0, 1] or 'tuned', got 'high'")
    refused = subprocess.run([sys.executable, "-m", "softprompt", "classify", str(result.adapter_dir)],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip().startswith("softprompt: error: classify: no texts")


def test_tuned_thresholds_reach_each_labels_best_f1():
    """Against brute force: the best F1 any threshold gives a label is the best over "score >= s" for each
    distinct score s (and predicting nothing); the tuned threshold reaches it."""
    from sklearn.metrics import f1_score

    from softprompt.objectives.thresholds import tune_thresholds

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, size=(60, 5))
    gold[:, 4] = 0  # a label with no positive: nothing to fit, it keeps the default
    scores = np.clip(gold * rng.uniform(0.1, 0.6, size=gold.shape) + rng.uniform(0, 0.6, size=gold.shape), 0, 1)
    scores = np.round(scores, 2)  # ties between rows
    tuned = tune_thresholds(gold, scores, default=0.5)
    for j in range(4):
        best = max(f1_score(gold[:, j], scores[:, j] >= s, zero_division=0) for s in [*np.unique(scores[:, j]), 2.0])
        assert f1_score(gold[:, j], scores[:, j] > tuned[j]) == pytest.approx(best)
    assert tuned[4] == 0.5
    separable = np.array([[1], [1], [0], [0]]), np.array([[0.9], [0.8], [0.2], [0.1]])
    assert tune_thresholds(*separable, default=0.3)[0] == 0.3  # any t in [0.2, 0.8) is best: ties keep the default
    assert tune_thresholds(*separable, default=0.95)[0] == pytest.approx(0.5)  # else the midpoint of the gap


@pytest.mark.slow
def test_thresholds_round_trip_with_the_adapter(saved_model, tmp_path):
    """final/ saves the thresholds fitted on the eval split; loading the adapter gives them back, eval and
    test metrics add their tuned_* F1s, and `softprompt eval` (a real process) reports them too."""
    import subprocess
    import sys

    from sklearn.metrics import f1_score

    from softprompt import train
    from softprompt.export import load_adapter
    from softprompt.objectives.classify import build

    data = write_multilabel(tmp_path / "d")
    cfg = load_config(None, ptec_overrides(saved_model("llama"), data, tmp_path / "out"))
    result = train(cfg)
    meta = json.loads((result.adapter_dir / "softprompt.json").read_text())
    thresholds = meta["decision"]["thresholds"]
    assert list(thresholds) == LABELS and meta["decision"]["fitted_on_rows"] == 12
    back = load_adapter(result.adapter_dir)
    assert back.decision == meta["decision"]
    objective = build(cfg.objective)  # the test split's tuned macro-F1, recomputed from the reloaded model
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(data / "test.jsonl"), split="train")
    items = objective.encode(rows, back.tokenizer, cfg.data, back.kind, "test")
    scores, _, _ = objective.predict(back, items, 8)
    gold = objective.gold(items)
    decided = scores > np.array([thresholds[n] for n in LABELS])
    assert result.test["test_tuned_macro_f1"] == pytest.approx(f1_score(gold, decided, average="macro", zero_division=0))
    assert result.test["test_macro_f1"] == pytest.approx(f1_score(gold, scores > 0.5, average="macro", zero_division=0))
    assert "eval_tuned_macro_f1" in result.best and "eval_tuned_macro_ap" not in result.best  # ranking needs no threshold
    done = subprocess.run([sys.executable, "-m", "softprompt", "eval", str(result.adapter_dir), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["eval_tuned_macro_f1"] == pytest.approx(result.test["test_tuned_macro_f1"], abs=1e-6)
    off = load_config(None, ptec_overrides(saved_model("llama"), data, tmp_path / "off", **{"objective.tune_thresholds": "false"}))
    assert json.loads((train(off).adapter_dir / "softprompt.json").read_text())["decision"] is None


@pytest.mark.slow
def test_a_run_without_label_names_round_trips_everywhere(saved_model, tmp_path):
    """Labels read from the data reach every path that reads a run back: eval with the recipe (not the
    recorded config), a finished run resumed, a re-saved adapter, an exported checkpoint, classify."""
    import subprocess
    import sys

    import yaml

    from softprompt import SoftPromptModel, classify_texts, train
    from softprompt.config import to_dict
    from softprompt.export import export_checkpoint

    data = write_multilabel(tmp_path / "d")
    items = [i for i in ptec_overrides(saved_model("llama"), data, tmp_path / "out")
             if not i.startswith(("objective.labels", "head.num_outputs"))]
    cfg = load_config(None, items)
    assert cfg.objective.labels == ()
    result = train(cfg)
    assert result.model.run_config["objective"]["labels"] == LABELS  # the columns, in the data's order
    meta = json.loads((result.adapter_dir / "softprompt.json").read_text())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(cfg)))  # no labels: eval reads them from the train split again
    done = subprocess.run([sys.executable, "-m", "softprompt", "eval", str(result.adapter_dir), str(recipe), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["eval_tuned_macro_f1"] == pytest.approx(result.test["test_tuned_macro_f1"], abs=1e-6)

    texts = ["apple and sea", "moss"]
    expected = [p.labels for p in classify_texts(result.model, texts, threshold="tuned")]
    again = train(cfg, resume=True)  # already finished: read back, nothing rewritten
    assert [p.labels for p in classify_texts(again.model, texts, threshold="tuned")] == expected
    resaved = SoftPromptModel.from_adapter(result.adapter_dir).save_adapter(tmp_path / "resaved")
    back = SoftPromptModel.from_adapter(resaved)
    assert back.decision == meta["decision"] and [p.labels for p in classify_texts(back, texts, threshold="tuned")] == expected
    same = export_checkpoint(result.run_dir / f"step_{meta['source_step']:06d}", tmp_path / "same")
    assert json.loads((same / "softprompt.json").read_text())["decision"] == meta["decision"]  # fitted for these weights
    other = export_checkpoint(result.run_dir / f"step_{24 - meta['source_step']:06d}", tmp_path / "other")  # 8 or 16
    assert json.loads((other / "softprompt.json").read_text())["decision"] is None  # decides at objective.threshold
    bare = SoftPromptModel.from_adapter(result.adapter_dir)
    bare.run_config = None  # a model built in code: the labels come as a config, the template is "{text}"
    from softprompt.config import from_dict

    objective = from_dict(result.model.run_config).objective
    assert [p.labels for p in classify_texts(bare, texts, objective, threshold="tuned")] == expected


@pytest.mark.parametrize("rows, items, message", [
    ([{"text": "a", "red": 1, "blue": 0}] * 3 + [{"text": "b", "red": 0, "blue": 1}], ["data.max_train_samples=3"],
     r"label\(s\) \['blue'\], read from the 'train' split, occur in none of the rows training reads"),
    ([{"text": "a", "y": 0}, {"text": "b", "y": 2}], ["objective.label_format=index", "objective.label_column=y",
                                                       "objective.multi_label=false"], r"label\(s\) \['1'\], read from"),
])
def test_label_names_read_from_data_that_cannot_train_them(rows, items, message, tmp_path):
    from softprompt.build import complete_config

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["method=ptec", f"data.path={tmp_path}", "data.source_template={text}", "data.eval_split=null",
            "data.test_split=null"]
    with pytest.raises(SoftPromptError, match=message):
        complete_config(load_config(None, [*base, *items]))


def test_a_threshold_is_refused_for_multi_class(saved_model, tokenizer):
    from softprompt import classify_texts
    from softprompt.objectives.classify import ClassifyConfig

    base = build_model("llama", len(tokenizer))
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(2, base.config.hidden_size)), tokenizer,
                            head=LinearHead(base.config.hidden_size, 2, "last"))
    cfg = ClassifyConfig(labels=("a", "b"), label_format="index", multi_label=False)
    assert len(classify_texts(model, ["apple"], cfg)) == 1  # no run config: the template is "{text}"
    with pytest.raises(SoftPromptError, match="a threshold decides multi-label runs"):
        classify_texts(model, ["apple"], cfg, threshold=0.3)
