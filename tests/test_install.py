"""The installed environment: dependency pins agree, every public module imports, the CLI answers."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

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
    for verb in (
        "export",
        "validate",
        "fine-tune",
        "follow",
        "status",
        "cancel",
        "list",
        "results",
        "models",
        "evaluate",
        "local",
    ):
        assert verb in result.stdout


def _lora_requirements():
    import tomli
    from packaging.requirements import Requirement

    with open(Path(rasa_gpt3.__file__).resolve().parents[1] / "pyproject.toml", "rb") as handle:
        extras = tomli.load(handle)["project"]["optional-dependencies"]
    return [Requirement(line) for line in extras["lora"]]


def test_lora_extra_is_installed_at_its_pins():
    from rasa_gpt3.local.lora import INSTALL_HINT, is_installed

    if not is_installed():
        pytest.skip(f"the lora extra is not installed ({INSTALL_HINT})")
    from importlib.metadata import version

    requirements = _lora_requirements()
    assert {r.name for r in requirements} >= {"torch", "transformers", "peft", "safetensors"}
    for requirement in requirements:
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), (
            requirement,
            version(requirement.name),
        )


def test_lora_libraries_work_in_one_process_with_rasa_and_tensorflow():
    from rasa_gpt3.local.lora import INSTALL_HINT, is_installed

    if not is_installed():
        pytest.skip(f"the lora extra is not installed ({INSTALL_HINT})")
    script = (
        "import rasa, tensorflow as tf\n"
        "from rasa.nlu.classifiers.diet_classifier import DIETClassifier\n"
        "import torch, transformers, peft\n"
        "from peft import LoraConfig\n"
        "print(int(tf.reduce_sum(tf.ones([3, 3]))), int(torch.ones(3, 3).sum()), rasa.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["9", "9", "3.6.21"]
