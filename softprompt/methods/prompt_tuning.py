"""Prompt tuning: Lester, Al-Rfou, Constant 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning", https://arxiv.org/abs/2104.08691.

What is trained: one prompt matrix P (p x d) put before the embedded input of a frozen LM; nothing
else (layers/plain.py). Every task is text-to-text: token cross-entropy on the target tokens only
(objectives/lm.py); seq2seq models carry the prompt on the encoder only (Lester et al. §4).
"""

from softprompt.methods import Preset

PRESET = Preset(prompt="plain", objective="lm")
