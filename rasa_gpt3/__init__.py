"""rasa_gpt3: fine-tuned GPT models inside a Rasa bot.

config.yml names the components as `rasa_gpt3.GPT3IntentClassifier` and `rasa_gpt3.GPT3EntityExtractor`;
they are imported on first access so that the CLI starts without loading Rasa.
"""

import sys
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GPT3IntentClassifier": "rasa_gpt3.nlu.intent_classifier",
    "GPT3EntityExtractor": "rasa_gpt3.nlu.entity_extractor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rasa_gpt3' has no attribute '{name}'")


# Inside Rasa core (`rasa run` loading a model with these components), bound Rasa 3.6's NLU HTTP interpreter: a
# timeout, the token where Rasa's server reads it, the fallback intent on errors (rasa_gpt3/nlu_server/interpreter.py).
# Only when Rasa core is already loaded, so the CLI and the action server stay free of Rasa imports.
if "rasa.core.http_interpreter" in sys.modules:
    from rasa_gpt3.nlu_server.interpreter import install as _install_bounded_nlu_interpreter

    _install_bounded_nlu_interpreter()
