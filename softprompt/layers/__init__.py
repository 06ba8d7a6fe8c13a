"""The shared prompt-embedding layer, its initialisations, and the registry of token offsets.

`OFFSETS` maps an offset's `describe()["type"]` to its class, so a saved adapter rebuilds the offset
module (e.g. DePT's low-rank update) from its sidecar without knowing the method.
"""

from softprompt.layers.dept import DeptOffset
from softprompt.layers.prompt_embedding import PromptEmbedding, TokenOffset, apply_offset

OFFSETS: dict[str, type] = {
    "dept": DeptOffset,
}

__all__ = ["OFFSETS", "DeptOffset", "PromptEmbedding", "TokenOffset", "apply_offset"]
