"""PTEC's text-to-text baseline (objectives/label_text.py, research/methods.md §3.3-3.4): targets are the
frequency-ordered, separator-joined labels plus EOS and paths of the trie; the weighted loss and its
normaliser; constrained decodes of tiny random models (causal and seq2seq, batched, left padding, beams)
checked token by token against the label ids; training, resume and the HateSpeech recipe through the loop."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import build_model
from softprompt.config import load_config
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import PromptEmbedding
from softprompt.model import SoftPromptModel
from softprompt.objectives.label_text import LabelText, LabelTextConfig, predict_labels
from test_label_trie import read_output

LABELS = ["red", "green", "blue", "red green"]  # "red" is a token-prefix of "red green"
WORDS = ["apple", "grass", "sky", "cherry", "leaf", "sea", "rose", "moss", "ice"]
COLOUR = {"apple": "red", "cherry": "red", "rose": "red", "grass": "green", "leaf": "green", "moss": "green",
          "sky": "blue", "sea": "blue", "ice": "blue"}
ROOT = Path(__file__).resolve().parents[1]
HATESPEECH = ROOT.parent / "shared" / "data" / "hatespeech"


def label_rows(n: int) -> list[dict]:
    """PTEC's layout (a text column, one 0/1 column per label). Counts differ per label (blue most, "red
    green" least) and differ from objective.labels' order, so frequency order is visible."""
    rows = []
    for i in range(n):
        words = [WORDS[i % 9]] + ([WORDS[(i * 4 + 1) % 9]] if i % 3 == 0 else [])
        colours = {COLOUR[w] for w in words}
        row = {"text": " and ".join(words), **{c: int(c in colours) for c in LABELS}}
        row["red green"] = int(colours == {"red", "green"})
        row["blue"] = int("blue" in colours or i % 4 == 0)
        rows.append(row)
    return rows


def write_data(root: Path, n: int = 48, n_eval: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = label_rows(n + 2 * n_eval)
    for name, part in {"train": rows[:n], "validation": rows[n:n + n_eval], "test": rows[n + n_eval:]}.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


def data_cfg(**extra):
    return load_config(None, ["data.source_template={text}", *[f"data.{k}={v}" for k, v in extra.items()]]).data


def overrides(model_dir: str, data: Path, out: Path, **extra) -> list[str]:
    values = {"method": "ptec_text", "model.name_or_path": model_dir, "data.path": str(data),
              "data.source_template": "{text}", "objective.labels": "[red, green, blue, red green]",
              "prompt.num_virtual_tokens": 4, "optim.lr": 0.05, "train.output_dir": str(out), "train.run_name": "t",
              "train.max_steps": 4, "train.batch_size": 8, "train.eval_every": 2, "train.save_every": 2,
              "train.log_every": 1, "train.progress_bar": "false", "train.eval_batch_size": 4, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def tiny_model(family: str, tokenizer) -> SoftPromptModel:
    base = build_model(family, len(tokenizer))
    torch.manual_seed(1)
    return SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32) * 0.5), tokenizer)


# -- targets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_targets_are_frequency_ordered_labels_then_eos_and_trie_paths(kind, tokenizer):
    from datasets import Dataset

    rows = label_rows(30)
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS)))
    items = objective.encode(Dataset.from_list(rows), tokenizer, data_cfg(), kind, "train")
    counts = {c: sum(r[c] for r in rows) for c in LABELS}
    by_frequency = sorted(LABELS, key=lambda c: (-counts[c], LABELS.index(c)))
    assert by_frequency != LABELS and [LABELS[j] for j in objective.order] == by_frequency
    _, trie = objective.label_tokens(tokenizer)
    weights = {c: max(counts.values()) / counts[c] for c in LABELS}
    for row, item in zip(rows, items):
        chosen = [c for c in by_frequency if row[c]]
        text = " " + "; ".join(chosen)  # as the tokenizer writes the target text itself
        expected = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        target = [t for t in item["labels"] if t != -100]
        assert target == expected
        source = tokenizer(row["text"])["input_ids"]
        assert item["input_ids"] == (source + target if kind == "causal" else source)
        for n, token in enumerate(target):  # a path the trie accepts, ending with EOS
            assert token in trie.allowed(target[:n]), (target, n)
        assert tokenizer.decode(target, skip_special_tokens=True) == text
        assert item["weight"] == pytest.approx(sum(weights[c] for c in chosen))  # PTEC's row weight
    given = LabelText(LabelTextConfig(labels=tuple(LABELS), label_order="given", example_weight="none"))
    item = given.encode(Dataset.from_list(rows[:1]), tokenizer, data_cfg(), kind, "train")[0]
    assert [t for t in item["labels"] if t != -100][:-1] == \
        tokenizer(" " + "; ".join(c for c in LABELS if rows[0][c]), add_special_tokens=False)["input_ids"]
    assert item["weight"] == 1.0


def test_eval_splits_take_the_train_order(tokenizer, tmp_path):
    """A split encoded after the train split orders its targets by the train counts, not its own."""
    from datasets import Dataset

    train = [{"text": "a", "red": 1, "green": 1, "blue": 0, "red green": 1}] * 3 + \
        [{"text": "b", "red": 0, "green": 1, "blue": 1, "red green": 0}] * 2
    other = [{"text": "c", "red": 1, "green": 1, "blue": 0, "red green": 0}, {"text": "d", "red": 1, "green": 0,
                                                                           "blue": 1, "red green": 0}]
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS)))
    objective.encode(Dataset.from_list(train), tokenizer, data_cfg(), "causal", "train")
    item = objective.encode(Dataset.from_list(other), tokenizer, data_cfg(), "causal", "validation")[0]
    # train counts: green 5, red 3, red green 3, blue 2 (the eval split alone would put red first)
    assert tokenizer.decode([t for t in item["labels"] if t != -100], skip_special_tokens=True) == " green; red"
    # a split encoded on its own (`softprompt eval`) reads the train split for the order
    root = tmp_path / "d"
    root.mkdir()
    for name, part in {"train": train, "validation": other}.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    alone = LabelText(LabelTextConfig(labels=tuple(LABELS)))
    again = alone.encode(Dataset.from_list(other), tokenizer, data_cfg(path=root, test_split="null"), "causal", "validation")
    assert alone.order == objective.order and again[0]["labels"] == item["labels"]


def metaspace_tokenizer():
    """A SentencePiece-style tokenizer (word starts marked by "▁", as Llama 2 and T5), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import CORPUS

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=list(";abcdefghijklmnopqrstuvwxyz▁")))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_the_label_prefix_follows_the_tokenizer(tokenizer):
    """Byte-level BPE writes " red; blue" (a word start is a space); SentencePiece-style tokenizers mark word
    starts themselves, so a leading space would not decode back: their targets start with no prefix."""
    from datasets import Dataset

    metaspace = metaspace_tokenizer()
    for tok, text in ((tokenizer, " red; blue"), (metaspace, "red; blue")):
        objective = LabelText(LabelTextConfig(labels=tuple(LABELS), label_order="given", example_weight="none"))
        rows = [{"text": "sky", "red": 1, "green": 0, "blue": 1, "red green": 0}]
        target = objective.encode(Dataset.from_list(rows), tok, data_cfg(), "seq2seq", "train")[0]["labels"]
        assert target == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tok.decode(target, skip_special_tokens=True) == text
        _, trie = objective.label_tokens(tok)
        assert all(t in trie.allowed(target[:n]) for n, t in enumerate(target))
    with pytest.raises(SoftPromptError, match="label_prefix"):  # a prefix given is the one used
        LabelText(LabelTextConfig(labels=tuple(LABELS), label_prefix=" ")).label_tokens(metaspace)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_loss_is_the_weighted_mean_of_row_means_however_batched(family, tokenizer):
    from datasets import Dataset

    model = tiny_model(family, tokenizer)
    kind = model.kind
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS)))
    items = objective.encode(Dataset.from_list(label_rows(12)), tokenizer, data_cfg(), kind, "train")
    rows = []
    for it in items:  # each row alone, through the model's own HF-style mean token loss
        ids, labels = torch.tensor([it["input_ids"]]), torch.tensor([it["labels"]])
        rows.append(model(ids, labels=labels).loss.item())
    expected = sum(it["weight"] * r for it, r in zip(items, rows)) / sum(it["weight"] for it in items)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        whole = objective.collate(items, pad, kind)
        parts = [objective.collate(items[:5], pad, kind), objective.collate(items[5:], pad, kind)]
        assert (objective.loss(model, whole) / objective.weight(whole, kind)).item() == pytest.approx(expected, rel=1e-5)
        split = sum(objective.loss(model, b) for b in parts) / sum(objective.weight(b, kind) for b in parts)
        assert split.item() == pytest.approx(expected, rel=1e-5)
    assert max(it["weight"] for it in items) > min(it["weight"] for it in items)  # the weights matter here


# -- constrained decoding ----------------------------------------------------------------------------


TEXTS = ["the cat sat on the mat", "sky", "apple = red", "one two three four five six", "grass", "hello world"]


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_every_constrained_decode_is_a_label_list_ending_in_eos(family, num_beams, tokenizer):
    model = tiny_model(family, tokenizer)
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS), num_beams=num_beams))
    tokens, trie = objective.label_tokens(tokenizer)
    calls, raw, forced = [], [], {}
    generate = model.generate

    def recording(ids, **kwargs):  # what decode passes to generate and gets back
        calls.append(ids.clone())
        raw.append(generate(ids, **kwargs, **forced))
        return raw[-1]

    model.generate = recording
    sources = [tokenizer(t)["input_ids"] for t in TEXTS]
    lists = []
    # then with EOS held back until nothing else is allowed: every row must list every label once, which
    # exercises separators, the no-repeat rule and EOS after the last label (the trie overrides the -inf)
    for forced in ({}, {"min_new_tokens": trie.max_length}):
        calls.clear(), raw.clear()
        decoded = objective.decode(model, sources, batch_size=4)  # batches of 4 and 2 rows
        assert len(decoded) == len(TEXTS) and len(calls) == 2
        if family == "llama":
            assert (calls[0][:, 0] == tokenizer.pad_token_id).any()  # causal batches are left-padded
        outputs = [row for out in raw for row in (out[:, 1:] if family == "t5" else out).tolist()]
        for ids, d in zip(outputs, decoded):
            found = read_output(ids, tokens.label_ids, tokens.separator_ids)  # EOS-ended, distinct valid labels
            assert d.labels == [LABELS[i] for i in found] and d.invalid == 0 and d.finished
            if forced:
                assert sorted(found) == list(range(len(LABELS)))
        lists.append([d.labels for d in decoded])
    model.generate = generate
    assert predict_labels(model, TEXTS, objective.cfg, batch_size=4) == lists[0]


def test_free_decoding_counts_and_drops_invalid_pieces(tokenizer):
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS), decoding="free", max_new_tokens=8))
    eos = tokenizer.eos_token_id
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    d = objective.read(encode(" red green; Social red; red green; blue") + [eos], tokenizer)
    assert d == (["red green", "blue"], 2, True)  # "Social red" is not "red"; the repeat is dropped
    assert objective.read(encode(" blue; red"), tokenizer) == (["blue", "red"], 0, False)  # cut off: no EOS
    model = tiny_model("llama", tokenizer)  # a random model writes anything: most outputs are invalid
    decoded = objective.decode(model, [tokenizer(t)["input_ids"] for t in TEXTS], batch_size=3)
    assert any(d.invalid or not d.finished for d in decoded)
    assert all(set(d.labels) <= set(LABELS) and len(set(d.labels)) == len(d.labels) for d in decoded)


# -- through the loop --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_train_evaluates_the_announced_metrics_and_resumes(family, saved_model, tmp_path):
    from softprompt import train
    from softprompt.build import build_objective

    data = write_data(tmp_path / "d")
    cfg = load_config(None, overrides(saved_model(family), data, tmp_path / "out", **{"train.keep_best": "false"}))
    names = set(build_objective(cfg).metric_names())
    result = train(cfg)
    assert result.chosen_by == "last step" and cfg.train.metric is None
    assert set(result.before) - {k for k in result.before if k.startswith("test_")} == names
    assert set(result.best) == names and set(result.test) == {n.replace("eval_", "test_") for n in names}
    assert result.best["eval_invalid_rate"] == 0.0  # trie decoding
    assert 0 <= result.best["eval_macro_f1"] <= 1
    assert {n for n, p in result.model.named_parameters() if p.requires_grad} == {"prompt.prompt"}
    meta = json.loads((result.adapter_dir / "softprompt.json").read_text())
    assert meta["method"] == "ptec_text" and meta["steps"] == 4
    final = load_file(str(result.adapter_dir / "adapter_model.safetensors"))["prompt_embeddings"]
    # resume: drop what the run wrote after its step-2 checkpoint and train on from there
    run_dir = tmp_path / "out" / "t"
    shutil.rmtree(run_dir / "step_000004"), shutil.rmtree(run_dir / "final")
    resumed = train(cfg, resume=True)
    assert resumed.steps == 4
    assert torch.equal(load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))["prompt_embeddings"], final)


@pytest.mark.slow
@pytest.mark.skipif(not HATESPEECH.is_dir(), reason="the shared HateSpeech data is not beside the repo")
def test_demo_recipe_runs_on_the_released_hatespeech_data(tmp_path):
    from softprompt import train

    cfg = load_config(ROOT / "recipes" / "ptec" / "demo_hatespeech_text.yaml",
                      [f"data.path={HATESPEECH}", f"train.output_dir={tmp_path}", "train.max_steps=2",
                       "train.eval_every=2", "train.save_every=2", "data.max_eval_samples=16",
                       "train.progress_bar=false"])
    assert cfg.method.name == "ptec_text" and cfg.prompt.init == "label_names"
    result = train(cfg)
    assert result.steps == 2 and result.chosen_by == "best eval_macro_f1"
    assert result.best["eval_invalid_rate"] == 0.0 and 0 <= result.test["test_macro_f1"] <= 1


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("items, message", [
    (["method=ptec_text", "objective.labels=[a, a]"], r"names repeat"),
    (["method=ptec_text", "objective.labels=[a; b, c]"], r"contains the separator '; '"),
    (["method=ptec_text", "objective.labels=[a, b]", "objective.separator="], r"objective.separator: must not be empty"),
    (["method=ptec_text", "objective.labels=[a, b]", "objective.decoding=beam"], r"objective.decoding: 'beam' is not valid"),
    (["method=ptec_text", "objective.labels=[a, b]", "objective.label_order=alpha"], r"objective.label_order"),
    (["method=ptec_text", "objective.labels=[a, b]", "objective.example_weight=x"], r"objective.example_weight"),
    (["method=ptec_text", "objective.labels=[a, b]", "objective.num_beams=0"], r"objective.num_beams: must be >= 1"),
    (["method=ptec_text", "objective.labels=[a, b]", "objective.max_new_tokens=0"], r"objective.max_new_tokens"),
    (["method=ptec_text", "objective.labels=[a, b]", "data.add_eos=false"], r"data.add_eos"),
    (["method=null", "objective.type=label_text", "objective.labels=[a, b]", "head.type=linear"], r"drop the head"),
    (["method=ptec_text", "objective.labels=[a, b]", "head.type=linear"], r"method 'ptec_text' has no head"),
])
def test_config_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, items)


@pytest.mark.parametrize("rows, extra, message", [
    ([{"text": "a", "red": 0, "green": 0, "blue": 0, "red green": 0}], {}, r"train row 0 has no label"),
    ([{"text": "a", "labels": ["purple"]}], {}, r"\['purple'\] are not in objective.labels"),
    ([{"text": "a", "red": 1, "green": 1, "blue": 1, "red green": 1}], {"max_target_length": 4},
     r"label-list target of \d+ tokens, over data.max_target_length=4"),
    ([{"text": "a", "red": 1, "green": 0, "blue": 0, "red green": 0}], {}, r"never occur in the 'train' split"),
    ([{"text": None, "red": 1, "green": 1, "blue": 1, "red green": 1}], {}, r"no value for column\(s\) \['text'\]"),
])
def test_bad_data_is_one_clear_error(rows, extra, message, tokenizer):
    from datasets import Dataset

    fmt = "list" if "labels" in rows[0] else "columns"
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS), label_format=fmt))
    with pytest.raises(SoftPromptError, match=message):
        objective.encode(Dataset.from_list(rows), tokenizer, data_cfg(**extra), "causal", "train")


def test_encoders_and_untokenizable_labels_are_refused(tokenizer):
    from datasets import Dataset

    with pytest.raises(SoftPromptError, match="needs a causal or seq2seq model"):
        LabelText(LabelTextConfig(labels=("a", "b"))).check_model("encoder", False, "bert")
    # "," with no space: " red,green" does not keep " green" as it is alone, with either prefix
    objective = LabelText(LabelTextConfig(labels=tuple(LABELS), separator=",", label_prefix=" "))
    with pytest.raises(SoftPromptError, match="does not keep"):
        objective.encode(Dataset.from_list(label_rows(6)), tokenizer, data_cfg(), "causal", "train")


def test_label_names_from_the_train_split(tmp_path):
    """Without objective.labels the names come from the train split (label_data.complete, as for classify),
    and PTEC's label-name prompt init reads them."""
    from softprompt.build import complete_config

    rows = [{"text": "a", "tags": ["sky", "red"]}, {"text": "b", "tags": ["red"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["method=ptec_text", f"data.path={tmp_path}", "data.source_template={text}",
                             "objective.label_format=list", "objective.label_column=tags", "data.eval_split=null",
                             "data.test_split=null"])
    done = complete_config(cfg)
    assert cfg.objective.labels == () and done.objective.labels == ("red", "sky")
    assert done.prompt.init == "label_names" and done.prompt.init_labels == ("red", "sky")
