"""From a config to its components: the objective, the model (base + prompt source + head) and the
optimizer's parameter groups. The registry says which file builds each; nothing here names a method."""

from __future__ import annotations

from softprompt.config import Config
from softprompt.model import SoftPromptModel
from softprompt.registry import HEADS, OBJECTIVES, PROMPTS, SELECTORS


def complete_config(cfg: Config) -> Config:
    """`cfg` with what its objective reads from the train split (label names a recipe left out); as is
    when there is nothing to read. Runs before the model is built, whose head size can depend on it."""
    from softprompt.data import load_splits

    complete = OBJECTIVES[cfg.objective.type].complete
    return cfg if complete is None else complete(cfg, lambda: load_splits(cfg.data)["train"])


def build_objective(cfg: Config):
    """The objective, built before any model loads (its metric names check train.metric)."""
    return OBJECTIVES[cfg.objective.type].build(cfg.objective)


def build_model(cfg: Config, base, tokenizer, kind: str) -> SoftPromptModel:
    """The frozen `base` with a fresh prompt source, head and selector per `cfg`. Draws from seeded generators
    only, so the global RNG (dropout, data order) is the same whichever components are built."""
    objective = build_objective(cfg)
    objective.check_model(kind, cfg.head is not None, cfg.model.name_or_path)
    table = base.get_input_embeddings().weight  # (V, d)
    seed = cfg.prompt.seed if cfg.prompt.seed is not None else cfg.train.seed
    source = PROMPTS[cfg.prompt.type].build(cfg.prompt, table, tokenizer, kind, cfg.train.seed)
    head = HEADS[cfg.head.type].build(cfg.head, table.shape[1], seed + 1, kind) if cfg.head is not None else None
    selector = SELECTORS[cfg.selector.type].build(cfg.selector, source, table) if cfg.selector is not None else None
    return SoftPromptModel(base, source, tokenizer, kind, cfg.model, execution=cfg.prompt.execution, head=head,
                           selector=selector)


def param_groups(cfg: Config, model: SoftPromptModel) -> list[dict]:
    """Optimizer groups from the components (prompt LR, a DePT offset's LR, a head's LR)."""
    groups = PROMPTS[cfg.prompt.type].param_groups(model.prompt, cfg.prompt, cfg.optim)
    if model.head is not None:
        groups += HEADS[cfg.head.type].param_groups(model.head, cfg.head, cfg.optim)
    return groups
