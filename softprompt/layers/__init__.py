"""Prompt sources (plain, DePT, bank), the fused kernel and the inits. Each source file holds its
config, `build`, `param_groups` and `restore`; `softprompt/registry.py` registers them."""

from softprompt.layers.bank import PromptBank
from softprompt.layers.dept import DeptOffset
from softprompt.layers.prompt_embedding import PromptEmbedding, TokenOffset, apply_offset
from softprompt.layers.source import PromptSource

__all__ = ["DeptOffset", "PromptBank", "PromptEmbedding", "PromptSource", "TokenOffset",
           "apply_offset"]
