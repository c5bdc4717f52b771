"""Export, validation and the fine-tune cost guard with an open-weights base model: its tokenizer, its context."""

from __future__ import annotations

import pytest

from rasa_gpt3.data.base_models import resolve_base_model
from rasa_gpt3.errors import DataError
from tests.conftest import FINANCIAL_DEMO


@pytest.fixture(scope="module")
def financial_demo():
    from rasa_gpt3.data.project import load_project

    return load_project(FINANCIAL_DEMO)


def test_an_open_weights_base_model_by_directory_or_hub_name(tiny_base, tmp_path):
    model = resolve_base_model(str(tiny_base.path))
    assert (model.name, model.format, model.context, model.open_weights) == (str(tiny_base.path), "chat", 1024, True)
    assert model.encoding == model.name and model.training_cost(10**9) == 0
    assert model.training_cost_text(1000).startswith("local")
    assert resolve_base_model("hf:Qwen/Qwen2.5-0.5B-Instruct").open_weights  # not downloaded: described only
    assert not resolve_base_model("gpt-4o-mini").open_weights
    with pytest.raises(ValueError, match="does not exist"):
        resolve_base_model(str(tmp_path / "missing"))


def test_export_labels_and_counts_with_the_models_own_tokenizer(financial_demo, tiny_base, tiny_tokenizer):
    from rasa_gpt3 import prompts
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.local.lora.rendering import emitted_label_ids

    exported = export_task(
        "intent", financial_demo.nlu, financial_demo.domain, financial_demo.stories, base_model=str(tiny_base.path)
    )
    assert exported.fmt == "chat" and exported.codec.encoding == f"hf:{tiny_base.path}"
    for label in exported.codec.labels.values():  # one token of the tiny tokenizer as the model writes it
        assert len(emitted_label_ids(tiny_tokenizer, prompts.label_token(label, "chat"), "chat")) == 1
    assert not [f for f in exported.report.findings if f.check == "single_token_labels"]
    tokens = exported.manifest["tokens"]
    assert tokens["context_limit"] == 1024
    # the tiny tokenizer (a few thousand pieces) needs more tokens than o200k_base for the same records
    openai = export_task("intent", financial_demo.nlu, financial_demo.domain, financial_demo.stories)
    assert tokens["train"] != openai.manifest["tokens"]["train"]
    assert exported.report.stats["estimate"]["local"] is True
    assert "local (no price" in exported.report.render()


def test_the_cost_guard_does_not_apply_to_a_local_model(financial_demo, tiny_base):
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.errors import BudgetError
    from rasa_gpt3.finetune import check_budget, estimate_cost

    exported = export_task("intent", financial_demo.nlu, base_model=str(tiny_base.path))
    estimate = estimate_cost(exported.train, exported.base_model, 20)
    assert estimate.local and estimate.usd == 0 and estimate.describe().startswith("local, no price")
    check_budget(estimate, 0.0)  # nothing to spend
    priced = estimate_cost(export_task("intent", financial_demo.nlu).train, resolve_base_model("gpt-4o-mini"), 20)
    with pytest.raises(BudgetError):
        check_budget(priced, 0.0)
    with pytest.raises(DataError, match="fine-tuned in the chat format, not completion"):
        export_task("intent", financial_demo.nlu, fmt="completion", base_model=str(tiny_base.path))
