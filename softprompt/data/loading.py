"""Dataset loading (through `datasets`) and text-to-text templating into token ids.

Sources: a hub dataset name (when online), a local file (json, jsonl, csv, parquet; used as the train
split), a local directory holding `<split>.<ext>` files, or "demo" for the bundled task.

`load_splits` gives a run its train/eval/test rows: it checks once that every split the config names
exists (one message naming every missing key and the fixes), and with `data.validation_fraction` carves
the eval rows out of the train rows (a seeded shuffle, `data.split_seed`), as litgpt's val_split_fraction.

Truncation policy (`data.truncation`): targets are never cut; a target longer than
`data.max_target_length` is an error. When source + target exceed `data.max_length` the source is cut:
`source_left` drops its first tokens (keeping a leading BOS), `source_right` drops its last tokens,
`error` refuses the row.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

from softprompt.data.templates import check_label_names, render, template_fields
from softprompt.errors import SoftPromptError, gist

DEMO_TASK = Path(__file__).parent / "demo" / "task"
FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
EXAMPLE_FRACTION = 0.1  # the value the missing-split message suggests for data.validation_fraction

log = logging.getLogger(__name__)


def local_path(path: str) -> Path:
    """The directory or file `data.path` names. Bundled names: "demo" (the demo task), "demo-text" (the demo
    corpus as documents of generic text, for recovery), "demo-large-text" / "demo-large-task" (the larger
    demo model's held-out text and fact-recall task, built by scripts/build_demo_large.py)."""
    if path == "demo":
        return DEMO_TASK
    if path == "demo-text":
        return demo_text_dir()
    if path in ("demo-large-text", "demo-large-task"):
        from softprompt.loading import demo_large_dir

        local = demo_large_dir() / path.removeprefix("demo-large-")
        if not local.is_dir():
            raise SoftPromptError(f"data.path: {path} is not built here ({local}); build it once with "
                                  "`python scripts/build_demo_large.py`")
        return local
    return Path(path)


def demo_text_dir() -> Path:
    """The bundled demo corpus as {"text": ...} rows, one line each (the demo model was pretrained on lines as
    documents), every 10th line in validation and the next in test, written once to the cache (derived data,
    not shipped twice). These are the demo model's pretraining lines: right for tests and examples, not for
    held-out claims (the larger demo's text/ holds freshly generated text)."""
    import json
    import tempfile

    from softprompt.loading import DEMO_MODEL, cache_dir

    out = cache_dir() / "demo-text"
    if out.is_dir():
        return out
    lines = (DEMO_MODEL.parent / "corpus.txt").read_text().splitlines()
    docs = [line for line in lines if line.strip()]
    splits = {"train": [], "validation": [], "test": []}
    for i, doc in enumerate(docs):
        splits["validation" if i % 10 == 0 else "test" if i % 10 == 1 else "train"].append(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-text.", dir=out.parent))
    for split, rows in splits.items():
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in rows))
    try:
        tmp.rename(out)
    except OSError:  # another process wrote it first: theirs is the same
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_splits(data_cfg) -> dict[str, tuple[str, object]]:
    """The rows a training run uses: {"train": (split, rows), "eval": ..., "test": ...} with the keys of the
    splits it has, `split` being the name to pass to `encode` (messages, and the max_*_samples choice).

    With data.validation_fraction the eval rows are carved from the train rows, and data.eval_split is not
    looked up. A split that local data lacks fails once, naming every such key and the fixes; only
    data.test_split left at its default ("test") is dropped instead, with a warning (a directory of
    train/validation files, or one file, then trains without asking for it). A hub dataset's splits are
    not listed first: its load names a missing one.
    """
    plan = _plan(data_cfg)
    carving = bool(data_cfg.validation_fraction)
    rows = {key: _load(data_cfg, split) for key, split in plan.items() if not (key == "eval" and carving)}
    out = {key: (plan[key], rows[key]) for key in rows}
    if carving:
        train_split = plan["train"]
        # content errors name the row of the data as given, before the shuffle moves it
        check_rows(rows["train"], data_cfg, train_split)
        train, held = carve(rows["train"], data_cfg.validation_fraction, data_cfg.split_seed, train_split)
        out["train"] = (train_split, train)
        out["eval"] = (plan["eval"], held)
    return {key: out[key] for key in ("train", "eval", "test") if key in out}


def load_eval_split(data_cfg, split: str | None = None) -> tuple[str, object]:
    """The (split, rows) that `softprompt eval` scores: `split` when given, else the test split, else the eval
    split. With data.validation_fraction the eval split (also when `split` names data.eval_split) is the
    rows training carved from the train split: the same rows, fraction and seed carve the same rows."""
    # the carved rows answer to data.eval_split's name, to "validation" (what the eval_split null case calls
    # them) and to the carved split's own name
    carved_names = {data_cfg.eval_split or "validation", CARVED.format(train=data_cfg.train_split)}
    carved = bool(split and data_cfg.validation_fraction and split in carved_names)
    if split and not carved:
        return split, _load(data_cfg, split)
    plan = _plan(data_cfg)
    if "test" in plan and not carved:
        return plan["test"], _load(data_cfg, plan["test"])
    if "eval" not in plan:
        raise SoftPromptError("eval: no split to evaluate; pass --split NAME, or set data.test_split, "
                              "data.eval_split or data.validation_fraction")
    if not data_cfg.validation_fraction:
        return plan["eval"], _load(data_cfg, plan["eval"])
    rows = _load(data_cfg, plan["train"])
    check_rows(rows, data_cfg, plan["train"])
    return plan["eval"], carve(rows, data_cfg.validation_fraction, data_cfg.split_seed, plan["train"])[1]


def split_names(path: str) -> list[str] | None:
    """The splits local data has: a directory's `<split>.<ext>` stems, ["train"] for one file; None for a hub
    dataset (listing its splits costs a round of hub requests, retried for ~25 s when the hub is out of
    reach, before the load that would fail the same way; its load names a missing split)."""
    local = local_path(path)
    if local.is_dir():
        return sorted({f.stem for f in local.iterdir() if f.suffix in FORMATS})
    return ["train"] if local.suffix in FORMATS else None


def carve(rows, fraction: float, seed: int, split: str = "train"):
    """(train, held-out) rows: a seeded shuffle puts round(fraction * n) rows (at least 1, at most n - 1) in
    the held-out part; each part keeps the data's order. The same rows, fraction and seed give the same parts."""
    n = len(rows)
    if n < 2:
        raise SoftPromptError(f"data.validation_fraction: the {split!r} split has {n} row(s), too few to carve a "
                              "validation split from; give at least 2 rows, or set data.validation_fraction to null")
    k = min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)  # Python keeps an int seed's shuffle stable across versions
    return rows.select(sorted(order[k:])), rows.select(sorted(order[:k]))


CARVED = "validation (carved from {train!r})"  # the carved eval split's name in messages and `eval` output


def _plan(data_cfg) -> dict[str, str]:
    """Which split each of train/eval/test reads, after checking that they all exist (one message)."""
    plan = {"train": data_cfg.train_split, "eval": data_cfg.eval_split, "test": data_cfg.test_split}
    if data_cfg.validation_fraction:
        plan["eval"] = CARVED.format(train=data_cfg.train_split)
    plan = {key: split for key, split in plan.items() if split}
    have = split_names(data_cfg.path)
    if have is None:
        return plan
    local = local_path(data_cfg.path)
    kind = "dir" if local.is_dir() else "file"
    if kind == "file":  # one file is the train split, whatever data.train_split calls it
        if not local.is_file():
            raise SoftPromptError(f"data.path: {str(local)!r} does not exist")
        have = [data_cfg.train_split]
    default_test = type(data_cfg).__dataclass_fields__["test_split"].default
    carving = bool(data_cfg.validation_fraction)
    missing = {key: split for key, split in plan.items()
               if not (key == "eval" and carving) and not all(p in have for p in _split_parts(split))}
    if missing.get("test") == default_test:
        del missing["test"], plan["test"]
        if not missing:
            log.warning("data.test_split: %r (the default) is not in data.path %r, which has %s; the run has no "
                        "test split (name one in data.test_split for held-out numbers, or set it to null to "
                        "silence this)", default_test, data_cfg.path, have)
    if missing:
        raise _missing_splits(data_cfg.path, missing, have, kind)
    if carving and data_cfg.eval_split in have and data_cfg.eval_split != data_cfg.train_split:
        log.warning("data.validation_fraction: the eval rows are carved from %r, so the data's own %r split is "
                    "not used (set data.validation_fraction to null to evaluate on it)",
                    data_cfg.train_split, data_cfg.eval_split)
    return plan


def _split_parts(split: str) -> list[str]:
    """The split names in a `datasets` split expression: "validation[:50%]" -> validation, "a+b" -> a, b."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def _missing_splits(path: str, missing: dict[str, str], have: list[str], kind: str) -> SoftPromptError:
    keys = {"train": "data.train_split", "eval": "data.eval_split", "test": "data.test_split"}
    named = " and ".join(f"{keys[k]} ({s!r})" for k, s in missing.items())
    if kind == "file":
        where = f"data.path: {path!r} is one file, used as the train split, so it has no {named}"
    else:
        where = f"data.path: {path!r} has the split(s) {have}, not {named}"
    fixes = []
    if "train" in missing:
        fixes.append(f"set data.train_split to one of {have}")
    if "eval" in missing:
        fixes.append(f"set data.validation_fraction: {EXAMPLE_FRACTION} to carve an eval split from the train "
                     "rows, or data.eval_split: null to train without evaluation")
    if "test" in missing:
        fixes.append("set data.test_split: null to run without a test split")
    if kind == "file":
        files = " and ".join(f"{s}.jsonl" for k, s in missing.items() if k != "train")
        fixes.append(f"or put train.jsonl and {files} in a directory and point data.path at it")
    else:
        fixes.append("or name split(s) it has, or add a <split>.jsonl file for each")
    return SoftPromptError(f"{where}; " + "; ".join(fixes))


def _load(data_cfg, split: str):
    """One split's rows, as load_split, except that one file is the train split whatever its name."""
    local = local_path(data_cfg.path)
    if not local.is_dir() and local.suffix in FORMATS and split == data_cfg.train_split:
        split = "train"
    return load_split(data_cfg.path, split, data_cfg.name)


def load_split(path: str, split: str, name: str | None = None):
    """One split as a `datasets.Dataset`."""
    import datasets

    datasets.disable_progress_bars()
    local = local_path(path)
    if local.is_dir():  # `split` may slice or join as `datasets` does: "validation[:50%]", "train+validation"
        files = {}
        for part in _split_parts(split):
            found = [f for f in sorted(local.iterdir()) if f.stem == part and f.suffix in FORMATS]
            if not found:
                raise SoftPromptError(f"data.path: {str(local)!r} has no file for split {part!r}; expected "
                                      f"{part}.jsonl/.json/.csv/.parquet")
            files[part] = found[0]
        return _load_files(files, split)
    if local.suffix in FORMATS:
        if not local.is_file():
            raise SoftPromptError(f"data.path: {str(local)!r} does not exist")
        if split != "train":
            raise SoftPromptError(
                f"data.path: {str(local)!r} is one file, used as the train split; for a {split!r} split put "
                f"{split}.jsonl beside train.jsonl in a directory and point data.path at it, or set it to null"
            )
        return _load_files({split: local}, split)
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise SoftPromptError(
            f"data.path: cannot load {path!r} split {split!r} ({gist(e, typed=True)}); "
            "give a local json/jsonl/csv/parquet file or directory, or a hub dataset reachable from here"
        ) from None


def _load_files(files: dict[str, Path], split: str):
    """`split` (a split expression over the names in `files`) from local files of one format."""
    import datasets

    for name, file in files.items():
        if not file.read_bytes().strip():
            raise SoftPromptError(f"data: the {name!r} split is empty ({str(file)!r} has no rows); "
                                  "give at least one row")
        if FORMATS[file.suffix] in ("json", "csv"):
            check_text_file(file)
    formats = {FORMATS[f.suffix] for f in files.values()}
    if len(formats) > 1:
        raise SoftPromptError(f"data: split {split!r} joins files of different formats "
                              f"({sorted(map(str, files.values()))}); give them one format")
    try:
        return datasets.load_dataset(formats.pop(), data_files={k: str(f) for k, f in files.items()}, split=split)
    except Exception as e:  # noqa: BLE001
        raise SoftPromptError(f"data.path: cannot read {', '.join(repr(str(f)) for f in files.values())} "
                              f"({gist(e, typed=True)})") from None


def check_text_file(file: Path) -> None:
    """What `datasets` would reject with a parser traceback, or accept wrongly, named by line: not UTF-8,
    a JSON line that is invalid or not an object, a CSV row with more or fewer fields than the header."""
    import csv
    import io
    import json

    from softprompt.textfile import read_utf8

    where = f"data.path: {str(file)!r}"
    text = read_utf8(file, "data file")
    if file.suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                raise SoftPromptError(
                    f"{where} line {reader.line_num} has {len(row)} fields but the header has {len(header)} "
                    f"({header}); fix the row, and quote values that hold commas (\"a, b\")"
                )
        return
    if file.suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines in a .json file: checked line by line below
        if isinstance(whole, list):
            for i, row in enumerate(whole):
                if not isinstance(row, dict):
                    raise SoftPromptError(f"{where} item {i} is a JSON {type(row).__name__}, not an object; "
                                          'give a list of objects like {"source": ..., "target": ...}')
            return
        if isinstance(whole, dict):
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SoftPromptError(f"{where} line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                                  "give one JSON object per line") from None
        if not isinstance(row, dict):
            raise SoftPromptError(f"{where} line {n} is a JSON {type(row).__name__}, not an object; "
                                  'give one object per line like {"source": ..., "target": ...}')


def check_columns(fields: dict[str, list[str]], columns: list[str], data_cfg, split: str) -> None:
    """Every column a template uses exists in the split (`label_name` comes from data.label_names)."""
    have = set(columns) | ({"label_name"} if data_cfg.label_names else set())
    for key, names in fields.items():
        for name in names:
            if name in have:
                continue
            if name == "label_name":
                raise SoftPromptError(
                    f"data.{key}: uses {{label_name}}, the word data.label_names gives each row's class index in "
                    f"data.label_column ({data_cfg.label_column!r}), but data.label_names is not set; set it "
                    f"(e.g. data.label_names: [negative, positive]), or use a column of the {split!r} split: "
                    f"{sorted(columns)}")
            raise SoftPromptError(f"data.{key}: refers to column {name!r}, which the dataset lacks; its "
                                  f"{split!r} split has the columns {sorted(columns)}")


def check_rows(rows, data_cfg, split: str) -> None:
    """Every row holds what the templates need, checked a column at a time: no null in a template column (a
    key missing from a jsonl row, or an empty csv cell, reads as null; a float NaN counts too), a target that
    is not all empty strings, and with data.label_names a class index in range. Messages name the split,
    the row (0-based, in the split's order) and the column."""
    fields = {key: template_fields(getattr(data_cfg, key), f"data.{key}")
              for key in ("source_template", "target_template")}
    check_label_names(data_cfg.source_template, data_cfg.target_template, data_cfg.label_names)
    check_columns(fields, list(rows.column_names), data_cfg, split)
    derived = {"label_name"} if data_cfg.label_names else set()  # made from the label column, checked there
    used = {n for names in fields.values() for n in names} - derived
    if data_cfg.label_names:
        if data_cfg.label_column not in rows.column_names:
            raise SoftPromptError(f"data.label_column: {data_cfg.label_column!r} (the class index data.label_names "
                                  f"maps to words) is not a column of the {split!r} split; its columns are "
                                  f"{sorted(rows.column_names)}")
        used.add(data_cfg.label_column)
    columns = rows.select_columns(sorted(used)).to_dict() if used else {}
    for key, names in fields.items():
        for name in (n for n in names if n not in derived):
            for i, value in enumerate(columns[name]):
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    raise SoftPromptError(
                        f"data: {split} row {i} has no value (null or missing) for column {name!r}, used by "
                        f"data.{key}; fill it in or drop the row")
    if data_cfg.label_names:
        columns["label_name"] = [data_cfg.label_names[_label_index(v, data_cfg, split, i)]
                                 for i, v in enumerate(columns[data_cfg.label_column])]
    target = fields["target_template"]
    for i, values in enumerate(zip(*(columns[n] for n in target))):
        if all(isinstance(v, str) and not v.strip() for v in values):
            raise SoftPromptError(f"data: {split} row {i} has an empty target (column(s) {target} are empty); "
                                  "fill it in or drop the row")


def _label_index(value, data_cfg, split: str | None, i: int | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(data_cfg.label_names):
        return value
    where = f"{split} row {i}: " if split is not None else ""
    raise SoftPromptError(
        f"data.label_names: {where}column {data_cfg.label_column!r} holds {value!r}, not an index into the "
        f"{len(data_cfg.label_names)} label names; fix the row, data.label_column or data.label_names"
    )


def with_label_name(row: dict, data_cfg, split: str | None = None, i: int | None = None) -> dict:
    """The row with `label_name` = data.label_names[row[data.label_column]] when label_names is set."""
    if not data_cfg.label_names:
        return row
    return {**row, "label_name": data_cfg.label_names[_label_index(row.get(data_cfg.label_column), data_cfg, split, i)]}


def limited(rows, data_cfg, split: str):
    """`rows` cut to data.max_train_samples (the train split) / max_eval_samples (any other); every objective's
    encode goes through it, so the limits mean the same rows everywhere. Refuses an empty split."""
    if len(rows) == 0:
        raise SoftPromptError(f"data: the {split!r} split is empty; give at least one row")
    limit = data_cfg.max_train_samples if split == data_cfg.train_split else data_cfg.max_eval_samples
    return rows.select(range(min(limit, len(rows)))) if limit is not None else rows


def encode_rows(rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
    """Template and tokenize every row. Causal rows are `source + target` with labels on the target
    only; seq2seq rows keep them apart. Every row also keeps `source_ids` and the target text for
    generation-based evaluation."""
    rows = limited(rows, data_cfg, split)
    check_rows(rows, data_cfg, split)
    eos = [tokenizer.eos_token_id] if data_cfg.add_eos and tokenizer.eos_token_id is not None else []
    bos = tokenizer.bos_token_id
    out = []
    for i, row in enumerate(rows):
        row = with_label_name(row, data_cfg, split, i)
        source = render(data_cfg.source_template, row, "source_template")
        target = render(data_cfg.target_template, row, "target_template")
        src = tokenizer(source)["input_ids"]
        tgt = tokenizer(target, add_special_tokens=False)["input_ids"] + eos
        if len(tgt) > data_cfg.max_target_length:
            raise SoftPromptError(
                f"data: {split} row {i} has a target of {len(tgt)} tokens, over data.max_target_length="
                f"{data_cfg.max_target_length}; raise data.max_target_length or shorten the targets"
            )
        room = data_cfg.max_length - (len(tgt) if kind == "causal" else 0)
        if len(src) > room:
            src = _truncate(src, room, data_cfg.truncation, bos, tokenizer.eos_token_id, f"{split} row {i}",
                            data_cfg.max_length)
        if kind == "causal":
            item = {"input_ids": src + tgt, "labels": [-100] * len(src) + tgt}
        else:
            item = {"input_ids": src, "labels": tgt}
        item.update(source_ids=src, target_text=target)
        out.append(item)
    return out


def _truncate(ids: list[int], room: int, policy: str, bos: int | None, eos: int | None, where: str,
              max_length: int) -> list[int]:
    """Cut a source to `room` tokens: source_left drops the oldest (a leading BOS stays), source_right the
    last (a trailing EOS the tokenizer appended, as T5's, stays, as `tokenizer(truncation=True)` keeps it)."""
    if policy == "error":
        raise SoftPromptError(
            f"data: {where} needs {len(ids)} source tokens but only {room} fit in data.max_length={max_length}; "
            "raise data.max_length or set data.truncation to source_left/source_right"
        )
    if policy == "source_right":
        keep_eos = bool(ids) and eos is not None and ids[-1] == eos and room > 1
        return ids[:room - 1] + [eos] if keep_eos else ids[:room]
    keep_bos = bool(ids) and bos is not None and ids[0] == bos and room > 1
    return [bos] + ids[len(ids) - room + 1:] if keep_bos else ids[len(ids) - room:]
