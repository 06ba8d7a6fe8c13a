"""Every component and method, registered here and nowhere else (DESIGN.md §5, §8.1).

Four kinds of component, each a file with its frozen config and paper link:
- PROMPTS: how the virtual rows are produced (layers/): plain, DePT, a bank;
- OBJECTIVES: what they are trained for (objectives/): text-to-text LM, classification, label lists as text,
  recovery of a compressed model (LM on blocks, distillation);
- HEADS: a trainable module on aligned hidden states (heads.py: linear; score_head.py: transformers' own `score`);
- SELECTORS: which prompt of a bank each row takes (selectors/): attention (IDP), learned keys, oracle;
- the base loader is `loading.load_base`, whose `ModelConfig` records quantization and placement.
A method (METHODS) is a preset naming one of each. Adding a method is a file plus a line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from softprompt import heads, score_head
from softprompt.errors import ConfigError
from softprompt.layers import bank, dept, plain
from softprompt.methods import Preset
from softprompt.methods import dept as dept_method
from softprompt.methods import idp
from softprompt.methods import prompt_tuning
from softprompt.methods import ptec
from softprompt.methods import ptec_text
from softprompt.methods import recovery
from softprompt.objectives import classify, label_data, label_text, lm, recover
from softprompt.selectors import attention, key, oracle
from softprompt.selectors import check as selector_check


@dataclass(frozen=True)
class Component:
    config_class: type  # the frozen dataclass its config section builds
    # prompts: (cfg, table, tokenizer, kind, seed); objectives: (cfg); heads: (cfg, dim, seed, kind);
    # selectors: (cfg, prompt source, table)
    build: Callable
    param_groups: Callable | None = None  # (module, cfg, optim config) -> optimizer groups
    restore: Callable | None = None  # (describe() dict, state dict) -> module, for adapters
    check: Callable | None = None  # (cfg, full Config) -> None: cross-section checks before anything loads
    # (full Config, train rows loader) -> full Config: settings read from the data before the model is
    # built, e.g. label names a recipe left out; train records the completed config
    complete: Callable | None = None


PROMPTS: dict[str, Component] = {
    "plain": Component(plain.PromptConfig, plain.build, plain.param_groups, plain.restore),
    "dept": Component(dept.DeptConfig, dept.build, dept.param_groups, dept.restore, dept.check),
    "bank": Component(bank.BankConfig, bank.build, bank.param_groups, bank.restore, bank.check),
}

OBJECTIVES: dict[str, Component] = {
    "lm": Component(lm.LMConfig, lm.build),
    "classify": Component(classify.ClassifyConfig, classify.build, check=classify.check, complete=label_data.complete),
    "label_text": Component(label_text.LabelTextConfig, label_text.build, check=label_text.check,
                            complete=label_data.complete),
    "recover": Component(recover.RecoverConfig, recover.build, check=recover.check, complete=recover.complete),
}

HEADS: dict[str, Component] = {
    "linear": Component(heads.HeadConfig, heads.build, heads.param_groups, heads.restore),
    "score": Component(score_head.ScoreConfig, score_head.build, heads.param_groups, score_head.restore),
}

SELECTORS: dict[str, Component] = {
    "attention": Component(attention.AttentionConfig, attention.build, restore=attention.restore, check=selector_check),
    "key": Component(key.KeyConfig, key.build, restore=key.restore, check=selector_check),
    "oracle": Component(oracle.OracleConfig, oracle.build, restore=oracle.restore, check=selector_check),
}

METHODS: dict[str, Preset] = {
    "prompt_tuning": prompt_tuning.PRESET,
    "dept": dept_method.PRESET,
    "ptec": ptec.PRESET,
    "ptec_text": ptec_text.PRESET,
    "recovery": recovery.PRESET,
    "idp": idp.PRESET,
}


def lookup(table: dict, name: str, where: str):
    """table[name], or a ConfigError naming `where` and the registered names."""
    if name not in table:
        raise ConfigError(f"{where}: unknown {where.split('.')[0]} {name!r}; choose one of {sorted(table)}")
    return table[name]
