"""The llmcompressor side of `compress.py`, run as `python -m softprompt.compress_llmc SPEC.json` in an
environment that has llmcompressor (it pins an older transformers than softprompt's tested range, so it lives
apart: `bash scripts/setup.sh compress`). Nothing else in softprompt imports this module.

SPEC holds the source model dir, the output dir, the `CompressConfig` fields and the calibration windows
(token ids, cut by the caller so both environments see the same tokens). It writes a plain checkpoint:
the one-shot modifiers leave fake-quantized weights (already on the int grid) plus scale and zero-point
tensors and hooks; only the weights, under the source's own names, go into a fresh copy of the source
model, which is saved as ordinary dense safetensors that any transformers reloads. The last stdout line is
a JSON object of the library versions it ran with.
"""

from __future__ import annotations

import json
import re
import sys

import torch


def recipe(method: str, cfg: dict, stage: str):
    """The llmcompressor modifiers for one pass. The joint method runs SparseGPT, then GPTQ (two passes)."""
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.quantization import GPTQModifier

    # llmcompressor 0.14's SparseGPT matches a bare "lm_head" (or a regex ending at the module name) against
    # nothing, so it prunes a tied LM head and with it the input embeddings; a regex that also allows a
    # parameter suffix matches what we mean for every modifier (compress.py checks the result)
    ignore = [f"re:(.*\\.)?{re.escape(name)}(\\..*)?$" for name in cfg["ignore"]]
    if stage == "prune":
        mask = "2:4" if cfg["structure"] == "2:4" else "0:0"  # llmcompressor's name for unstructured
        pruner = WandaPruningModifier if method == "wanda" else SparseGPTModifier
        return [pruner(sparsity=cfg["sparsity"], mask_structure=mask, targets=["Linear"], ignore=ignore)]
    group = cfg["group_size"]
    weights = {"num_bits": cfg["bits"], "type": "int", "symmetric": True,
               "strategy": "group" if group else "channel", "group_size": group}
    return [GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=ignore)]


def main(spec_path: str) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(open(spec_path).read())
    cfg, method = spec["config"], spec["config"]["method"]
    torch.manual_seed(cfg["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["source"])
    names = list(model.state_dict())  # the source's own tensor names: all the saved checkpoint holds
    windows = spec["calibration"]
    data = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
    stages = {"wanda": ["prune"], "sparsegpt": ["prune"], "gptq": ["quantize"], "sparsegpt+gptq": ["prune", "quantize"]}
    masks = {}
    for stage in stages[method]:
        if stage == "quantize" and "prune" in stages[method]:  # the zeros SparseGPT chose
            masks = {n: p.detach() == 0 for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 2}
        oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe(method, cfg, stage),
                max_seq_length=max(len(w) for w in windows), num_calibration_samples=len(windows))
    state = model.state_dict()
    with torch.no_grad():
        for name, mask in masks.items():
            # GPTQ's error feedback writes into pruned weights; zero is a level of its symmetric grid, so
            # zeroing them again keeps both the sparsity and the bit width (SparseGPT's joint mode does the same)
            state[name].masked_fill_(mask, 0.0)
    clean = AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.float32)
    clean.load_state_dict({n: state[n] for n in names})
    clean.save_pretrained(spec["out"])
    from importlib.metadata import version

    print(json.dumps({name: version(name) for name in ("llmcompressor", "compressed-tensors", "transformers", "torch")}))


if __name__ == "__main__":
    main(sys.argv[1])
