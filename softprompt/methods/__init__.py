"""Methods: named presets over the components (DESIGN.md §5). One file each, with its paper link and
anything specific to it (DePT's budget table, its official-adapter import); registry.py lists them.

A preset fills the config's `prompt.type` and `objective.type` (and a head where the method has one),
and the method's own default prompt init if it has one (PTEC's label names), so "PTEC with a DePT
prompt" is a recipe, not a new method.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    prompt: str  # a key of registry.PROMPTS
    objective: str  # a key of registry.OBJECTIVES
    head: str | None = None  # a key of registry.HEADS, or None: the base's own head
    prompt_init: str | None = None  # the method's prompt.init where the recipe sets none (None: the prompt's own)
    selector: str | None = None  # a key of registry.SELECTORS (a bank's per-row choice), or None
