"""The first hour with your own data: one file with a carved validation split, missing splits named once,
label_names that the templates must use, and null cells refused by split, row and column."""

import json
import logging
import math

import pytest

from softprompt.config import DataConfig, load_config
from softprompt.data import encode_rows, load_eval_split, load_splits
from softprompt.errors import ConfigError, SoftPromptError

ROWS = [{"source": f"question {i}", "target": f" answer {i}", "label": i % 2} for i in range(20)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sources(rows) -> list[str]:
    return list(rows["source"])


def test_one_file_with_validation_fraction_carves_a_disjoint_seeded_eval_split(tmp_path, caplog):
    path = write_jsonl(tmp_path / "my.jsonl", ROWS)
    cfg = DataConfig(path=path, validation_fraction=0.25)
    with caplog.at_level(logging.WARNING):
        splits = load_splits(cfg)
    assert list(splits) == ["train", "eval"]  # the default test split is absent: dropped with a warning
    assert "data.test_split: 'test' (the default)" in caplog.text
    (train_name, train), (eval_name, held) = splits["train"], splits["eval"]
    assert train_name == "train" and eval_name != cfg.train_split  # max_eval_samples, not max_train_samples
    assert len(held) == 5 and len(train) == 15
    assert not set(sources(held)) & set(sources(train))
    assert sorted(sources(held) + sources(train)) == sorted(r["source"] for r in ROWS)
    again = load_splits(cfg)
    assert sources(again["eval"][1]) == sources(held) and sources(again["train"][1]) == sources(train)
    other = load_splits(DataConfig(path=path, validation_fraction=0.25, split_seed=1))
    assert sources(other["eval"][1]) != sources(held)
    # `softprompt eval` on the same recipe scores the same carved rows (no test split to prefer)
    name, rows = load_eval_split(cfg)
    assert name == eval_name and sources(rows) == sources(held)
    assert sources(load_eval_split(cfg, cfg.eval_split)[1]) == sources(held)


def test_carved_splits_encode_with_their_own_sample_limits(tmp_path, tokenizer):
    cfg = DataConfig(path=write_jsonl(tmp_path / "my.jsonl", ROWS), validation_fraction=0.5, test_split=None,
                     max_train_samples=3, max_eval_samples=2)
    items = {k: encode_rows(rows, tokenizer, cfg, "causal", split) for k, (split, rows) in load_splits(cfg).items()}
    assert len(items["train"]) == 3 and len(items["eval"]) == 2


def test_one_file_without_a_fraction_fails_once_naming_the_keys_and_fixes(tmp_path):
    path = write_jsonl(tmp_path / "my.jsonl", ROWS)
    with pytest.raises(SoftPromptError) as e:
        load_splits(DataConfig(path=path))
    message = str(e.value)
    for part in ("data.path", "my.jsonl", "data.eval_split ('validation')", "data.validation_fraction: 0.1",
                 "data.eval_split: null"):
        assert part in message
    assert "data.test_split" not in message  # left at its default: dropped, not an error
    # a test split the user named is an error too, in the same one message
    with pytest.raises(SoftPromptError) as e:
        load_splits(DataConfig(path=path, test_split="heldout"))
    message = str(e.value)
    assert "data.eval_split ('validation') and data.test_split ('heldout')" in message
    assert "data.test_split: null" in message and "data.validation_fraction" in message
    with pytest.raises(SoftPromptError, match=r"data.test_split \('heldout'\)"):
        load_splits(DataConfig(path=path, validation_fraction=0.1, test_split="heldout"))


def test_a_missing_file_is_named_before_its_splits(tmp_path):
    with pytest.raises(SoftPromptError, match="does not exist"):
        load_splits(DataConfig(path=str(tmp_path / "nope.jsonl")))


def test_a_directory_names_the_splits_it_has(tmp_path, caplog):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "dev.jsonl", ROWS[:4])
    with pytest.raises(SoftPromptError) as e:
        load_splits(DataConfig(path=str(tmp_path), test_split="final"))
    message = str(e.value)
    assert "['dev', 'train']" in message and "data.eval_split ('validation') and data.test_split ('final')" in message
    splits = load_splits(DataConfig(path=str(tmp_path), eval_split="dev"))  # default test split: dropped
    assert {k: len(r) for k, (_, r) in splits.items()} == {"train": 20, "eval": 4}
    # with a fraction the directory's own validation split goes unused, and says so
    write_jsonl(tmp_path / "validation.jsonl", ROWS[:4])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataConfig(path=str(tmp_path), validation_fraction=0.1))
    assert len(splits["eval"][1]) == 2 and "'validation' split is not used" in caplog.text
    # `softprompt eval` prefers a test split the data has, carving or not
    write_jsonl(tmp_path / "test.jsonl", ROWS[:3])
    for cfg in (DataConfig(path=str(tmp_path), validation_fraction=0.1, eval_split=None),
                DataConfig(path=str(tmp_path), eval_split="dev")):
        name, rows = load_eval_split(cfg)
        assert name == "test" and len(rows) == 3


def test_a_directory_split_can_be_sliced_like_a_hub_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "validation.jsonl", ROWS[:10])
    cfg = DataConfig(path=str(tmp_path), eval_split="validation[:50%]", test_split="validation[50%:]")
    splits = load_splits(cfg)
    assert sources(splits["eval"][1]) == [r["source"] for r in ROWS[:5]]
    assert sources(splits["test"][1]) == [r["source"] for r in ROWS[5:10]]


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "1.5"])
def test_validation_fraction_range_is_checked(value):
    with pytest.raises(ConfigError, match="data.validation_fraction: must be between 0 and 1"):
        load_config(None, [f"data.validation_fraction={value}"])


def test_validation_fraction_and_a_named_eval_split_conflict():
    with pytest.raises(ConfigError, match="data.validation_fraction.*data.eval_split"):
        load_config(None, ["data.validation_fraction=0.1", "data.eval_split=dev"])
    for eval_split in ("null", "validation"):  # null or the default: the fraction decides
        cfg = load_config(None, ["data.validation_fraction=0.1", f"data.eval_split={eval_split}"])
        assert cfg.data.validation_fraction == 0.1


def test_too_few_rows_to_carve(tmp_path):
    with pytest.raises(SoftPromptError, match="too few to carve"):
        load_splits(DataConfig(path=write_jsonl(tmp_path / "one.jsonl", ROWS[:1]), validation_fraction=0.5))


def test_label_names_unused_by_the_templates_is_an_error(tmp_path, tokenizer):
    import datasets

    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.label_names=[negative, positive]", "data.target_template= {label}"])
    for part in ("{label_name}", "data.source_template", "data.target_template", "data.label_names"):
        assert part in str(e.value)
    cfg = DataConfig(target_template=" {label}", label_names=("negative", "positive"))  # built in code, no validate
    with pytest.raises(ConfigError, match="{label_name}"):
        encode_rows(datasets.Dataset.from_list(ROWS), tokenizer, cfg, "causal", "train")
    assert load_config(None, ["data.label_names=[a, b]", "data.source_template={source} ({label_name})"])


def test_label_name_without_label_names_says_to_set_them(tokenizer):
    import datasets

    cfg = DataConfig(target_template=" {label_name}")
    with pytest.raises(SoftPromptError, match="set it .*data.label_names: \\[negative, positive\\]"):
        encode_rows(datasets.Dataset.from_list(ROWS), tokenizer, cfg, "causal", "train")
    rows = datasets.Dataset.from_list([{"source": "a", "label_name": "yes"}])  # the data's own column is fine
    assert encode_rows(rows, tokenizer, cfg, "causal", "train")[0]["target_text"] == " yes"


@pytest.mark.parametrize("name, content, message", [
    ("d.jsonl", '{"source": "a", "target": "b"}\n{"target": "c"}\n',
     r"train row 1 has no value \(null or missing\) for column 'source'"),
    ("d.jsonl", '{"source": "a", "target": "b"}\n{"source": null, "target": "c"}\n', "train row 1 .* column 'source'"),
    ("d.csv", "source,target\na,b\nc,\n", "train row 1 .* column 'target'"),
    ("d.jsonl", '{"source": "a", "target": "b", "label": 0}\n{"source": "c", "target": "d", "label": null}\n',
     "train row 1: column 'label' holds None"),
])
def test_a_null_cell_is_refused_not_rendered_as_none(tmp_path, tokenizer, name, content, message):
    (tmp_path / name).write_text(content)
    extra = dict(label_names=("no", "yes"), target_template=" {label_name}") if "label" in content else {}
    cfg = DataConfig(path=str(tmp_path / name), eval_split=None, test_split=None, **extra)
    (split, rows), = load_splits(cfg).values()
    with pytest.raises(SoftPromptError, match=message):
        encode_rows(rows, tokenizer, cfg, "causal", split)


def test_a_nan_cell_is_refused(tmp_path, tokenizer):
    import datasets

    rows = datasets.Dataset.from_list([{"source": "a", "score": 1.5, "target": "b"},
                                       {"source": "c", "score": math.nan, "target": "d"}])
    cfg = DataConfig(source_template="{source} {score}")
    with pytest.raises(SoftPromptError, match="validation row 1 .* column 'score', used by data.source_template"):
        encode_rows(rows, tokenizer, cfg, "causal", "validation")


def test_a_null_cell_is_named_by_its_row_in_the_file_before_carving(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[13]["source"] = None
    with pytest.raises(SoftPromptError, match="train row 13 has no value"):
        load_splits(DataConfig(path=write_jsonl(tmp_path / "my.jsonl", rows), validation_fraction=0.2))


def test_eval_split_validation_reaches_the_carved_rows_when_eval_split_is_null(tmp_path):
    """data.eval_split: null with a fraction (what the missing-split message suggests) still evaluates the
    carved rows with --split validation, as without --split."""
    path = write_jsonl(tmp_path / "one.jsonl", ROWS)
    cfg = DataConfig(path=path, eval_split=None, test_split=None, validation_fraction=0.25)
    held = sources(load_splits(cfg)["eval"][1])
    assert sources(load_eval_split(cfg, "validation")[1]) == held == sources(load_eval_split(cfg)[1])
