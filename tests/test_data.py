"""Loading local files through `datasets`, templating, truncation policy, collation, batch order."""

import json

import pytest

from softprompt.config import DataConfig
from softprompt.data import BatchStream, collate, encode_rows, load_split
from softprompt.errors import SoftPromptError

ROWS = [{"q": "the cat sat on the mat", "a": "red", "label": i % 2} for i in range(6)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_formats(tmp_path, fmt):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"train.{fmt}"
    {"jsonl": lambda: ds.to_json(str(path)), "csv": lambda: ds.to_csv(str(path)),
     "parquet": lambda: ds.to_parquet(str(path))}[fmt]()
    for source in (path, tmp_path):  # a file (train split) or a dir with <split>.<ext>
        loaded = load_split(str(source), "train")
        assert len(loaded) == 6 and loaded[0]["q"] == "the cat sat on the mat"


def test_single_file_has_only_a_train_split(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(SoftPromptError, match="used as the train split"):
        load_split(str(tmp_path / "rows.jsonl"), "validation")


def test_causal_rows_label_only_target(tokenizer):
    import datasets

    cfg = DataConfig(source_template="Q: {q} A:", target_template=" {a}")
    item = encode_rows(datasets.Dataset.from_list(ROWS), tokenizer, cfg, "causal", "train")[0]
    src = tokenizer("Q: the cat sat on the mat A:")["input_ids"]
    tgt = tokenizer(" red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert item["input_ids"] == src + tgt
    assert item["labels"] == [-100] * len(src) + tgt


def test_label_names(tokenizer):
    import datasets

    cfg = DataConfig(source_template="{q}", target_template="{label_name}", label_names=("neg", "pos"))
    items = encode_rows(datasets.Dataset.from_list(ROWS), tokenizer, cfg, "seq2seq", "train")
    assert [it["target_text"] for it in items[:2]] == ["neg", "pos"]


@pytest.mark.parametrize("policy", ["source_left", "source_right", "error"])
def test_truncation_policy(tokenizer, policy):
    import datasets

    cfg = DataConfig(source_template="{q}", target_template=" {a}", max_length=6, max_target_length=3, truncation=policy)
    rows = datasets.Dataset.from_list(ROWS[:1])
    src = tokenizer(ROWS[0]["q"])["input_ids"]
    tgt_len = len(tokenizer(" red", add_special_tokens=False)["input_ids"]) + 1
    if policy == "error":
        with pytest.raises(SoftPromptError, match="set data.truncation"):
            encode_rows(rows, tokenizer, cfg, "causal", "train")
        return
    item = encode_rows(rows, tokenizer, cfg, "causal", "train")[0]
    kept = item["input_ids"][: 6 - tgt_len]
    assert len(item["input_ids"]) == 6
    if policy == "source_left":
        assert kept == [src[0]] + src[len(src) - (5 - tgt_len):]  # BOS kept, oldest tokens dropped
    else:
        assert kept == src[: 6 - tgt_len]


def test_truncation_keeps_bos_and_a_trailing_eos():
    from softprompt.data.loading import _truncate

    ids = [1, 10, 11, 12, 13, 14, 2]  # BOS ... EOS, as a tokenizer that adds both would give
    assert _truncate(ids, 4, "source_right", 1, 2, "row", 4) == [1, 10, 11, 2]  # T5-style sources keep </s>
    assert _truncate(ids, 4, "source_left", 1, 2, "row", 4) == [1, 13, 14, 2]
    assert _truncate(ids[:-1], 4, "source_right", 1, 2, "row", 4) == [1, 10, 11, 12]  # no EOS: a plain cut


def test_collate_dynamic_padding():
    items = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}]
    batch = collate(items, pad_id=0, kind="causal")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_batch_stream_resumes_and_groups():
    items = [{"input_ids": list(range(1 + i % 7))} for i in range(40)]
    a = BatchStream(items, 4, seed=3, group_by_length=True)
    first = [a.next() for _ in range(25)]  # crosses an epoch boundary (10 batches per epoch)
    b = BatchStream(items, 4, seed=3, group_by_length=True, position=12)
    assert [b.next() for _ in range(13)] == first[12:]
    epoch = [it for batch in first[:10] for it in batch]
    assert sorted(map(id, epoch)) == sorted(map(id, items))  # each row once per epoch
    spread = sum(max(len(i["input_ids"]) for i in bt) - min(len(i["input_ids"]) for i in bt) for bt in first[:10])
    plain = BatchStream(items, 4, seed=3, group_by_length=False)
    spread_plain = sum(max(len(i["input_ids"]) for i in bt) - min(len(i["input_ids"]) for i in bt)
                       for bt in (plain.next() for _ in range(10)))
    assert spread < spread_plain  # grouping reduces padding


@pytest.mark.parametrize("template, rows, message", [
    ("{source[0]}", [{"source": "a", "target": "b"}], "attribute/index access"),
    ("{}", [{"source": "a", "target": "b"}], "positional field"),
    ("{source}", [{"source": None, "target": "b"}], "no value (null or missing) for column 'source'"),
    ("{source}", [{"source": "a", "target": ""}], "empty target"),
    ("{question}", [{"source": "a", "target": "b"}], "refers to column 'question'"),
])
def test_templates_and_rows_checked_for_library_callers(tokenizer, template, rows, message):
    """encode_rows checks templates itself (a DataConfig built in code skips config validation)."""
    import datasets

    with pytest.raises(SoftPromptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        encode_rows(datasets.Dataset.from_list(rows), tokenizer, DataConfig(source_template=template), "causal", "train")


def test_escaped_braces_render_literally(tokenizer):
    import datasets

    cfg = DataConfig(source_template='{{"q": "{source}"}}')
    item = encode_rows(datasets.Dataset.from_list([{"source": "a", "target": "b"}]), tokenizer, cfg, "causal", "train")[0]
    assert item["source_ids"] == tokenizer('{"q": "a"}')["input_ids"]


@pytest.mark.parametrize("name, content, message", [
    ("d.csv", "source,target\na,b\nc,d,e\n", "line 3 has 3 fields but the header has 2"),
    ("d.csv", 'source,target\n"a, quoted",b\n', None),  # a quoted comma is one field
    ("d.jsonl", '{"source": "a"}\n\n[1]\n', "line 3 is a JSON list"),
    ("d.json", '[{"source": "a"}, 3]', "item 1 is a JSON int"),
    ("d.jsonl", "caf\u00e9".encode("latin-1"), "not UTF-8"),
])
def test_text_files_checked_before_datasets(tmp_path, name, content, message):
    from softprompt.data.loading import check_text_file

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if message is None:
        check_text_file(path)
    else:
        with pytest.raises(SoftPromptError, match=message):
            check_text_file(path)
