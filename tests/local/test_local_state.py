"""The local backend's state on disk: survives restarts, is shared safely by several servers and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rasa_gpt3 import prompts

REPO = Path(__file__).resolve().parents[2]


def _wait(predicate, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def test_state_survives_a_restart(start_local_backend, tmp_path, intent_records):
    state = tmp_path / "state"
    first = start_local_backend(state)
    job = first.fine_tune(intent_records("chat"), metadata={"task": "intent"})
    events = [e.id for e in first.client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    first.server.stop()

    second = start_local_backend(state)
    again = second.client.fine_tuning.jobs.retrieve(job.id)
    assert again.status == "succeeded" and again.fine_tuned_model == job.fine_tuned_model
    assert [e.id for e in second.client.fine_tuning.jobs.list_events(job.id, limit=1000)] == events
    assert second.client.files.retrieve(job.training_file).bytes > 0
    answer = second.client.chat.completions.create(
        model=job.fine_tuned_model, **prompts.intent_request("see you later, bye", "chat")
    )
    assert answer.choices[0].message.content == "goodbye"


def test_two_servers_on_one_state_dir_train_each_job_once(start_local_backend, tmp_path, intent_records):
    state = tmp_path / "shared"
    one, two = start_local_backend(state), start_local_backend(state)
    file_id = one.upload_records(intent_records("chat"))
    jobs = [
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id, metadata={"task": "intent"})
        for client in (one.client, two.client, one.client, two.client)
    ]
    for job in jobs:
        done = _wait(
            lambda job_id=job.id: (lambda j: j if j.status in ("succeeded", "failed") else None)(
                one.client.fine_tuning.jobs.retrieve(job_id)
            )
        )
        assert done.status == "succeeded", done.error
        started = [
            e
            for e in two.client.fine_tuning.jobs.list_events(job.id, limit=1000)
            if e.message == "Fine-tuning job started"
        ]
        assert len(started) == 1
        two.client.models.retrieve(done.fine_tuned_model)


def test_a_job_whose_training_process_died_is_trained_by_another(start_local_backend, tmp_path, intent_records):
    state = tmp_path / "orphan"
    backend = start_local_backend(state)
    backend.server.backend.runner.stop()  # this server must not grab the job before the other process does
    job = backend.client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=backend.upload_records(intent_records("chat")), metadata={"task": "intent"}
    )
    claimer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from rasa_gpt3.local.store import Store
            store = Store({str(state)!r})
            lock = store.try_claim_job({job.id!r})
            assert lock is not None
            store.update_job({job.id!r}, lambda job: job.update(status="running"))
            print("claimed", flush=True)
            time.sleep(600)
        """),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert claimer.stdout.readline().strip() == "claimed"
        other = start_local_backend(state)
        time.sleep(1.5)  # several polls: the lock is held, so nobody else trains it
        assert other.client.fine_tuning.jobs.retrieve(job.id).status == "running"
    finally:
        os.kill(claimer.pid, signal.SIGKILL)
        claimer.wait(timeout=10)
    done = _wait(
        lambda: (lambda j: j if j.status in ("succeeded", "failed") else None)(
            other.client.fine_tuning.jobs.retrieve(job.id)
        )
    )
    assert done.status == "succeeded"
    messages = [e.message for e in other.client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert any(m.startswith("Training restarted") for m in messages)


def test_state_files_are_plain_and_ids_cannot_escape(local_backend, intent_records):
    job = local_backend.fine_tune(intent_records("chat"), metadata={"task": "intent"})
    state = local_backend.state_dir
    assert (state / "jobs" / f"{job.id}.json").is_file()
    key = job.fine_tuned_model.rsplit(":", 1)[1]
    assert (state / "models" / f"{key}.npz").is_file() and (state / "models" / f"{key}.json").is_file()
    assert not list(state.rglob("*.tmp"))
    from rasa_gpt3.local.store import NotFound, Store

    store = Store(state)
    for bad in ("../jobs/x", "file-../../x", "file-a/b"):
        try:
            store.get_file(bad)
        except NotFound:
            continue
        raise AssertionError(f"{bad} was accepted")
