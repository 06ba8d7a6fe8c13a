"""PTEC: Buchner, Cao, Kalo, von Ehrenheim, "Prompt Tuned Embedding Classification for Industry Sector
Allocation", NAACL 2024 Industry, https://aclanthology.org/2024.naacl-industry.10/ (code: EQTPartners/PTEC).

A soft prompt and a linear head on the last real token's hidden state, trained jointly at two learning
rates (optim.lr for the prompt, head.lr for the head) with inverse-frequency weighted BCE
(objectives/classify.py); the LM head never runs. Any prompt source works: `prompt.type: dept` gives
PTEC with a DePT prompt.
"""

from softprompt.methods import Preset

# PTEC's default init is the label names (`--prompt_init labels` in the official code); they come from
# objective.labels unless prompt.init_labels says otherwise
PRESET = Preset(prompt="plain", objective="classify", head="linear", prompt_init="label_names")
