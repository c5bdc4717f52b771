"""The pure parts of the fine-tune lifecycle: idempotency key, cost guard, events -> progress, staleness."""

from types import SimpleNamespace

import pytest

from rasa_gpt3 import fine_tune_jobs, finetune
from rasa_gpt3.data.base_models import resolve_base_model
from rasa_gpt3.errors import BudgetError
from rasa_gpt3.progress import JobProgress, apply_event, describe, epoch_of
from rasa_gpt3.prompts import PROMPT_FORMAT_VERSION, intent_record
from rasa_gpt3.registry import Registry, RegistryEntry, entry_from_job

HP = finetune.supervised_hyperparameters(3)


def test_idempotency_key_is_stable_and_changes_with_every_input():
    key_of = fine_tune_jobs.idempotency_key
    key = key_of("fp", "intent", "gpt-4o-mini-2024-07-18", HP)
    assert key == key_of("fp", "intent", "gpt-4o-mini-2024-07-18", dict(reversed(list(HP.items()))))
    others = {
        key_of("fp2", "intent", "gpt-4o-mini-2024-07-18", HP),
        key_of("fp", "entities", "gpt-4o-mini-2024-07-18", HP),
        key_of("fp", "intent", "babbage-002", HP),
        key_of("fp", "intent", "gpt-4o-mini-2024-07-18", finetune.supervised_hyperparameters(4)),
        key_of("fp", "intent", "gpt-4o-mini-2024-07-18", HP, seed=7),
        key_of("fp", "intent", "gpt-4o-mini-2024-07-18", HP, lora={"lora_rank": "8"}),
    }
    assert key not in others and len(others) == 6
    # no LoRA settings is the key without them: models fine-tuned before `--lora` existed are still reused
    assert key_of("fp", "intent", "gpt-4o-mini-2024-07-18", HP, lora={}) == key


def test_cost_estimate_counts_tokens_times_epochs_at_the_table_price():
    base = resolve_base_model("gpt-4o-mini")
    records = [intent_record("hello there", "greet", "chat")] * 10
    estimate = finetune.estimate_cost(records, base, epochs=4)
    assert estimate.epochs == 4 and estimate.examples == 10
    assert estimate.usd == pytest.approx(estimate.tokens_per_epoch * 4 * base.training_price / 1e6)
    assert finetune.estimate_cost(records, base).epochs == 10  # default_epochs: at least 100 examples seen


def test_budget_guard_refuses_above_max_cost_with_one_line():
    estimate = finetune.CostEstimate("gpt-4o-mini-2024-07-18", examples=50, tokens_per_epoch=10_000, epochs=3, usd=0.09)
    finetune.check_budget(estimate, None)
    finetune.check_budget(estimate, 0.09)
    with pytest.raises(BudgetError) as caught:
        finetune.check_budget(estimate, 0.01)
    message = str(caught.value)
    assert "\n" not in message and "$0.0900" in message and "--max-cost $0.0100" in message
    assert "nothing was uploaded" in message


def test_upload_names_embed_the_content_hash():
    a = finetune.upload_filename("intent", "train", b'{"a": 1}\n')
    assert a == finetune.upload_filename("intent", "train", b'{"a": 1}\n')
    assert a != finetune.upload_filename("intent", "train", b'{"a": 2}\n')
    assert a.startswith("rasa-gpt3-intent-train-") and a.endswith(".jsonl")


def test_default_suffix_is_a_valid_model_suffix():
    assert finetune.default_suffix("Financial Demo_Bot!") == "financial-demo-bot"
    assert finetune.default_suffix("???") == "rasa-gpt3"
    assert len(finetune.default_suffix("x" * 100)) == 40


def test_metrics_events_map_to_steps_epochs_and_losses():
    state = JobProgress(n_epochs=3)
    state = apply_event(state, {"id": "e1", "message": "Validating training file", "type": "message"})
    assert state.step == 0 and state.last_event_id == "e1"
    state = apply_event(
        state,
        {
            "id": "e2",
            "type": "metrics",
            "message": "Step 4/9: training loss=0.5",
            "data": {
                "step": 4,
                "total_steps": 9,
                "train_loss": 0.5,
                "train_mean_token_accuracy": 0.75,
                "valid_loss": 0.6,
            },
        },
    )
    assert (state.step, state.total_steps, state.epoch) == (4, 9, 2)
    assert state.metrics() == {"train_loss": 0.5, "valid_loss": 0.6, "train_accuracy": 0.75}
    state = apply_event(
        state,
        {
            "id": "e3",
            "type": "metrics",
            "message": "Epoch 3: full validation loss=0.4",
            "data": {"step": 9, "epoch": 3, "full_valid_loss": 0.4, "full_valid_mean_token_accuracy": 0.8},
        },
    )
    assert state.epoch == 3 and (state.full_valid_loss, state.full_valid_accuracy) == (0.4, 0.8)
    assert state.metrics()["valid_loss"] == 0.4 and state.metrics()["valid_accuracy"] == 0.8  # full validation wins
    assert describe(state) == "epoch 3/3, loss 0.500, val_loss 0.600, acc 0.750, full_val_loss 0.400"


def test_text_only_events_are_understood_too():
    state = apply_event(
        JobProgress(),
        SimpleNamespace(id="e9", message="Step 12/90: training loss=0.41, validation loss=0.52", data=None),
    )
    assert (state.step, state.total_steps, state.train_loss, state.valid_loss) == (12, 90, 0.41, 0.52)


def test_steps_never_go_backwards_and_epochs_are_bounded():
    state = apply_event(JobProgress(step=5), {"id": "x", "data": {"step": 3}})
    assert state.step == 5
    assert epoch_of(9, 9, 3) == 3 and epoch_of(1, 9, 3) == 1 and epoch_of(0, 9, 3) is None
    assert epoch_of(1, 1, 7) is None  # one step for all epochs (a retrieval model): no epoch to derive


def failed_job(param, message="line 3: messages missing"):
    error = SimpleNamespace(code="invalid_training_file", message=message, param=param)
    return SimpleNamespace(id="ftjob-1", status="failed", error=error)


def test_failure_message_carries_the_job_error_and_what_to_do():
    text = finetune.failure_message(failed_job("training_file", "line 3:\nmessages missing"))
    assert "\n" not in text and "line 3: messages missing" in text and "rasa-gpt3 validate" in text
    assert "rasa-gpt3 status ftjob-1" in finetune.failure_message(failed_job(None, "server exploded"))
    assert "cancelled" in finetune.failure_message(SimpleNamespace(id="ftjob-2", status="cancelled", error=None))


def write_registry(tmp_path, **fields):
    registry = Registry(tmp_path / "gpt3_models.yml")
    registry.record(
        "intent",
        RegistryEntry(
            model="ft:active", backend="local", fingerprint="fp-old", prompt_format=PROMPT_FORMAT_VERSION, **fields
        ),
    )
    registry.save()
    return Registry.load(tmp_path / "gpt3_models.yml")


def test_resolve_reports_changed_data_as_stale(tmp_path):
    registry = write_registry(tmp_path)
    same = registry.resolve("intent", "local", "fp-old")
    assert (same.model, same.stale) == ("ft:active", False)
    moved = registry.resolve("intent", "local", "fp-new")
    assert moved.model == "ft:active" and moved.stale
    warning = moved.warning("intent")
    assert "\n" not in warning and "rasa-gpt3 fine-tune --task intent" in warning and "fingerprint" in warning


def test_resolve_reports_another_prompt_format_as_stale(tmp_path):
    registry = Registry(tmp_path / "gpt3_models.yml")
    registry.record("intent", RegistryEntry(model="ft:old", backend="local", fingerprint="fp", prompt_format="0"))
    registry.save()
    resolved = Registry.load(tmp_path / "gpt3_models.yml").resolve("intent", "local", "fp")
    assert resolved.stale and "prompt format 0" in resolved.reason


def test_an_explicit_model_wins_and_other_backends_do_not_count(tmp_path):
    registry = write_registry(tmp_path)
    explicit = registry.resolve("intent", "local", "fp-new", explicit="ft:mine")
    assert (explicit.model, explicit.entry, explicit.stale) == ("ft:mine", None, False)
    assert registry.resolve("intent", "api.openai.com", "fp-old").model is None
    assert registry.resolve("entities", "local", None).model is None


def test_entry_from_job_uses_the_metadata_written_at_creation():
    job = SimpleNamespace(
        id="ftjob-9",
        model="gpt-4o-mini-2024-07-18",
        fine_tuned_model="ft:gpt-4o-mini-2024-07-18:local:bot:abc",
        created_at=1_700_000_000,
        finished_at=1_700_000_100,
        trained_tokens=999,
        hyperparameters=None,
        method=SimpleNamespace(supervised=SimpleNamespace(hyperparameters=SimpleNamespace(n_epochs=4))),
        metadata={
            fine_tune_jobs.META_TASK: "intent",
            fine_tune_jobs.META_FINGERPRINT: "fp",
            fine_tune_jobs.META_KEY: "k",
            fine_tune_jobs.META_PROMPT_FORMAT: "1",
            fine_tune_jobs.META_FORMAT: "chat",
        },
    )
    entry = entry_from_job(job, "local", {"valid_loss": 0.123456})
    assert (entry.job, entry.fingerprint, entry.key, entry.epochs, entry.format) == ("ftjob-9", "fp", "k", 4, "chat")
    assert entry.created == "2023-11-14T22:15:00Z" and entry.metrics == {"valid_loss": 0.1235}


def test_progress_bar_off_a_terminal_prints_messages_and_one_summary_line():
    import io

    from rasa_gpt3.progress import TqdmProgressBar

    stream = io.StringIO()
    bar = TqdmProgressBar(stream)
    bar.update(JobProgress(job_id="ftjob-1", status="running"), "Fine-tuning job started")
    bar.update(
        JobProgress(job_id="ftjob-1", status="succeeded", step=9, total_steps=9, epoch=3, n_epochs=3, train_loss=0.25)
    )
    bar.close()
    assert stream.getvalue().splitlines() == [
        "  Fine-tuning job started",
        "ftjob-1 succeeded: step 9/9, epoch 3/3, loss 0.250",
    ]
