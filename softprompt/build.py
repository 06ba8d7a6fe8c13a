"""From a config to its components: the objective, the model (base + prompt source + head) and the
optimizer's parameter groups. The registry says which file builds each; nothing here names a method."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from softprompt.config import Config, flat
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
    only, so the global RNG (dropout, data order) is the same whichever components are built. With
    `prompt.init: file` naming an adapter dir (ours, PEFT's, the official DePT code's), the components start
    from that adapter's trained state instead: training continues from it."""
    objective = build_objective(cfg)
    objective.check_model(kind, cfg.head is not None, cfg.model.name_or_path)
    table = base.get_input_embeddings().weight  # (V, d)
    seed = cfg.prompt.seed if cfg.prompt.seed is not None else cfg.train.seed
    start = cfg.prompt.init_file if cfg.prompt.init == "file" and Path(cfg.prompt.init_file).is_dir() else None
    # an adapter dir replaces every row below, so the rows are first drawn as for the default init
    pcfg = replace(cfg.prompt, init="vocab", init_file=None) if start else cfg.prompt
    source = PROMPTS[cfg.prompt.type].build(pcfg, table, tokenizer, kind, cfg.train.seed)
    head = HEADS[cfg.head.type].build(cfg.head, table.shape[1], seed + 1, kind) if cfg.head is not None else None
    selector = SELECTORS[cfg.selector.type].build(cfg.selector, source, table) if cfg.selector is not None else None
    model = SoftPromptModel(base, source, tokenizer, kind, cfg.model, execution=cfg.prompt.execution, head=head,
                            selector=selector)
    if start:
        continue_from(model, start)
    return model


def continue_from(model: SoftPromptModel, adapter_dir: str) -> None:
    """Load an adapter's trained components into `model`'s, checked against the base first. Each must be built
    as the adapter's was (the same `describe()`: type, sizes, and settings such as DePT's alpha and indexing,
    which would change what the same tensors compute). An adapter's head (or selector) the model has no place
    for is refused, not dropped; a model's head the adapter lacks starts fresh."""
    from softprompt import adapter
    from softprompt.errors import SoftPromptError

    where = f"prompt.init_file: {adapter_dir!r}"
    try:
        saved = adapter.read(adapter_dir)
    except SoftPromptError as e:
        raise SoftPromptError(f"prompt.init_file: {e}") from None
    adapter.check_base(saved, model.base, repr(adapter_dir))
    pairs = [("prompt", saved.source, model.prompt), ("head", saved.head, model.head),
             ("selector", saved.selector, model.selector)]
    for name, theirs, ours in pairs:
        if theirs is None:
            continue
        described = theirs.describe()
        if ours is None:
            raise SoftPromptError(f"{where} holds a {described.get('type')} {name} and the recipe builds none; add a "
                                  f"{name} section like the adapter's ({described})")
        mine = ours.describe()
        if mine != described:
            theirs_flat, mine_flat = flat(described), flat(mine)
            differ = {k: (theirs_flat.get(k), mine_flat.get(k)) for k in sorted(theirs_flat.keys() | mine_flat.keys())
                      if theirs_flat.get(k) != mine_flat.get(k)}
            raise SoftPromptError(f"{where}: its {name} was built otherwise than the recipe's (adapter vs recipe: "
                                  f"{differ}); set the recipe's {name} section to the adapter's")
        ours.load_state_dict(theirs.state_dict())


def param_groups(cfg: Config, model: SoftPromptModel) -> list[dict]:
    """Optimizer groups from the components (prompt LR, a DePT offset's LR, a head's LR)."""
    groups = PROMPTS[cfg.prompt.type].param_groups(model.prompt, cfg.prompt, cfg.optim)
    if model.head is not None:
        groups += HEADS[cfg.head.type].param_groups(model.head, cfg.head, cfg.optim)
    return groups
