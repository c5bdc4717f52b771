"""Shutdown dates: the table and its override, the local backend's `shutdown_date`, and its fine-tune refusals."""

from __future__ import annotations

import datetime as dt

import openai
import pytest

from rasa_gpt3.data.base_models import ENV_SHUTDOWN_DATES, resolve_base_model, shutdown_date
from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.local.faults import FaultSpecError, parse_faults
from rasa_gpt3.model_lifecycle import (
    FROM_BACKEND,
    WARNING_DAYS,
    fine_tune_refusal,
    model_lifecycle,
    parse_shutdown_date,
)
from tests.conftest import small_intent_records

pytestmark = pytest.mark.timeout(120)
FAULT = "X-Rasa-GPT3-Fault"


def test_the_table_knows_the_announced_dates_and_fine_tunes_follow_their_base(monkeypatch):
    monkeypatch.delenv(ENV_SHUTDOWN_DATES, raising=False)
    assert shutdown_date("gpt-4o-mini-2024-07-18") == dt.date(2027, 1, 14)
    assert shutdown_date("gpt-4o-mini") == dt.date(2027, 1, 14)  # an alias
    assert shutdown_date("ft:gpt-4.1-mini-2025-04-14:acme:bot:AbC123") == dt.date(2027, 1, 14)
    assert shutdown_date("babbage-002") is None  # none announced
    assert shutdown_date("ft:gpt-4o-mini-2024-07-18:local:bot:AbC123", provider_schedule=False) is None
    mini = resolve_base_model("gpt-4o-mini")
    assert mini.shutdown == dt.date(2027, 1, 14) and "2026-05-07" in mini.shutdown_source


def test_the_environment_overrides_the_table_and_a_bad_value_is_one_line(monkeypatch):
    monkeypatch.setenv(ENV_SHUTDOWN_DATES, "gpt-4o-mini=2026-12-30, babbage-002=2027-02-01,gpt-4o-2024-08-06=none")
    assert shutdown_date("ft:gpt-4o-mini-2024-07-18:local:bot:AbC123", provider_schedule=False) == dt.date(2026, 12, 30)
    assert shutdown_date("babbage-002") == dt.date(2027, 2, 1)
    assert shutdown_date("gpt-4o-2024-08-06") is None
    for bad in ("gpt-4o-mini=soon", "=2027-01-01", "gpt-4o-mini"):
        monkeypatch.setenv(ENV_SHUTDOWN_DATES, bad)
        with pytest.raises(RasaGPT3Error, match=ENV_SHUTDOWN_DATES):
            shutdown_date("gpt-4o-mini")


def test_the_local_backend_announces_only_the_overridden_dates(local_backend, monkeypatch):
    monkeypatch.delenv(ENV_SHUTDOWN_DATES, raising=False)
    job = local_backend.fine_tune(small_intent_records(), model="gpt-4o-mini")
    model = local_backend.client.models.retrieve(job.fine_tuned_model)
    # the table's date is OpenAI's; a local model is retired by no provider
    assert model.shutdown_date is None

    monkeypatch.setenv(ENV_SHUTDOWN_DATES, "gpt-4o-mini-2024-07-18=2026-12-30")
    listed = {m.id: m.shutdown_date for m in local_backend.client.models.list().data}
    assert listed["gpt-4o-mini-2024-07-18"] == "2026-12-30"
    assert listed[job.fine_tuned_model] == "2026-12-30"
    assert listed["gpt-4.1-mini-2025-04-14"] is None
    assert local_backend.client.models.retrieve(job.fine_tuned_model).shutdown_date == "2026-12-30"


def test_the_lifecycle_takes_the_backends_date_first_and_gives_one_line(local_backend, monkeypatch):
    monkeypatch.delenv(ENV_SHUTDOWN_DATES, raising=False)
    model = local_backend.fine_tune(small_intent_records(), model="gpt-4o-mini").fine_tuned_model
    today = dt.date.today()
    quiet = model_lifecycle(model, "local", client=local_backend.client)
    assert quiet.shutdown is None and quiet.days_text() == "-" and not quiet.warning("intent")

    monkeypatch.setenv(ENV_SHUTDOWN_DATES, f"gpt-4o-mini={today + dt.timedelta(days=30)}")
    soon = model_lifecycle(model, "local", client=local_backend.client)
    assert (soon.days_left, soon.source, soon.due_soon, soon.retired) == (30, FROM_BACKEND, True, False)
    line = soon.warning("intent")
    assert "30 days left" in line and f"rasa-gpt3 evaluate --models {model},NEW" in line
    assert "rasa-gpt3 fine-tune --task intent --base-model" in line and "\n" not in line

    monkeypatch.setenv(ENV_SHUTDOWN_DATES, f"gpt-4o-mini={today - dt.timedelta(days=1)}")
    gone = model_lifecycle(model, "local", client=local_backend.client)
    assert gone.retired and gone.days_text() == "shut down" and gone.warning("intent") is None
    assert "shut down on" in gone.error("intent", "every message gets nlu_fallback")

    # a backend that does not answer: the schedule (here the environment) decides, without raising
    local_backend.set_faults("status=500")
    assert model_lifecycle(model, "local", client=local_backend.client).source == ENV_SHUTDOWN_DATES
    # on a remote backend the provider's table counts; on the local one it does not
    monkeypatch.delenv(ENV_SHUTDOWN_DATES)
    remote = model_lifecycle("ft:gpt-4o-mini-2024-07-18:acme:bot:X", "api.openai.com", today=dt.date(2026, 12, 1))
    assert remote.days_left == 44 and remote.due_soon and "2026-05-07" in remote.source
    assert model_lifecycle(model, "local", today=dt.date(2027, 6, 1)).days_left is None
    assert WARNING_DAYS == 60 and not model_lifecycle("x", "api.openai.com", base_model="babbage-002").shutdown
    assert parse_shutdown_date("2027-01-14") == parse_shutdown_date(1799884800)  # a Unix timestamp


def test_refuse_fine_tune_answers_like_a_provider_that_stopped_fine_tuning(local_backend):
    assert parse_faults("refuse_fine_tune")[0].refuse_fine_tune == "access"
    assert parse_faults("refuse_fine_tune=model")[0].refuse_fine_tune == "model"
    with pytest.raises(FaultSpecError):
        parse_faults("refuse_fine_tune=later")
    training_file = local_backend.upload_records(small_intent_records())
    before = len(local_backend.client.fine_tuning.jobs.list().data)

    local_backend.set_faults("refuse_fine_tune")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        local_backend.client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file)
    assert denied.value.status_code == 403 and "Fine-tuning is not available" in denied.value.message

    local_backend.set_faults(None)
    refused_model = local_backend.make_client(max_retries=0, default_headers={FAULT: "refuse_fine_tune=model"})
    with pytest.raises(openai.BadRequestError) as refused:
        refused_model.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file)
    assert refused.value.code == "model_not_available"
    access_line = fine_tune_refusal(denied.value, "gpt-4o-mini-2024-07-18", "local")
    model_line = fine_tune_refusal(refused.value, "gpt-4o-mini-2024-07-18", "local")
    assert "refuses to fine-tune" in access_line and "no longer fine-tunes gpt-4o-mini-2024-07-18" in model_line
    for line in (access_line, model_line):
        assert "nothing was registered" in line and "--base-model" in line and "hf:ORG/NAME" in line
    with pytest.raises(openai.BadRequestError) as other:
        local_backend.client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-nope")
    assert fine_tune_refusal(other.value, "gpt-4o-mini-2024-07-18", "local") is None
    # no job was created, and without the fault the same request works
    assert len(local_backend.client.fine_tuning.jobs.list().data) == before
    assert local_backend.client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file).id


def test_entering_the_last_60_days_or_passing_the_date_changes_the_components_fingerprint(tmp_path, monkeypatch):
    import json

    from rasa_gpt3.nlu.intent_classifier import GPT3IntentClassifier

    monkeypatch.setenv("RASA_GPT3_LOCAL", "1")
    monkeypatch.delenv(ENV_SHUTDOWN_DATES, raising=False)
    states = []
    for days in (None, 90, 80, 30, -1):
        if days is not None:
            monkeypatch.setenv(ENV_SHUTDOWN_DATES, f"gpt-4o-mini={dt.date.today() + dt.timedelta(days=days)}")
        states.append(json.loads(GPT3IntentClassifier.fingerprint_addon({"project": str(tmp_path)}))["shutdown"])
    assert states[0] == [None, None] and states[1][1] is None and states[3][1] == "soon" and states[4][1] == "shut down"
    assert states[1] != states[2]  # a new date is a new fingerprint too
