"""Label data shared by the objectives that predict label sets (classify.py, label_text.py).

Label names come from the config (`objective.labels`, in output order) or, when it gives none, from the
train split (`complete`, run by train before the model is built; the run's config.yaml records them).

A label spec is any config with `labels` (names, in output order), `label_format` (columns | list |
index), `label_column` and `multi_label`:
- columns: one 0/1 column per label name (PTEC's released format);
- list: `label_column` holds a list of label names per row;
- index: `label_column` holds a class index into `labels` (multi-class).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from softprompt.data.loading import limited
from softprompt.data.templates import render, template_fields
from softprompt.errors import SoftPromptError
from softprompt.layers.inits import LABEL_INITS

LABEL_FORMATS = ("columns", "list", "index")


def sources(rows, template: str, split: str) -> list[str]:
    """Each row's `data.source_template` rendering; a row lacking a value it uses is one clear error."""
    fields = template_fields(template, "data.source_template")
    out = []
    for i, row in enumerate(rows):
        missing = [n for n in fields if row.get(n) is None or (isinstance(row[n], float) and math.isnan(row[n]))]
        if missing:
            raise SoftPromptError(f"data: {split} row {i} has no value for column(s) {missing}, used by "
                                  "data.source_template; fill it in or drop the row")
        out.append(render(template, row, "source_template"))
    return out


def check_columns(spec, columns: set[str], template: str, split: str) -> None:
    """The template's columns and the label columns exist in the split."""
    lacking = [n for n in template_fields(template, "data.source_template") if n not in columns]
    if lacking:
        raise SoftPromptError(f"data.source_template: refers to column(s) {lacking}, which the {split!r} split lacks; "
                              f"its columns are {sorted(columns)}")
    if spec.label_format == "columns":
        lacking = [n for n in spec.labels if n not in columns]
        if lacking:
            raise SoftPromptError(f"objective.labels: {lacking} are not columns of the {split!r} split (label_format "
                                  f"columns reads one 0/1 column per label); its columns are {sorted(columns)}")
    elif spec.label_column not in columns:
        raise SoftPromptError(f"objective.label_column: {spec.label_column!r} is not a column of the {split!r} "
                              f"split; its columns are {sorted(columns)}")


def label_matrix(spec, rows, split: str) -> np.ndarray:
    """(N, L) 0/1: row i has label j. Multi-class specs are checked to give exactly one label per row."""
    labels, fmt = spec.labels, spec.label_format
    if not labels:  # train fills them from the data (complete); a caller that skips it gets this
        raise SoftPromptError("objective.labels: no label names; give them, or let the train split give them "
                              "(softprompt.build.complete_config)")
    if fmt == "columns":
        table = rows.select_columns(list(labels)).to_dict()
        values = np.array([[_binary(v, split, i, name) for i, v in enumerate(table[name])] for name in labels]).T  # (L, N) -> (N, L)
    else:
        column = rows.select_columns([spec.label_column]).to_dict()[spec.label_column]
        values = np.zeros((len(column), len(labels)), dtype=int)
        if fmt == "index":
            for i, v in enumerate(column):
                values[i, _index(v, len(labels), split, i, spec.label_column)] = 1
        else:
            position = {name: j for j, name in enumerate(labels)}
            for i, names in enumerate(column):
                if not isinstance(names, list):
                    raise SoftPromptError(f"data: {split} row {i}: {spec.label_column!r} holds {names!r}, not a list "
                                          "of label names")
                unknown = [n for n in names if n not in position]
                if unknown:
                    raise SoftPromptError(f"data: {split} row {i}: label(s) {unknown} are not in objective.labels "
                                          f"{list(labels)}; add them there or fix the row")
                values[i, [position[n] for n in names]] = 1
    if not spec.multi_label:
        counts = values.sum(1)
        if (counts != 1).any():
            i = int(np.flatnonzero(counts != 1)[0])
            raise SoftPromptError(f"data: {split} row {i} has {int(counts[i])} labels, but objective.multi_label is "
                                  "false (one label per row); set it to true for multi-label data")
    return values


def label_counts(targets: np.ndarray, labels: tuple[str, ...], split: str) -> np.ndarray:
    """(L,) each label's count in `targets` (N, L); a label that never occurs is one clear error (nothing
    can learn it, and its inverse-frequency weight would be infinite)."""
    counts = targets.sum(0)  # (L,)
    never = [name for name, n in zip(labels, counts) if n == 0]
    if never:
        raise SoftPromptError(f"data: label(s) {never} never occur in the {split!r} split, so nothing can learn them "
                              "(and their inverse-frequency weight would be infinite); drop them from objective.labels "
                              "or add rows that have them")
    return counts


def inverse_frequency(targets: np.ndarray, labels: tuple[str, ...], split: str) -> torch.Tensor:
    """PTEC's pos_weight: max_k n_k / n_j over the train split's label counts n (L,)."""
    counts = label_counts(targets, labels, split)
    return torch.tensor(counts.max() / counts, dtype=torch.float32)


def _binary(value, split: str, i: int, name: str) -> int:
    if not isinstance(value, str) and value in (0, 1):  # 0/1, 0.0/1.0, false/true
        return int(value)
    raise SoftPromptError(f"data: {split} row {i}: label column {name!r} holds {value!r}; label columns hold 0 or 1")


def _index(value, n: int, split: str, i: int, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    raise SoftPromptError(f"data: {split} row {i}: {column!r} holds {value!r}, not a class index in [0, {n}) "
                          "into objective.labels")


def labels_from_data(spec, rows, template: str, split: str) -> tuple[str, ...]:
    """The label names `rows` imply: columns, every column other than the template's whose values are all
    0/1 (in the data's column order); list, the names that occur (sorted); index, "0" .. str(max index)."""
    fix = "give objective.labels"
    if spec.label_format == "columns":
        used = set(template_fields(template, "data.source_template"))
        table = rows.to_dict()
        names = tuple(c for c in rows.column_names if c not in used and all(
            not isinstance(v, str) and v in (0, 1) for v in table[c]))
        if not names:
            raise SoftPromptError(f"objective.labels: not given, and no column of the {split!r} split holds only 0/1 "
                                  f"values to read as labels (its columns are {rows.column_names}); {fix}")
        return names
    column = rows.select_columns([spec.label_column]).to_dict()[spec.label_column] if spec.label_column in \
        rows.column_names else None
    if column is None:
        raise SoftPromptError(f"objective.label_column: {spec.label_column!r} is not a column of the {split!r} split; "
                              f"its columns are {rows.column_names}")
    if spec.label_format == "list":
        if not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in column):
            raise SoftPromptError(f"objective.label_column: {spec.label_column!r} does not hold a list of label names "
                                  f"in every row of the {split!r} split; fix the data or {fix}")
        return tuple(sorted({n for names in column for n in names}))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in column):
        raise SoftPromptError(f"objective.label_column: {spec.label_column!r} does not hold a class index (an integer "
                              f">= 0) in every row of the {split!r} split; fix the data or {fix}")
    return tuple(str(i) for i in range(max(column) + 1))


def complete(cfg, train_rows):
    """`cfg` with the label names read from the train split where objective.labels gives none, and what
    follows from them: head.num_outputs (one per label) and a label init's prompt.init_labels."""
    spec = cfg.objective
    if spec.labels:
        return cfg
    split, rows = train_rows()
    rows = limited(rows, cfg.data, split)  # the rows training reads (data.max_train_samples)
    labels = labels_from_data(spec, rows, cfg.data.source_template, split)
    spec = dataclasses.replace(spec, labels=labels)
    never = [name for name, n in zip(labels, label_matrix(spec, rows, split).sum(0)) if n == 0]
    if never:  # e.g. a 0/1 column that is all 0 in the rows training reads, or an index no row has
        raise SoftPromptError(f"data: label(s) {never}, read from the {split!r} split, occur in none of the rows "
                              "training reads, so nothing can learn them; give objective.labels without them, or add "
                              "rows that have them")
    changes = {"objective": spec}
    if cfg.head is not None:
        if cfg.head.num_outputs not in (None, len(labels)):
            raise SoftPromptError(f"head.num_outputs: {cfg.head.num_outputs}, but the {split!r} split has "
                                  f"{len(labels)} labels {list(labels)}; drop head.num_outputs or give objective.labels")
        changes["head"] = dataclasses.replace(cfg.head, num_outputs=len(labels))
    if getattr(cfg.prompt, "init", None) in LABEL_INITS and not cfg.prompt.init_labels:
        changes["prompt"] = dataclasses.replace(cfg.prompt, init_labels=labels)
    return dataclasses.replace(cfg, **changes)
