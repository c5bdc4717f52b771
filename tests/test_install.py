"""The installed environment: dependency pins agree, every public module imports, the CLI answers."""
import importlib
import pkgutil
import subprocess
import sys

import pytest

import rasa_gpt3


def test_pip_check_passes_beside_rasa():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_openai_sdk_imports_and_has_fine_tuning():
    import openai

    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    assert hasattr(client.fine_tuning, "jobs")
    assert issubclass(openai.RateLimitError, openai.APIStatusError)


def _public_modules():
    for module in pkgutil.walk_packages(rasa_gpt3.__path__, prefix="rasa_gpt3."):
        if not any(part.startswith("_") for part in module.name.split(".")[1:]):
            yield module.name


@pytest.mark.parametrize("name", sorted(_public_modules()))
def test_every_public_module_imports(name):
    importlib.import_module(name)


def test_cli_help_lists_every_verb():
    result = subprocess.run([sys.executable, "-m", "rasa_gpt3.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for verb in ("export", "validate", "fine-tune", "follow", "status", "cancel", "list", "results", "models",
                 "evaluate", "local"):
        assert verb in result.stdout
