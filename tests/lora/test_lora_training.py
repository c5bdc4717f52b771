"""LoRA training on financial-demo with the tiny stand-in model: loss, metrics, checkpoints, adapter, seed, cancel."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rasa_gpt3.local.engines import Hyperparameters, TrainingCancelled
from rasa_gpt3.local.lora.errors import INVALID_SETTINGS, NO_CHAT_TEMPLATE, LoraError
from rasa_gpt3.local.lora.training import LoraSettings, train_adapter
from tests.lora.conftest import TINY_LEARNING_RATE_MULTIPLIER


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


def test_training_loss_falls_and_every_step_is_reported(trained, tiny_records):
    result, steps, _ = trained
    per_epoch = math.ceil(len(tiny_records[0]) / 16)
    assert len(steps) == result.steps == steps[-1]["total_steps"] == 2 * per_epoch
    assert [row["step"] for row in steps] == list(range(1, len(steps) + 1))
    first, last = _mean(row["train_loss"] for row in steps[:3]), _mean(row["train_loss"] for row in steps[-3:])
    assert last < 0.6 * first, (first, last)
    assert _mean(row["train_mean_token_accuracy"] for row in steps[-3:]) > _mean(
        row["train_mean_token_accuracy"] for row in steps[:3]
    )
    assert all(0 <= row["train_mean_token_accuracy"] <= 1 for row in steps)
    assert {row["epoch"] for row in steps} == {1, 2}
    assert result.trained_tokens > 2 * len(tiny_records[0]) * 10  # each record is dozens of tokens


def test_each_epoch_has_validation_metrics_and_a_checkpoint_in_peft_format(trained, tiny_records):
    result, steps, epochs = trained
    per_epoch = math.ceil(len(tiny_records[0]) / 16)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["step"] for e in epochs] == [per_epoch, 2 * per_epoch]
    assert epochs[1]["full_valid_loss"] < epochs[0]["full_valid_loss"] or epochs[1]["full_valid_loss"] < 4
    assert all(0 <= e["full_valid_mean_token_accuracy"] <= 1 for e in epochs)
    for epoch, checkpoint in zip(epochs, result.checkpoints):
        assert Path(epoch["checkpoint"]) == checkpoint.path
        assert (checkpoint.path / "adapter_config.json").is_file()
        assert (checkpoint.path / "adapter_model.safetensors").is_file()
        assert checkpoint.metrics["full_valid_loss"] == epoch["full_valid_loss"]


def test_final_adapter_is_on_disk_in_peft_format(trained, tiny_base):
    from safetensors.torch import load_file

    result, _, _ = trained
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    assert config["base_model_name_or_path"] == str(tiny_base.path)
    tensors = load_file(str(result.path / "adapter_model.safetensors"))
    assert tensors and all("lora_A" in name or "lora_B" in name for name in tensors)
    assert any(float(t.abs().sum()) > 0 for name, t in tensors.items() if "lora_B" in name)  # B starts at zero


def _small_run(tiny_base, tiny_records, out_dir, seed, **options):
    train, valid = tiny_records
    return train_adapter(
        tiny_base,
        train[:48],
        valid[:16],
        Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=TINY_LEARNING_RATE_MULTIPLIER),
        out_dir,
        seed=seed,
        device="cpu",
        **options,
    )


def test_same_seed_gives_the_same_adapter_and_another_seed_does_not(tiny_base, tiny_records, tmp_path):
    first = _small_run(tiny_base, tiny_records, tmp_path / "a", seed=3)
    second = _small_run(tiny_base, tiny_records, tmp_path / "b", seed=3)
    other = _small_run(tiny_base, tiny_records, tmp_path / "c", seed=4)
    weights = [(run.path / "adapter_model.safetensors").read_bytes() for run in (first, second, other)]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    assert [row["train_loss"] for row in first.rows] == [row["train_loss"] for row in second.rows]


def test_cancel_stops_training_within_a_step(tiny_base, tiny_records, tmp_path):
    seen = []
    with pytest.raises(TrainingCancelled):
        _small_run(
            tiny_base, tiny_records, tmp_path / "run", seed=0, on_step=seen.append, should_stop=lambda: len(seen) >= 2
        )
    assert len(seen) == 2  # 6 steps were planned; the third step's forward pass did not start
    assert not (tmp_path / "run" / "adapter").exists()


def test_chat_records_on_a_tokenizer_without_chat_template_fail_clearly(tmp_path, tiny_records):
    from rasa_gpt3.local.lora.base_model import resolve_base_model
    from rasa_gpt3.local.lora.tiny import build_tiny_model

    base = resolve_base_model(
        str(build_tiny_model(tmp_path / "plain", ["hello there", "bye now"] * 20, vocab_size=300, chat_template=False))
    )
    with pytest.raises(LoraError) as raised:
        _small_run(base, tiny_records, tmp_path / "run", seed=0)
    assert raised.value.code == NO_CHAT_TEMPLATE
    assert "no chat template" in raised.value.message and "\n" not in raised.value.message


def test_completion_records_train_without_a_chat_template(tmp_path):
    from rasa_gpt3 import prompts
    from rasa_gpt3.local.lora.base_model import resolve_base_model
    from rasa_gpt3.local.lora.tiny import build_tiny_model

    texts = ["hello there", "good morning", "bye now", "see you later"] * 5
    base = resolve_base_model(
        str(build_tiny_model(tmp_path / "plain", texts + [prompts.SEPARATOR], vocab_size=300, chat_template=False))
    )
    records = [
        prompts.intent_record(text, "greet" if i % 4 < 2 else "bye", "completion") for i, text in enumerate(texts)
    ]
    result = train_adapter(
        base,
        records,
        [],
        Hyperparameters(n_epochs=1, batch_size=4, learning_rate_multiplier=1.0),
        tmp_path / "run",
        seed=0,
        device="cpu",
    )
    assert result.steps == 5 and (result.path / "adapter_model.safetensors").is_file()
    assert len(result.checkpoints) == 1 and "full_valid_loss" not in result.checkpoints[0].metrics


def test_lora_settings_come_from_job_metadata_strings():
    settings = LoraSettings.from_metadata(
        {
            "lora_rank": "8",
            "lora_alpha": "16",
            "lora_dropout": "0",
            "lora_target_modules": "q_proj, v_proj",
            "task": "intent",
        }
    )
    assert (settings.rank, settings.alpha, settings.dropout) == (8, 16, 0.0)
    assert settings.target_modules == ("q_proj", "v_proj")
    assert LoraSettings.from_metadata(None) == LoraSettings()
    for bad in ({"lora_rank": "big"}, {"lora_rank": "0"}, {"lora_dropout": "1.5"}):
        with pytest.raises(LoraError) as raised:
            LoraSettings.from_metadata(bad)
        assert raised.value.code == INVALID_SETTINGS


def test_lora_options_of_the_cli_become_the_metadata_a_job_reads():
    metadata = LoraSettings.metadata_from_options(["rank=8", "alpha = 16", "target-modules=q_proj,v_proj"])
    assert metadata == {"lora_rank": "8", "lora_alpha": "16", "lora_target_modules": "q_proj,v_proj"}
    settings = LoraSettings.from_metadata(metadata)
    assert (settings.rank, settings.alpha, settings.target_modules) == (8, 16, ("q_proj", "v_proj"))
    assert LoraSettings.metadata_from_options([]) == {}
    for bad in ("rank", "rank=", "size=8", "rank=big", "dropout=1"):
        with pytest.raises(LoraError) as raised:
            LoraSettings.metadata_from_options([bad])
        assert raised.value.code == INVALID_SETTINGS and "\n" not in raised.value.message


def test_target_modules_that_do_not_exist_fail_clearly(tiny_base, tiny_records, tmp_path):
    with pytest.raises(LoraError) as raised:
        _small_run(
            tiny_base, tiny_records, tmp_path / "run", seed=0, settings=LoraSettings(target_modules=("no_such_layer",))
        )
    assert raised.value.code == INVALID_SETTINGS and "no_such_layer" in raised.value.message
