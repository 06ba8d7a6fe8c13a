"""softprompt: soft-prompt tuning for Hugging Face models.

    from softprompt import SoftPromptModel, load_config, train
    result = train(load_config("recipes/debug/tiny-causal.yaml", overrides=["train.max_steps=20"]))
    model = SoftPromptModel.from_adapter(result.adapter_dir)
    model.generate(["apple ="], max_new_tokens=4)
"""

__version__ = "0.1.0"

import logging  # noqa: E402

# bitsandbytes (which peft imports when it is installed) logs at import that its optional CPU kernel package is
# missing and it uses the built-in one: correct, slower, and not something a softprompt user can act on
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from softprompt.config import Config, load_config  # noqa: E402
from softprompt.errors import ConfigError, SoftPromptError  # noqa: E402
from softprompt.loading import ModelConfig  # noqa: E402
from softprompt.model import SoftPromptModel  # noqa: E402
from softprompt.predict import classify_texts  # noqa: E402
from softprompt.train import RunResult, train  # noqa: E402

__all__ = ["Config", "ConfigError", "ModelConfig", "RunResult", "SoftPromptError", "SoftPromptModel", "classify_texts",
           "load_config", "train"]
