"""Dataset loading (through `datasets`) and text-to-text templating into token ids.

Sources: a hub dataset name (when online), a local file (json, jsonl, csv, parquet; used as the train
split), a local directory holding `<split>.<ext>` files, or "demo" for the bundled task.

Truncation policy (`data.truncation`): targets are never cut; a target longer than
`data.max_target_length` is an error. When source + target exceed `data.max_length` the source is cut:
`source_left` drops its first tokens (keeping a leading BOS), `source_right` drops its last tokens,
`error` refuses the row.
"""

from __future__ import annotations

from pathlib import Path

from softprompt.data.templates import render, template_fields
from softprompt.errors import SoftPromptError, gist

DEMO_TASK = Path(__file__).parent / "demo" / "task"
FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_split(path: str, split: str, name: str | None = None):
    """One split as a `datasets.Dataset`."""
    import datasets

    datasets.disable_progress_bars()
    local = DEMO_TASK if path == "demo" else Path(path)
    if local.is_dir():
        files = [f for f in sorted(local.iterdir()) if f.stem == split and f.suffix in FORMATS]
        if not files:
            raise SoftPromptError(
                f"data.path: {str(local)!r} has no file for split {split!r}; expected {split}.jsonl/.json/.csv/.parquet"
            )
        return _load_file(files[0], split)
    if local.suffix in FORMATS:
        if not local.is_file():
            raise SoftPromptError(f"data.path: {str(local)!r} does not exist")
        if split != "train":
            raise SoftPromptError(
                f"data.path: {str(local)!r} is one file, used as the train split; for a {split!r} split put "
                f"{split}.jsonl beside train.jsonl in a directory and point data.path at it, or set it to null"
            )
        return _load_file(local, split)
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise SoftPromptError(
            f"data.path: cannot load {path!r} split {split!r} ({gist(e, typed=True)}); "
            "give a local json/jsonl/csv/parquet file or directory, or a hub dataset reachable from here"
        ) from None


def _load_file(file: Path, split: str):
    import datasets

    if not file.read_bytes().strip():
        raise SoftPromptError(f"data: the {split!r} split is empty ({str(file)!r} has no rows); give at least one row")
    if FORMATS[file.suffix] in ("json", "csv"):
        check_text_file(file)
    try:
        return datasets.load_dataset(FORMATS[file.suffix], data_files={split: str(file)}, split=split)
    except Exception as e:  # noqa: BLE001
        raise SoftPromptError(f"data.path: cannot read {str(file)!r} ({gist(e, typed=True)})") from None


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
            if name not in have:
                hint = "; set data.label_names to use {label_name}" if name == "label_name" else ""
                raise SoftPromptError(f"data.{key}: refers to column {name!r}, which the dataset lacks; "
                                      f"its columns are {sorted(columns)}{hint}")


def check_row(row: dict, fields: dict[str, list[str]], split: str, i: int) -> None:
    """A row's template columns hold values: no null (a missing key in jsonl reads as null), and a target
    that is not all empty strings."""
    for key, names in fields.items():
        for name in names:
            if row.get(name) is None:
                raise SoftPromptError(f"data: {split} row {i} has no value (null or missing) for column {name!r}, "
                                      f"used by data.{key}; fill it in or drop the row")
    target = fields["target_template"]
    if target and all(isinstance(row[n], str) and not row[n].strip() for n in target):
        raise SoftPromptError(f"data: {split} row {i} has an empty target (column(s) {target} are empty); "
                              "fill it in or drop the row")


def with_label_name(row: dict, data_cfg) -> dict:
    if not data_cfg.label_names:
        return row
    value = row.get(data_cfg.label_column)
    if not isinstance(value, int) or not 0 <= value < len(data_cfg.label_names):
        raise SoftPromptError(
            f"data.label_names: column {data_cfg.label_column!r} holds {value!r}, not an index into "
            f"{len(data_cfg.label_names)} label names; fix data.label_column or data.label_names"
        )
    return {**row, "label_name": data_cfg.label_names[value]}


def encode_rows(rows, tokenizer, data_cfg, kind: str, split: str) -> list[dict]:
    """Template and tokenize every row. Causal rows are `source + target` with labels on the target
    only; seq2seq rows keep them apart. Every row also keeps `source_ids` and the target text for
    generation-based evaluation."""
    if len(rows) == 0:
        raise SoftPromptError(f"data: the {split!r} split is empty; give at least one row")
    limit = data_cfg.max_train_samples if split == data_cfg.train_split else data_cfg.max_eval_samples
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    fields = {key: template_fields(getattr(data_cfg, key), f"data.{key}") for key in ("source_template", "target_template")}
    check_columns(fields, list(rows.column_names), data_cfg, split)
    eos = [tokenizer.eos_token_id] if data_cfg.add_eos and tokenizer.eos_token_id is not None else []
    bos = tokenizer.bos_token_id
    out = []
    for i, row in enumerate(rows):
        row = with_label_name(row, data_cfg)
        check_row(row, fields, split, i)
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
