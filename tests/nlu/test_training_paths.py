"""How `train()` picks the model on a remote API: registry for this data, fine-tune within max_cost_usd, or a clear
error; persist/load through Rasa's ModelStorage. The "remote API" is a local backend reached through
OPENAI_BASE_URL with a key, which is exactly how rasa_gpt3 talks to OpenAI."""

import pytest
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.nlu.training_data.loading import load_data

from rasa_gpt3.nlu.entity_extractor import GPT3EntityExtractor
from rasa_gpt3.nlu.intent_classifier import GPT3IntentClassifier
from rasa_gpt3.nlu.task_model import GPT3ComponentError, obtain_task_model
from rasa_gpt3.registry import Registry

from .pipeline_checks import TINY_BOT


@pytest.fixture
def remote(local_backend, tmp_path, monkeypatch):
    monkeypatch.delenv("RASA_GPT3_LOCAL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    monkeypatch.setenv("OPENAI_BASE_URL", local_backend.base_url)
    project = tmp_path / "bot"
    project.mkdir()
    return local_backend, project


@pytest.fixture(scope="module")
def training_data():
    return load_data(str(TINY_BOT / "data" / "nlu.yml"))


def component(cls, tmp_path, name="c", **config):
    (tmp_path / f"storage-{name}").mkdir()
    storage = LocalModelStorage(tmp_path / f"storage-{name}")
    context = ExecutionContext(GraphSchema({}), "test")
    return cls.create({**cls.get_default_config(), **config}, storage, Resource(name), context), storage


def uploads(backend):
    return backend.stats()["by_route"].get("POST /v1/files", 0)


def test_without_permission_to_fine_tune_nothing_is_uploaded(remote, tmp_path, training_data):
    backend, project = remote
    classifier, _ = component(GPT3IntentClassifier, tmp_path, project=str(project))
    with pytest.raises(GPT3ComponentError, match="rasa-gpt3 fine-tune --task intent"):
        classifier.train(training_data)
    assert uploads(backend) == 0


def test_above_max_cost_nothing_is_uploaded(remote, tmp_path, training_data):
    backend, project = remote
    classifier, _ = component(GPT3IntentClassifier, tmp_path, project=str(project), fine_tune=True, max_cost_usd=0.0001)
    with pytest.raises(GPT3ComponentError, match="above max_cost_usd"):
        classifier.train(training_data)
    assert uploads(backend) == 0


def test_fine_tune_then_reuse_from_the_registry_then_persist_and_load(remote, tmp_path, training_data):
    backend, project = remote
    classifier, storage = component(GPT3IntentClassifier, tmp_path, "a", project=str(project), fine_tune=True)
    resource = classifier.train(training_data)
    model = classifier.task_model.model
    entry = Registry.load(project / "gpt3_models.yml").active("intent", "127.0.0.1")
    assert entry.model == model and entry.fingerprint == classifier.task_model.fingerprint

    # the same data again, fine-tuning not allowed: the registry's model, found without any API call
    backend.server.stop()
    again, _ = component(GPT3IntentClassifier, tmp_path, "b", project=str(project))
    again.train(training_data)
    assert again.task_model.model == model

    loaded = GPT3IntentClassifier.load(
        {**GPT3IntentClassifier.get_default_config(), "project": str(project)},
        storage,
        resource,
        ExecutionContext(GraphSchema({}), "test"),
    )
    assert loaded.task_model == classifier.task_model
    assert loaded.served_model.labels == classifier.served_model.labels
    assert set(loaded.served_model.labels) >= {"greet", "faq/ask_fee"}


def test_an_explicit_model_is_used_as_is(remote, tmp_path, training_data):
    _, project = remote
    extractor, _ = component(
        GPT3EntityExtractor, tmp_path, project=str(project), model="ft:gpt-4o-mini-2024-07-18:acme:x:1"
    )
    extractor.train(training_data)
    assert extractor.task_model.model == "ft:gpt-4o-mini-2024-07-18:acme:x:1"
    assert extractor.served_model.entity_types == {"account_type", "amount", "PERSON"}


@pytest.fixture
def registry_reads(monkeypatch):
    """Every path Registry.load reads from now on (the load under the lock of Registry.editing included)."""
    reads = []
    load = Registry.load.__func__

    def counting_load(cls, path):
        reads.append(path)
        return load(cls, path)

    monkeypatch.setattr(Registry, "load", classmethod(counting_load))
    return reads


@pytest.fixture
def local_project(tmp_path, monkeypatch):
    """A bot project on its own embedded local backend."""
    from rasa_gpt3.local.embedded import stop_server

    state = tmp_path / "local-state"
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RASA_GPT3_LOCAL", "1")
    monkeypatch.setenv("RASA_GPT3_STATE_DIR", str(state))
    project = tmp_path / "bot"
    project.mkdir()
    yield project
    stop_server(state)


def test_training_reads_the_registry_once_and_once_more_under_the_lock_to_record(
    local_project, training_data, registry_reads
):
    config = {**GPT3IntentClassifier.get_default_config(), "project": str(local_project)}
    trained = obtain_task_model("intent", training_data, config, "GPT3IntentClassifier")
    assert registry_reads == [local_project / "gpt3_models.yml"] * 2  # a new model: read, then recorded

    registry_reads.clear()
    again = obtain_task_model("intent", training_data, config, "GPT3IntentClassifier")
    assert again.model == trained.model and len(registry_reads) == 1  # the same model, reused

    registry_reads.clear()
    explicit = obtain_task_model("intent", training_data, {**config, "model": trained.model}, "GPT3IntentClassifier")
    assert explicit.model == trained.model and len(registry_reads) == 1


def test_on_a_remote_api_training_reads_the_registry_once_per_run(remote, tmp_path, training_data, registry_reads):
    _, project = remote
    config = {**GPT3IntentClassifier.get_default_config(), "project": str(project), "fine_tune": True}
    trained = obtain_task_model("intent", training_data, config, "GPT3IntentClassifier")
    assert len(registry_reads) == 2  # read, then the new model recorded under the lock
    registry_reads.clear()
    assert obtain_task_model("intent", training_data, config, "GPT3IntentClassifier").model == trained.model
    assert len(registry_reads) == 1
