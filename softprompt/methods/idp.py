"""IDP, inference-time dynamic prompting: Hoang, Cho, Merth, Rastegari, Wang, "(Dynamic) Prompting might be all
you need to repair Compressed LLMs" (2023), https://arxiv.org/abs/2310.00867 (research/methods.md §5).

A bank of K short prompts on a frozen (compressed) model, trained on generic text in blocks like
Compress-then-Prompt (objectives/recover.py); per input, the prompt the input attends to most is the one
that runs (selectors/attention.py). The paper publishes no code and no training procedure; ours trains the
bank jointly through the one loop with the same hard selection in the loop as at inference (no gradient
through the choice), so each prompt trains on the rows that pick it. `selector.train_with: oracle`
assigns training rows to the prompt that already fits them best instead (a hard EM), and
`selector.type: key` trades the attention pass for learned keys (one prompt per data cluster).
"""

from softprompt.methods import Preset

PRESET = Preset(prompt="bank", objective="recover", selector="attention")
