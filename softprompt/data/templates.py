"""Row templates: `str.format` over a row's columns, checked when the config loads and rendered per row."""

from __future__ import annotations

import string

from softprompt.errors import ConfigError, SoftPromptError

TEMPLATE_HELP = ("fields are plain column names like {source}; write literal braces as {{ and }} "
                 "(e.g. JSON: '{{\"answer\": \"{target}\"}}')")


def template_fields(template: str, key: str) -> list[str]:
    """The column names a str.format template uses. Refuses what would fail or silently render something
    else at data time: positional fields ({} {0}), unbalanced braces, attribute/index access
    ({source.upper} {source[0]}), conversions ({source!r}) and format specs ({score:>5})."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"{key}: {template!r} has unbalanced braces ({e}); {TEMPLATE_HELP}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name.isidentifier():
            what = ("a positional field" if name == "" or name.isdigit() else
                    "attribute/index access, which templates do not support" if name.split(".")[0].split("[")[0]
                    .isidentifier() else "not a column name")
            raise ConfigError(f"{key}: {shown} in {template!r} is {what}; {TEMPLATE_HELP}")
        if conversion or spec:
            raise ConfigError(f"{key}: {shown} in {template!r} converts or formats the value; templates take "
                              f"the column as it is ({{{name}}}): format the column in the data instead, "
                              "and write literal braces as {{ and }}")
        fields.append(name)
    return fields


def render(template: str, row: dict, key: str) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise SoftPromptError(
            f"data.{key}: refers to column {e.args[0]!r}, which the dataset lacks; its columns are {sorted(row)}"
        ) from None


def check_label_names(source_template: str, target_template: str, label_names: tuple[str, ...]) -> None:
    """data.label_names is read only through {label_name}: set without it, the run would train on the raw
    class indices of data.label_column (digits) while the label words go unused. (A template that uses
    {label_name} without label_names is checked against the data's columns, which may hold a `label_name`.)"""
    if not label_names:
        return
    templates = {"source_template": source_template, "target_template": target_template}
    if any("label_name" in template_fields(t, f"data.{k}") for k, t in templates.items()):
        return
    raise ConfigError(
        f"data.label_names: set to {list(label_names)}, but neither data.source_template ({source_template!r}) "
        f"nor data.target_template ({target_template!r}) uses {{label_name}}, so the label words would go unused "
        "(and a template over the label column trains on its class indices); write {label_name} where the word "
        "belongs (e.g. data.target_template: ' {label_name}'), or drop data.label_names"
    )
