"""The registry file: YAML round trip, stable bytes, active/history moves, use, prune, malformed input."""

import pytest

from rasa_gpt3.errors import ProjectError
from rasa_gpt3.registry import Registry, RegistryEntry


def entry(model, backend="local", created="2025-01-0{}T00:00:00Z", n=1, **more):
    return RegistryEntry(model=model, backend=backend, created=created.format(n), **more)


def test_round_trip_keeps_every_field_and_the_same_bytes(tmp_path):
    path = tmp_path / "gpt3_models.yml"
    registry = Registry.load(path)
    registry.record(
        "intent",
        entry(
            "ft:a",
            base_model="gpt-4o-mini-2024-07-18",
            format="chat",
            job="ftjob-1",
            fingerprint="f" * 64,
            prompt_format="1",
            epochs=3,
            key="k1",
            trained_tokens=120,
            metrics={"valid_loss": 0.25, "valid_accuracy": 0.9},
        ),
    )
    registry.record("entities", entry("ft:e", backend="api.openai.com"))
    registry.save()
    text = path.read_text()
    loaded = Registry.load(path)
    assert loaded.active("intent", "local") == registry.active("intent", "local")
    assert loaded.active("entities", "api.openai.com").model == "ft:e"
    assert loaded.to_yaml() == text  # saving an unchanged registry rewrites identical bytes
    assert text.startswith("#") and "prompt_format: '1'" in text
    assert text.index("intent:") < text.index("entities:")  # tasks in TASKS order, not insertion order


def test_a_new_active_model_pushes_the_old_one_into_history_newest_first(tmp_path):
    registry = Registry(tmp_path / "r.yml")
    for n, model in enumerate(("ft:a", "ft:b", "ft:c"), start=1):
        registry.record("intent", entry(model, n=n))
    assert registry.active("intent", "local").model == "ft:c"
    assert [e.model for e in registry.history("intent", "local")] == ["ft:b", "ft:a"]
    registry.record("intent", entry("ft:c", n=4))  # re-recording never duplicates
    assert [e.model for e in registry.history("intent", "local")] == ["ft:b", "ft:a"]


def test_backends_are_kept_apart(tmp_path):
    registry = Registry(tmp_path / "r.yml")
    registry.record("intent", entry("ft:local"))
    registry.record("intent", entry("ft:remote", backend="api.openai.com"))
    assert registry.active("intent", "local").model == "ft:local"
    assert registry.active("intent", "api.openai.com").model == "ft:remote"
    assert registry.history("intent", "local") == []


def test_use_promotes_a_model_from_history(tmp_path):
    registry = Registry(tmp_path / "r.yml")
    registry.record("intent", entry("ft:a", n=1, fingerprint="old"))
    registry.record("intent", entry("ft:b", n=2))
    registry.use("intent", "local", "ft:a")
    assert registry.active("intent", "local").fingerprint == "old"
    assert [e.model for e in registry.history("intent", "local")] == ["ft:b"]


def test_find_matches_fingerprint_and_key_in_active_and_history(tmp_path):
    registry = Registry(tmp_path / "r.yml")
    registry.record("intent", entry("ft:a", n=1, fingerprint="fa", key="ka"))
    registry.record("intent", entry("ft:b", n=2, fingerprint="fb", key="kb"))
    assert registry.find("intent", "local", "fa").model == "ft:a"
    assert registry.find("intent", "local", key="kb").model == "ft:b"
    assert registry.find("intent", "local", "fa", key="kb") is None
    assert registry.find("entities", "local", "fa") is None


def test_prune_keeps_active_models_and_the_newest_history(tmp_path):
    registry = Registry(tmp_path / "r.yml")
    for n in range(1, 6):
        registry.record("intent", entry(f"ft:{n}", n=n))
    removed = registry.prune(keep=2, drop={"ft:4"})
    assert [e.model for _, _, e in removed] == ["ft:4", "ft:1"]
    assert registry.active("intent", "local").model == "ft:5"
    assert [e.model for e in registry.history("intent", "local")] == ["ft:3", "ft:2"]


def test_a_missing_file_is_an_empty_registry(tmp_path):
    assert Registry.load(tmp_path / "none.yml").active("intent", "local") is None


@pytest.mark.parametrize(
    "text,message",
    [
        ("tasks: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
        ("version: 7\ntasks: {}", "version 7 is not supported"),
        ("tasks:\n  intent:\n    local:\n      active: {base_model: x}", "needs at least `model"),
    ],
)
def test_a_malformed_file_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "gpt3_models.yml"
    path.write_text(text)
    with pytest.raises(ProjectError, match=message) as caught:
        Registry.load(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_hand_written_timestamps_are_read_back_as_text(tmp_path):
    path = tmp_path / "gpt3_models.yml"
    path.write_text(
        "tasks:\n  intent:\n    local:\n      active:\n        model: ft:x\n        created: 2025-01-02T03:04:05Z\n"
    )
    assert Registry.load(path).active("intent", "local").created.startswith("2025-01-02T03:04:05")


def test_concurrent_editors_lose_no_record(tmp_path):
    """Writers in several processes (e.g. two `rasa train`s) each add a model; the lock keeps every one."""
    import multiprocessing

    path = tmp_path / "gpt3_models.yml"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_one, args=(path, task)) for task in ("intent", "entities", "response")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    registry = Registry.load(path)
    assert {task: registry.active(task, "local").model for task in ("intent", "entities", "response")} == {
        task: f"ft:m:{task}" for task in ("intent", "entities", "response")
    }


def _record_one(path, task):
    import time

    with Registry.editing(path) as registry:
        time.sleep(0.3)  # hold the file long enough for the writers to overlap
        registry.record(task, RegistryEntry(model=f"ft:m:{task}", backend="local", base_model="b"))
