"""The fine-tune lifecycle against the local backend over real HTTP, through the official openai SDK.

Covered: fine-tune -> registry entry; an identical call starts no job (and uploads nothing); force; attaching to a
running job; cancel; a failing job reports its error; follow survives dropped connections and a backend restart;
results as a table and a valid PNG; the budget guard; CLI errors as one line with a non-zero exit.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from rasa_gpt3 import cli, fine_tune_jobs, finetune
from rasa_gpt3.client import make_client
from rasa_gpt3.data.base_models import resolve_base_model
from rasa_gpt3.errors import BackendError, BudgetError, DataError
from rasa_gpt3.prompts import PROMPT_FORMAT_VERSION, intent_record
from rasa_gpt3.registry import Registry
from rasa_gpt3.settings import Settings
from tests.conftest import BANKING77, SMALL_INTENTS

pytestmark = pytest.mark.timeout(120)

NLU = SMALL_INTENTS


def write_bot(path: Path) -> Path:
    """A minimal Rasa project: 4 intents x 6 examples."""
    (path / "data").mkdir(parents=True)
    (path / "config.yml").write_text("recipe: default.v1\nlanguage: en\npipeline:\n  - name: WhitespaceTokenizer\n")
    (path / "domain.yml").write_text('version: "3.1"\nintents: [' + ", ".join(NLU) + "]\n")
    lines = ['version: "3.1"', "nlu:"]
    for intent, texts in NLU.items():
        lines += [f"- intent: {intent}", "  examples: |"] + [f"    - {text}" for text in texts]
    (path / "data" / "nlu.yml").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_bot(tmp_path_factory) -> Path:
    return write_bot(tmp_path_factory.mktemp("bots") / "tiny-bot")


@pytest.fixture(scope="session")
def intent_export(tiny_bot):
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project

    project = load_project(tiny_bot)
    return export_task("intent", project.nlu, project.domain, project.stories)


def remote_style_settings(backend, project_dir: Path) -> Settings:
    """Settings that reach `backend` as any OpenAI-compatible server (API key + base URL), not the embedded one."""
    return Settings(project_dir=project_dir, api_key="local", base_url=backend.base_url, max_retries=2)


class Recorder:
    """A ProgressReporter that keeps every message and snapshot it is shown."""

    def __init__(self, on_update=None):
        self.messages, self.snapshots, self.closed, self.on_update = [], [], 0, on_update

    def update(self, progress, message=None):
        self.snapshots.append(progress)
        if message:
            self.messages.append(message)
        if self.on_update:
            self.on_update(progress)

    def close(self):
        self.closed += 1


@pytest.fixture
def finetune_log(caplog):
    """The lifecycle's log records (attached directly: the CLI's stderr handler stops propagation in-process)."""
    log = logging.getLogger("rasa_gpt3.finetune")
    log.addHandler(caplog.handler)
    with caplog.at_level("INFO", logger="rasa_gpt3.finetune"):
        yield caplog
    log.removeHandler(caplog.handler)


def count(client, what: str) -> int:
    if what == "jobs":
        return len(list(client.fine_tuning.jobs.list(limit=100)))
    return len(list(client.files.list(purpose="fine-tune")))


# ------------------------------------------------------------------------------------------------ the lifecycle


def test_fine_tune_registers_the_model_and_identical_calls_reuse_it(local_settings, intent_export):
    recorder = Recorder()
    first = finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot", progress=recorder)
    assert first.model.startswith("ft:gpt-4o-mini") and not first.reused and first.status == "succeeded"
    assert recorder.closed == 1 and recorder.snapshots[-1].status == "succeeded"
    assert recorder.snapshots[-1].step == recorder.snapshots[-1].total_steps > 0

    entry = Registry.load(local_settings.registry_path).active("intent", "local")
    assert (entry.model, entry.job, entry.fingerprint) == (first.model, first.job_id, intent_export.fingerprint)
    assert entry.prompt_format == PROMPT_FORMAT_VERSION and entry.base_model == "gpt-4o-mini-2024-07-18"
    assert entry.epochs == first.estimate.epochs and entry.key == first.key
    assert 0 <= entry.metrics["valid_loss"] and 0 <= entry.metrics["valid_accuracy"] <= 1

    client = make_client(local_settings)
    jobs, files = count(client, "jobs"), count(client, "files")
    job = client.fine_tuning.jobs.retrieve(first.job_id)
    assert job.metadata[fine_tune_jobs.META_FINGERPRINT] == intent_export.fingerprint
    assert job.metadata[fine_tune_jobs.META_PROJECT] == "tiny-bot" and job.validation_file and job.seed == 42

    again = finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot")
    assert again.reused and (again.model, again.job_id) == (first.model, first.job_id)
    assert (count(client, "jobs"), count(client, "files")) == (jobs, files)

    # a lost registry: the job is found again through its metadata, and the registry is written anew
    local_settings.registry_path.unlink()
    found = finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot")
    assert found.reused and found.job_id == first.job_id and count(client, "jobs") == jobs
    assert Registry.load(local_settings.registry_path).active("intent", "local").model == first.model

    # force: a new job on the already uploaded files; the earlier model goes to history
    forced = finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot", force=True)
    assert not forced.reused and forced.job_id != first.job_id
    assert (count(client, "jobs"), count(client, "files")) == (jobs + 1, files)
    registry = Registry.load(local_settings.registry_path)
    assert registry.active("intent", "local").model == forced.model
    assert [e.model for e in registry.history("intent", "local")] == [first.model]

    resolved = registry.resolve("intent", "local", intent_export.fingerprint)
    assert (resolved.model, resolved.stale) == (forced.model, False)
    assert registry.resolve("intent", "local", "other data").stale


def test_an_identical_call_attaches_to_the_running_job(local_settings, intent_export):
    started = finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot", epochs=2, wait=False)
    assert started.model is None and started.job_id
    attached = finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot", epochs=2)
    assert attached.job_id == started.job_id and attached.reused and attached.model.startswith("ft:")
    assert count(make_client(local_settings), "jobs") == 1
    assert Registry.load(local_settings.registry_path).active("intent", "local").job == started.job_id


def test_budget_guard_refuses_above_max_cost_and_uploads_nothing(local_settings, intent_export):
    with pytest.raises(BudgetError) as caught:
        finetune.ensure_fine_tuned(local_settings, intent_export, project_name="tiny-bot", max_cost=0.0001)
    assert "\n" not in str(caught.value) and "above --max-cost $0.0001" in str(caught.value)
    client = make_client(local_settings)
    assert (count(client, "files"), count(client, "jobs")) == (0, 0)
    assert not local_settings.registry_path.exists()


@pytest.fixture
def remote_env(monkeypatch, local_backend):
    """The CLI's environment pointed at `local_backend` as an OpenAI-compatible server."""
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    monkeypatch.setenv("OPENAI_BASE_URL", local_backend.base_url)
    monkeypatch.delenv("RASA_GPT3_LOCAL", raising=False)
    return local_backend


def test_cancel_stops_a_running_job(remote_env, tmp_path):
    with open(BANKING77 / "train.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))[:3000]
    records = [intent_record(row["text"], row["category"], "chat") for row in rows]
    job = remote_env.client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=remote_env.upload_records(records)
    )
    settings = remote_style_settings(remote_env, tmp_path)
    assert cli.main(["cancel", job.id, "--project", str(tmp_path)]) == 0
    assert remote_env.client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(BackendError, match="already cancelled"):
        finetune.cancel_job(settings, job.id)
    with pytest.raises(BackendError, match="was cancelled"):
        finetune.follow(settings, job.id)


def test_a_failing_job_reports_its_error_in_one_line(remote_env, tmp_path, capsys):
    # JSON objects, so the upload is taken (as OpenAI takes it), but no chat records: the job fails
    bad = remote_env.client.files.create(file=("bad.jsonl", b'{"messages": []}\n' * 12), purpose="fine-tune")
    job = remote_env.client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=bad.id)
    assert cli.main(["follow", job.id, "--project", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: fine-tuning job {job.id} failed: ") and "rasa-gpt3 validate" in error
    failed = remote_env.client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.message in error


def test_follow_survives_dropped_connections_and_resumes_after_the_last_event(
    local_backend, tmp_path, intent_export, finetune_log
):
    settings = remote_style_settings(local_backend, tmp_path)
    started = finetune.ensure_fine_tuned(settings, intent_export, project_name="tiny-bot", wait=False)

    def drop_once_events_were_seen(progress):
        if not local_backend.stats()["faults"]:
            # more drops than the SDK's own retries (2) absorb, so follow's reconnect path is used
            local_backend.set_faults("drop,first=7,path=/v1/fine_tuning/jobs")

    recorder = Recorder(on_update=drop_once_events_were_seen)
    job, entry = finetune.follow(settings, started.job_id, recorder)
    assert job.status == "succeeded" and entry.model == job.fine_tuned_model
    assert any("lost contact" in record.message for record in finetune_log.records)
    assert any("reconnected" in record.message for record in finetune_log.records)
    events = list(local_backend.client.fine_tuning.jobs.list_events(job.id, limit=1000))
    expected = [e.message for e in reversed(events) if e.type != "metrics"]
    assert recorder.messages == expected  # every message event once, in order: resumed after the last one seen
    assert Registry.load(settings.registry_path).active("intent", "127.0.0.1").job == job.id


def test_follow_survives_a_restart_of_the_backend(start_local_backend, tmp_path, intent_export, finetune_log):
    first = start_local_backend()
    port, state_dir = first.server.port, first.state_dir
    # no SDK retries: the refused connections reach follow's own reconnect loop
    settings = remote_style_settings(first, tmp_path).with_(max_retries=0)
    started = finetune.ensure_fine_tuned(settings, intent_export, project_name="tiny-bot", wait=False)
    first.server.stop()

    outcome = {}

    def run_follow():
        try:
            outcome["job"], outcome["entry"] = finetune.follow(settings, started.job_id)
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    follower = threading.Thread(target=run_follow)
    follower.start()
    time.sleep(1.5)  # follow meets refused connections first
    assert follower.is_alive()
    start_local_backend(state_dir=state_dir, port=port)
    follower.join(timeout=90)
    assert "error" not in outcome, outcome.get("error")
    assert any("lost contact" in record.message for record in finetune_log.records)
    assert outcome["job"].status == "succeeded" and outcome["entry"].job == started.job_id


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_results_list_status_and_models(remote_env, tmp_path, intent_export, capsys):
    project = tmp_path / "tiny-bot"
    settings = Settings.from_env(project)
    done = finetune.ensure_fine_tuned(settings, intent_export, project_name="tiny-bot")
    capsys.readouterr()

    plot = tmp_path / "curves.png"
    assert cli.main(["results", done.job_id, "--project", str(project), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["step", "train_loss"] and len(table) > 2
    with Image.open(plot) as image:
        image.verify()
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 100

    assert cli.main(["list", "--project", str(project)]) == 0
    assert done.job_id in capsys.readouterr().out
    assert cli.main(["status", done.job_id, "--project", str(project)]) == 0
    status = capsys.readouterr().out
    assert "succeeded" in status and done.model in status and "intent / tiny-bot" in status

    forced = finetune.ensure_fine_tuned(settings, intent_export, project_name="tiny-bot", force=True, epochs=2)
    capsys.readouterr()
    assert cli.main(["models", "use", done.model, "--task", "intent", "--project", str(project)]) == 0
    registry = Registry.load(settings.registry_path)
    assert registry.active("intent", "127.0.0.1").model == done.model
    assert [e.model for e in registry.history("intent", "127.0.0.1")] == [forced.model]
    assert cli.main(["models", "--project", str(project)]) == 0
    listing = capsys.readouterr().out
    assert done.model in listing and forced.model in listing
    assert cli.main(["models", "prune", "--keep", "0", "--project", str(project)]) == 0
    assert Registry.load(settings.registry_path).history("intent", "127.0.0.1") == []

    # a model the registry does not know is described from the job that made it
    settings.registry_path.unlink()
    assert cli.main(["models", "use", forced.model, "--task", "intent", "--project", str(project)]) == 0
    entry = Registry.load(settings.registry_path).active("intent", "127.0.0.1")
    assert (entry.job, entry.fingerprint, entry.epochs) == (forced.job_id, intent_export.fingerprint, 2)
    assert cli.main(["models", "use", done.model, "--task", "entities", "--project", str(project)]) == 1
    assert "was trained for the intent task, not entities" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["status", "ftjob-nope"], "no fine-tuning job 'ftjob-nope'"),
        (["follow", "ftjob-nope"], "no fine-tuning job 'ftjob-nope'"),
        (["results", "ftjob-nope"], "no fine-tuning job 'ftjob-nope'"),
        (["cancel", "ftjob-nope"], "no fine-tuning job 'ftjob-nope'"),
        (["models", "use", "ft:gpt-4o-mini-2024-07-18:local:x:nope", "--task", "intent"], "has no model"),
        (["models", "use", "ft:x"], "needs a MODEL and --task"),
        # a base model is listed by every backend but is no fine-tuned model (the local backend cannot even call it)
        (["models", "use", "gpt-4o-mini", "--task", "intent"], "gpt-4o-mini is a base model, not a fine-tuned one"),
        (["models", "use", "babbage-002", "--task", "response"], "is a base model, not a fine-tuned one"),
    ],
)
def test_cli_errors_are_one_line_and_non_zero(remote_env, tmp_path, capsys, argv, message):
    assert cli.main(argv + ["--project", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert not (tmp_path / "gpt3_models.yml").exists()


def test_cli_fine_tune_refuses_above_max_cost(remote_env, tiny_bot, capsys):
    assert cli.main(["fine-tune", "--project", str(tiny_bot), "--max-cost", "0"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: estimated cost $") and "nothing was uploaded" in lines[-1]
    assert count(remote_env.client, "files") == 0 and not (tiny_bot / "gpt3_models.yml").exists()


@pytest.mark.parametrize(
    "lora,message",
    [
        ("rank=8", "LoRA settings apply to open-weights base models"),  # the remote backend's gpt-4o-mini
        ("size=8", "--lora takes NAME=VALUE with NAME one of rank, alpha"),
        ("rank=0", "LoRA settings out of range"),
    ],
)
def test_cli_fine_tune_refuses_lora_settings_it_cannot_apply_before_uploading(
    remote_env, tiny_bot, capsys, lora, message
):
    assert cli.main(["fine-tune", "--project", str(tiny_bot), "--lora", lora]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines
    assert count(remote_env.client, "files") == 0 and count(remote_env.client, "jobs") == 0
    assert not (tiny_bot / "gpt3_models.yml").exists()


@pytest.mark.parametrize("epochs", ["-1", "0", "51"])
def test_cli_fine_tune_refuses_epochs_the_api_would_not_take_before_uploading(remote_env, tiny_bot, capsys, epochs):
    # -1 once printed a negative cost and uploaded before the backend refused; 0 silently meant "auto"
    assert cli.main(["fine-tune", "--project", str(tiny_bot), "--epochs", epochs]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"error: epochs must be a whole number from 1 to 50, not {epochs} (leave it out to have it chosen from the "
        "data size)"
    ]
    assert "$-" not in captured.out + captured.err
    assert count(remote_env.client, "files") == 0 and count(remote_env.client, "jobs") == 0
    assert not (tiny_bot / "gpt3_models.yml").exists()
    with pytest.raises(DataError, match="epochs must be a whole number"):
        finetune.estimate_cost([intent_record("hi", "greet", "chat")], resolve_base_model("gpt-4o-mini"), int(epochs))


def test_ctrl_c_leaves_the_job_running_and_says_how_to_resume(remote_env, tmp_path, intent_export, monkeypatch, capsys):
    from rasa_gpt3.progress import TqdmProgressBar

    started = finetune.ensure_fine_tuned(
        Settings.from_env(tmp_path), intent_export, project_name="tiny-bot", wait=False
    )

    def interrupt(self, progress, message=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(TqdmProgressBar, "update", interrupt)
    assert cli.main(["follow", started.job_id, "--project", str(tmp_path)]) == 130
    assert f"Resume with: rasa-gpt3 follow {started.job_id} --project {tmp_path}" in capsys.readouterr().err
    assert remote_env.client.fine_tuning.jobs.retrieve(started.job_id).status != "cancelled"


def test_validation_errors_stop_before_anything_is_uploaded(local_settings, intent_export):
    from dataclasses import replace

    from rasa_gpt3.data.validation import Finding, ValidationReport

    report = ValidationReport(
        source="intent export",
        findings=[Finding(check="min_examples", severity="error", message="only 3 examples", fix="add examples")],
    )
    with pytest.raises(DataError, match="only 3 examples; add examples") as caught:
        finetune.ensure_fine_tuned(local_settings, replace(intent_export, report=report), project_name="tiny-bot")
    assert "\n" not in str(caught.value)
    assert not local_settings.local_state_dir.exists()  # no backend was even started
