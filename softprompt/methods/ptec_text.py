"""PTEC's text-to-text baseline: Buchner, Cao, Kalo, von Ehrenheim, "Prompt Tuned Embedding Classification
for Industry Sector Allocation", NAACL 2024 Industry, https://aclanthology.org/2024.naacl-industry.10/
(code: EQTPartners/PTEC, `--head lh`; research/methods.md §3.3-3.4).

Plain prompt tuning whose target is the row's labels joined by "; " (by training frequency) then EOS, with
inverse-frequency row weights and trie-constrained decoding (objectives/label_text.py). No head: the base's
LM head writes the labels. The PTEC classifier itself is method ptec.
"""

from softprompt.methods import Preset

# the official code initialises this prompt from the label names too (`--prompt_init labels`, its default)
PRESET = Preset(prompt="plain", objective="label_text", prompt_init="label_names")
