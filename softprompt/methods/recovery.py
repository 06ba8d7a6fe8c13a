"""Compress-then-Prompt: Xu, Liu, Chen, Tang, Wang, Zhou, Hu, Shrivastava, "Compress, Then Prompt: Improving
Accuracy-Efficiency Trade-off of LLM Inference with Transferable Prompt" (2023), ICML 2024 as "Soft Prompt
Recovers Compressed LLMs, Transferably", https://arxiv.org/abs/2305.11186 (code: zirui-ray-liu/compress-then-prompt).

A plain prompt on a frozen compressed base (`softprompt compress`, or bitsandbytes at load time), trained on
generic text in blocks with the LM loss and/or distillation from the dense model (objectives/recover.py);
`softprompt perplexity` compares dense, compressed and compressed + prompt and writes the transfer matrix.
Deviation: the paper initialises from the first n vocabulary rows (ids 0..n-1, special and byte tokens in
LLaMA); this preset keeps the plain prompt's default init (frequent-vocabulary rows), recorded in the run.
"""

from softprompt.methods import Preset

PRESET = Preset(prompt="plain", objective="recover")
