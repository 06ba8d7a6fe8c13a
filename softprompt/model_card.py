"""The model card (README.md) every adapter dir carries: what it is, what trained it, how well it did, and
how to load and serve it, written from the sidecar that `adapter.save` has just assembled (so the card never
says what the files do not). The YAML header is the Hugging Face hub's model-card metadata.

Nothing secret reaches it: the card shows the run's config, and configs hold no tokens or keys (a wandb key
or hub token lives in the environment, never in a recipe).
"""

from __future__ import annotations

import json

import yaml

# PEFT's auto class per model kind (it loads the base that adapter_config.json names)
PEFT_AUTO = {"causal": "AutoPeftModelForCausalLM", "seq2seq": "AutoPeftModelForSeq2SeqLM",
             "encoder": "AutoPeftModelForFeatureExtraction"}

# what each prompt source is, in a sentence for the card
SOURCES = {
    "plain": "a soft prompt (Lester et al. 2021): {p} trainable rows prepended to the input embeddings",
    "dept": "a DePT prompt (Shi & Lipani 2024): {p} trainable rows plus a low-rank offset added to the input token "
            "embeddings",
    "bank": "a bank of {k} soft prompts of {p} rows; each input runs with one of them",
}


def render(sidecar: dict, files: list[str], trainable: int) -> str:
    """README.md for an adapter dir holding `files`, described by `sidecar` (adapter.py's softprompt.json)."""
    prompt, base = sidecar.get("prompt") or {}, sidecar.get("base_model") or "(not recorded)"
    has_peft = "adapter_config.json" in files
    header = {"library_name": "peft" if has_peft else "softprompt", "base_model": base,
              "tags": ["softprompt", "prompt-tuning", *([f"method:{sidecar['method']}"] if sidecar.get("method") else [])]}
    what = SOURCES.get(prompt.get("type"), "a prompt source of type {t}").format(
        p=sidecar.get("num_virtual_tokens"), k=prompt.get("num_prompts"), t=prompt.get("type"))
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {sidecar.get('method') or prompt.get('type', 'soft prompt')} adapter for `{base}`", "",
             f"Trained with softprompt: {what}, on the frozen {sidecar.get('kind', '')} model "
             f"`{base}`. Trainable parameters: {trainable:,}.", ""]
    if prompt.get("type") == "bank" and prompt.get("entry") == "dept":
        lines += ["Each member of the bank carries its own DePT token offset.", ""]
    if sidecar.get("selector"):
        lines += [f"Each input's prompt is chosen by the `{sidecar['selector']['type']}` selector "
                  f"({json.dumps(sidecar['selector'])}).", ""]
    if sidecar.get("head"):
        lines += [f"A trainable head sits on the model's hidden states: {json.dumps(sidecar['head'])}.", ""]
    if sidecar.get("compression"):
        c = sidecar["compression"]
        lines += [f"The base is a compressed model ({c.get('method')}, {json.dumps(c.get('config'))}), made by "
                  f"`softprompt compress` from `{(c.get('source') or {}).get('name_or_path')}`; the adapter is refused "
                  "on any other weights.", ""]
    lines += _training(sidecar) + _metrics(sidecar.get("metrics") or {}) + _loading(sidecar, files, has_peft)
    return "\n".join(lines).rstrip() + "\n"


def _training(sidecar: dict) -> list[str]:
    config = sidecar.get("config")
    if not isinstance(config, dict):
        return []
    data = config.get("data") or {}
    lines = ["## Training", "", f"- Data: `{data.get('path')}` (train split `{data.get('train_split')}`, eval split "
             f"`{data.get('eval_split')}`).",
             f"- Steps: {sidecar.get('steps')}; the adapter is step {sidecar.get('source_step')}'s "
             f"({sidecar.get('chosen_by') or 'as trained'})."]
    lines += ["", "<details><summary>The full training config</summary>", "", "```yaml",
              yaml.safe_dump(config, sort_keys=False).strip(), "```", "</details>", ""]
    return lines


def _metrics(metrics: dict) -> list[str]:
    if not metrics:
        return []
    rows = [f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items()) if isinstance(value, (int, float))]
    return ["## Metrics", "", "| metric | value |", "|---|---:|", *rows, ""]


def _loading(sidecar: dict, files: list[str], has_peft: bool) -> list[str]:
    lines = ["## Use it", "", "With softprompt (every part of the adapter, base included):", "", "```python",
             "from softprompt import SoftPromptModel", "",
             'model = SoftPromptModel.from_adapter("PATH_TO_THIS_DIR")', "```", ""]
    if has_peft:
        ignored = sidecar.get("peft_ignores") or []
        caveat = (" Stock PEFT ignores " + "; ".join(ignored) + ": `softprompt.json` and `softprompt_extra.safetensors` "
                  "hold them, so its outputs differ from the trained adapter's.") if ignored else ""
        if sidecar.get("peft_head"):  # a head in transformers' own layout: PEFT loads it through modules_to_save
            auto, extra = "AutoPeftModelForSequenceClassification", f", num_labels={sidecar['head'].get('num_outputs')}"
            caveat = (f" The head is the base's own `{sidecar['peft_head']}` (PEFT's `modules_to_save`); the base loads "
                      "as a sequence classifier with the adapter's label count." + caveat)
        else:
            auto, extra = PEFT_AUTO.get(sidecar.get("kind"), "AutoPeftModel"), ""
        lines += [f"With PEFT (`adapter_config.json` is a `PROMPT_TUNING` adapter; it names the base).{caveat}", "",
                  "```python", f"from peft import {auto}", "",
                  f'model = {auto}.from_pretrained("PATH_TO_THIS_DIR"{extra})', "```", ""]
    elif any(f.startswith("members/") for f in files):
        lines += ["PEFT holds one prompt, not a bank: `members/prompt_KK/` are PEFT adapters of each member, each a "
                  "fixed prompt for every input.", ""]
    else:
        lines += ["PEFT has no form for this adapter: load it with softprompt.", ""]
    if any(f.startswith("serving/") for f in files):
        lines += ["Serving: `serving/` holds the prompt in the base's dtype and `serving_meta.json` with the recipe "
                  "for engines that take prompt embeddings (vLLM `prompt_embeds`).", ""]
    return lines
