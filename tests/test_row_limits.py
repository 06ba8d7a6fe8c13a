"""data.max_train_samples / max_eval_samples mean the same rows for every registered objective: encoding a
split under a limit equals encoding its first N rows with no limit (the recover objective once ignored both,
silently). The table must name every objective, so a new one cannot skip the check."""

import dataclasses

import pytest
from datasets import Dataset

from softprompt import registry
from softprompt.config import load_config

WORDS = "the farmer saw a blick and a dax near the gate before dawn".split()

# objective -> (its config's fields, one row per i)
CASES = {
    "lm": ({}, lambda i: {"source": f"{WORDS[i % 12]} {WORDS[(i + 3) % 12]} =", "target": f" {WORDS[(i + 5) % 12]}"}),
    "classify": ({"labels": ("red", "blue")},
                 lambda i: {"source": " ".join(WORDS[i % 12:i % 12 + 3]), "red": i % 2, "blue": 1 - i % 2}),
    "label_text": ({"labels": ("red", "blue")},
                   lambda i: {"source": " ".join(WORDS[i % 12:i % 12 + 3]), "red": 1, "blue": i % 2}),
    "recover": ({"block_size": 8}, lambda i: {"text": " ".join(WORDS[i % 12:] + WORDS[:i % 12])}),
}


def test_the_table_names_every_objective():
    assert set(CASES) == set(registry.OBJECTIVES)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("split, field", [("train", "max_train_samples"), ("validation", "max_eval_samples")])
def test_a_row_limit_encodes_the_first_rows(name, split, field, tokenizer):
    fields, row = CASES[name]
    component = registry.OBJECTIVES[name]
    objective = component.build(component.config_class(**fields))
    data = load_config(None, []).data
    rows = Dataset.from_list([row(i) for i in range(40)])
    whole = objective.encode(rows, tokenizer, data, "causal", split)
    limited = objective.encode(rows, tokenizer, dataclasses.replace(data, **{field: 7}), "causal", split)
    first = objective.encode(rows.select(range(7)), tokenizer, data, "causal", split)
    assert limited == first and len(limited) < len(whole)
