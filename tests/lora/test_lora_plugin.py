"""The whole plugin on an open-weights model: `rasa-gpt3 fine-tune --base-model DIR`, `rasa test nlu` with
GPT3IntentClassifier, `rasa-gpt3 models export`, and the fallback action generating with a LoRA response model.

The base model is the tiny random stand-in (tests/lora/conftest.py), so accuracy is about the plumbing, not about
what a pretrained model would reach. One training run per task, shared by the module.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from tests.actions.trackers import fallback_tracker
from tests.conftest import FINANCIAL_DEMO
from tests.nlu.pipeline_checks import make_workspace, must, rasa_env, run_rasa

# the module's fixture trains two adapters (about three minutes on two idle cores): more than the default budget
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# what makes the tiny random model learn financial-demo's intents in a few minutes on two cores. LoRA on its
# embeddings too (`--lora target_modules=...`): with the default all-linear targets, four random models (seeds 0-3)
# reached 0.51-0.61 held out (mean 0.57, 3x the majority share is 0.57); with embed_tokens added, 0.60-0.64 (mean 0.62)
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,embed_tokens"
INTENT_OPTIONS = [
    *("--epochs", "30", "--batch-size", "16", "--learning-rate-multiplier", "25"),
    *("--lora", f"target_modules={LORA_TARGETS}"),
]
# the response model only has to generate (real text from the language model), not to be good
RESPONSE_OPTIONS = ["--epochs", "1", "--batch-size", "16", "--learning-rate-multiplier", "25"]


def _cli(args: List[str], cwd: Path, env: Dict[str, str], timeout: float = 2400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rasa_gpt3.cli", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _split(project: Path):
    """Rasa's stratified 80/20 split: data/nlu keeps the 80 % (what fine-tune exports), test.yml the 20 %."""
    from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLWriter
    from rasa.shared.nlu.training_data.loading import load_data

    train, test = load_data(str(project / "data" / "nlu")).train_test_split(train_frac=0.8, random_seed=42)
    for path in (project / "data" / "nlu").iterdir():
        path.unlink()
    RasaYAMLWriter().dump(project / "data" / "nlu" / "train.yml", train)
    RasaYAMLWriter().dump(project / "test.yml", test)
    return train, test


@pytest.fixture(scope="module")
def lora_bot(tmp_path_factory, tiny_base):
    """financial-demo (NLU split 80/20) with a LoRA intent model and a LoRA response model on the tiny base."""
    workspace = make_workspace(tmp_path_factory.mktemp("lora-bot"), FINANCIAL_DEMO)
    train, test = _split(workspace.project)
    env = {**rasa_env(workspace.state_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("OPENAI_API_KEY")  # the local backend
    models = {}
    for task, options in (("intent", INTENT_OPTIONS), ("response", RESPONSE_OPTIONS)):
        process = _cli(
            ["fine-tune", "--project", ".", "--task", task, "--base-model", str(tiny_base.path), *options],
            workspace.project,
            env,
        )
        assert process.returncode == 0, process.stdout + process.stderr[-3000:]
        assert "local, no price" in process.stderr  # the cost estimate of an open-weights model
        models[task] = re.search(rf"^{task}: (ft:\S+) \(trained", process.stdout, re.M).group(1)
    workspace.models.update(models)
    return workspace, env, train, test


def test_fine_tune_records_the_lora_models_in_the_registry(lora_bot, tiny_base):
    workspace, _, _, _ = lora_bot
    registry = yaml.safe_load((workspace.project / "gpt3_models.yml").read_text())
    text = json.dumps(registry)
    for task in ("intent", "response"):
        assert workspace.models[task].startswith(f"ft:{tiny_base.path.name}:local:")
        assert workspace.models[task] in text
    assert str(tiny_base.path) in text  # the base model the registry names is the directory


def test_gpt3_intent_classifier_on_the_lora_model_through_rasa_test_nlu(lora_bot, tiny_base):
    workspace, env, train, test = lora_bot
    config = {
        "recipe": "default.v1",
        "language": "en",
        "pipeline": [
            {"name": "WhitespaceTokenizer"},
            {
                "name": "rasa_gpt3.GPT3IntentClassifier",
                "model": workspace.models["intent"],
                "base_model": str(tiny_base.path),
                "timeout": 30.0,
            },
        ],
        "assistant_id": "lora-test",
    }
    (workspace.project / "config.lora.yml").write_text(yaml.safe_dump(config))
    out = workspace.project / "models"
    must(
        run_rasa(
            ["train", "nlu", "--nlu", "data/nlu", "--config", "config.lora.yml", "--out", str(out)],
            workspace.project,
            env,
        )
    )
    (archive,) = out.glob("*.tar.gz")
    results = workspace.project / "results"
    must(
        run_rasa(
            ["test", "nlu", "--model", str(archive), "--nlu", "test.yml", "--out", str(results), "--no-plot"],
            workspace.project,
            env,
        )
    )
    report = json.loads((results / "intent_report.json").read_text())
    counts = Counter(example.get("intent") for example in test.intent_examples)
    majority = max(counts.values()) / sum(counts.values())
    print(f"held-out accuracy {report['accuracy']:.3f}, majority-class share {majority:.3f} ({len(counts)} intents)")
    assert report["macro avg"]["support"] == len(test.intent_examples)
    assert report["accuracy"] >= 3 * majority, (report["accuracy"], majority)


def test_models_export_writes_the_adapter_and_says_how_to_serve_it(lora_bot, tiny_base, tmp_path):
    workspace, env, _, _ = lora_bot
    model, out = workspace.models["intent"], tmp_path / "adapter"
    process = _cli(["models", "export", model, "--out", str(out)], workspace.project, env)
    assert process.returncode == 0, process.stderr
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.path) and config["r"] == 16
    assert sorted(config["target_modules"]) == sorted(LORA_TARGETS.split(","))  # fine-tune's --lora reached the job
    assert (out / "adapter_model.safetensors").stat().st_size > 10_000
    assert f"vllm serve {tiny_base.path} --enable-lora --lora-modules {model}={out} --max-logprobs 20" in process.stdout
    assert "OPENAI_BASE_URL=http://127.0.0.1:8000/v1" in process.stdout and f"model: {model}" in process.stdout

    from safetensors.numpy import load_file

    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_A" in name for name in tensors) and any("lora_B" in name for name in tensors)

    # the stand-in's models have no adapter: fine-tune one (seconds) on the same project
    standin = _cli(["fine-tune", "--project", ".", "--task", "intent", "--epochs", "1"], workspace.project, env)
    assert standin.returncode == 0, standin.stderr[-2000:]
    standin_model = re.search(r"^intent: (ft:\S+)", standin.stdout, re.M).group(1)
    for args, message in (
        (
            ["models", "export", "ft:gpt-4o-mini-2024-07-18:local:x:nosuchid", "--out", str(tmp_path / "a")],
            "has no model",
        ),
        (["models", "export", standin_model, "--out", str(tmp_path / "b")], "no LoRA adapter to export"),
        (["models", "export", model, "--out", str(out)], "is not an empty directory"),
        (["models", "export", model], "needs a MODEL and --out"),
    ):
        failed = _cli(args, workspace.project, env)
        assert failed.returncode != 0 and message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    # the stand-in's model became the active intent model; the LoRA one stays in the registry's history
    must(
        subprocess.run(
            [sys.executable, "-m", "rasa_gpt3.cli", "models", "use", model, "--task", "intent"],
            cwd=str(workspace.project),
            env=env,
            capture_output=True,
            text=True,
        )
    )


def test_the_fallback_action_generates_with_the_lora_response_model(lora_bot, monkeypatch, tmp_path):
    from rasa.shared.core.domain import Domain
    from rasa_sdk.executor import CollectingDispatcher

    from rasa_gpt3.actions import ActionGPT3Fallback
    from rasa_gpt3.actions.fallback_config import ENV_CONFIG, ENV_PROJECT

    workspace, env, _, _ = lora_bot
    for key, value in env.items():
        if key.startswith(("OPENAI_", "RASA_GPT3_", "HF_")):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv(ENV_PROJECT, str(workspace.project))
    domain = Domain.load(workspace.project / "domain.yml").as_dict()
    loop = asyncio.new_event_loop()

    def run(settings: Dict[str, Any]):
        path = tmp_path / "gpt3_fallback.yml"
        path.write_text(yaml.safe_dump({"reclassify": False, "history": 1, "timeout": 60.0, **settings}))
        monkeypatch.setenv(ENV_CONFIG, str(path))
        dispatcher, tracker = CollectingDispatcher(), fallback_tracker("can you tell me a joke", sender="lora")
        loop.run_until_complete(ActionGPT3Fallback().run(dispatcher, tracker, domain))
        (message,) = dispatcher.messages
        return message

    try:
        generated = run({"response_model": workspace.models["response"]})
        assert generated["rasa_gpt3"]["source"] == "generated", generated
        assert generated["rasa_gpt3"]["model"] == workspace.models["response"]
        answer = generated["text"]
        assert answer.strip()
        # generated by the language model, token by token: with room for 2 tokens the answer is a prefix of it
        short = run({"response_model": workspace.models["response"], "max_tokens": 2})
        assert short["rasa_gpt3"]["source"] == "generated" and answer.startswith(short["text"].strip())
        assert len(short["text"].strip()) < len(answer)
        # the guardrails still apply: a forbidden answer is refused and the failure response sent
        refused = run({"response_model": workspace.models["response"], "forbidden_patterns": [re.escape(answer[:8])]})
        assert refused["rasa_gpt3"]["source"] == "failure" and refused["response"] == "utter_default"
    finally:
        loop.close()
