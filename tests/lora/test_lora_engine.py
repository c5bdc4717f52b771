"""The LoRA engine behind the local backend's seam, through the official SDK over real HTTP (tiny stand-in model)."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import openai
import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.local import engine_registry, standin
from rasa_gpt3.local.lora import engine as lora_engine
from tests.lora.conftest import TINY_LEARNING_RATE_MULTIPLIER


@pytest.fixture
def with_lora(monkeypatch):
    """The registry as it is once the LoRA engine is switched on: the stand-in first, then LoRA."""
    monkeypatch.setattr(engine_registry, "ENGINES", (standin.ENGINE, lora_engine.ENGINE))


HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": TINY_LEARNING_RATE_MULTIPLIER}


def test_describe_takes_open_weights_names_only_and_downloads_nothing(tiny_base, tmp_path):
    described = lora_engine.describe(str(tiny_base.path))
    assert (described.format, described.context) == ("chat", 1024)
    assert described.name == str(tiny_base.path)  # the job's model, as the user named it
    assert lora_engine.describe("hf:Qwen/Qwen2.5-0.5B-Instruct").format == "chat"  # not cached: taken as chat
    for name in ("gpt-4o-mini", "ft:gpt-4o-mini:local::abcd", str(tmp_path / "missing")):
        with pytest.raises(ValueError):
            lora_engine.describe(name)
    # the registry as it is on main: OpenAI names to the stand-in, open-weights names to LoRA (never the stand-in)
    assert engine_registry.engine_for_base_model(str(tiny_base.path))[0] is lora_engine.ENGINE
    assert engine_registry.engine_for_base_model("hf:org/name")[0] is lora_engine.ENGINE
    assert engine_registry.engine_for_base_model("gpt-4o-mini")[0] is standin.ENGINE


def test_fine_tune_and_serve_financial_demo_through_the_sdk(local_backend, with_lora, tiny_base, tiny_records):
    train, valid = tiny_records
    client = local_backend.client
    validation_file = local_backend.upload_records(valid, "valid.jsonl")

    def fine_tune():
        return local_backend.fine_tune(
            train,
            model=str(tiny_base.path),
            timeout=600,
            seed=7,
            hyperparameters=HYPERPARAMETERS,
            validation_file=validation_file,
        )

    job = fine_tune()
    assert job.status == "succeeded", job.error
    assert job.model == str(tiny_base.path) and job.fine_tuned_model.startswith(f"ft:{tiny_base.path.name}:local:")
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and "train_loss" in (e.data or {})]
    assert len(losses) == 2 * math.ceil(len(train) / 16)
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3])  # training loss clearly falls
    assert any("Training a LoRA adapter (rank 16" in e.message for e in events)
    epoch_events = [e for e in events if e.message.startswith("Epoch ")]
    assert len(epoch_events) == 2 and all("full validation loss" in e.message for e in epoch_events)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 2 and all("full_valid_loss" in c.metrics.model_dump() for c in checkpoints)
    result = client.files.content(job.result_files[0]).read()
    rows = list(csv.DictReader(io.StringIO(__import__("base64").b64decode(result).decode())))
    assert len(rows) == len(losses) and float(rows[0]["train_loss"]) == pytest.approx(losses[0], rel=1e-4)
    key = job.fine_tuned_model.rsplit(":", 1)[1]
    stored = json.loads((local_backend.state_dir / "models" / f"{key}.json").read_text())
    assert stored["engine"] == "lora" and stored["base_model"] == str(tiny_base.path)
    assert stored["adapter_config"]["r"] == 16 and stored["format"] == "chat"

    request = prompts.intent_request("what is my balance", "chat")
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, max_tokens=1, logprobs=True, top_logprobs=20, **request
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "length"
    top = choice.logprobs.content[0].top_logprobs
    assert len(top) == 20 and sum(math.exp(t.logprob) for t in top) <= 1 + 1e-6
    assert choice.logprobs.content[0].token == top[0].token == choice.message.content
    full = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=10, **request)
    assert full.choices[0].finish_reason == "stop"  # the model ended its turn
    assert full.usage.prompt_tokens > 10 and full.usage.completion_tokens >= 1

    # the same seed on the same data: the same model, so the same answers and probabilities
    again = fine_tune()
    assert again.status == "succeeded", again.error
    for text in ("hi", "show my transactions", "I want to pay my credit card"):
        asked = [
            client.chat.completions.create(
                model=model, max_tokens=2, logprobs=True, top_logprobs=5, **prompts.intent_request(text, "chat")
            )
            for model in (job.fine_tuned_model, again.fine_tuned_model)
        ]
        assert asked[0].choices[0].logprobs.model_dump() == asked[1].choices[0].logprobs.model_dump()


def test_cancel_stops_a_lora_job_mid_training(local_backend, with_lora, tiny_base, tiny_records):
    client = local_backend.client
    job = client.fine_tuning.jobs.create(
        model=str(tiny_base.path),
        training_file=local_backend.upload_records(tiny_records[0]),
        hyperparameters={"n_epochs": 20, "batch_size": 4},
    )
    deadline = time.monotonic() + 300
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5)):
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.1)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    time.sleep(2)
    steps = len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"])
    time.sleep(2)
    after = len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"])
    assert after == steps < 20 * math.ceil(len(tiny_records[0]) / 4)
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


def test_a_lora_job_fails_clearly(local_backend, with_lora, tmp_path, tiny_records):
    from rasa_gpt3.local.lora.tiny import build_tiny_model

    with pytest.raises(openai.BadRequestError, match="not available for fine-tuning"):
        local_backend.client.fine_tuning.jobs.create(model=str(tmp_path / "missing"), training_file="file-x")
    plain = build_tiny_model(tmp_path / "plain", ["hello there", "bye now"] * 20, vocab_size=300, chat_template=False)
    # no chat template: described as a completion model, so chat records are refused as the wrong format
    job = local_backend.fine_tune(tiny_records[0][:20], model=str(plain))
    assert job.status == "failed" and "prompt" in job.error.message
    completion = [prompts.intent_record(text, "greet", "completion") for text in ("hi", "hello", "hey") * 4]
    (plain / "config.json").write_text("{not json")
    broken = local_backend.fine_tune(completion, model=str(plain))
    assert broken.status == "failed" and str(plain) in broken.error.message


def test_fine_tuned_model_ids_of_open_weights_base_models_are_valid_ids():
    from rasa_gpt3.local import ids

    for base, part in (
        ("hf:Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct"),
        ("/models/my llama/", "my-llama"),
        ("hf:org/name", "name"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),
    ):
        model = ids.new_model_id(base, "bot")
        assert model.startswith(f"ft:{part}:local:bot:") and ids.model_key(model) == model.rsplit(":", 1)[1]
