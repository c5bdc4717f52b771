"""Serving the tiny stand-in with LoRA adapters: real next-token logprobs, stops, seeds, swaps, export, errors."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter

import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.local.lora.adapter_files import read_adapter, vllm_instructions, write_adapter
from rasa_gpt3.local.lora.errors import BASE_MODEL_NOT_FOUND, CONTEXT_LENGTH_EXCEEDED, INVALID_ADAPTER, LoraError
from rasa_gpt3.local.lora.serving import MAX_TOP_LOGPROBS, AdapterHost, host_for


@pytest.fixture(scope="module")
def host(tiny_base):
    return AdapterHost(tiny_base, device="cpu")


def _question(text):
    return prompts.intent_request(text, "chat")["messages"]


def _vocabulary_pieces(tokenizer):
    return {tokenizer.decode([i], skip_special_tokens=False) for i in range(len(tokenizer))}


def test_top_20_are_tokenizer_pieces_with_the_models_probabilities(host, trained, tiny_tokenizer, tiny_codec):
    result, _, _ = trained
    generation = host.generate(result.path, messages=_question("what is my balance"), max_tokens=1, top_logprobs=20)
    assert generation.finish_reason == "length"
    assert len(generation.tokens) == len(generation.logprobs) == len(generation.top) == 1
    top = generation.top[0]
    assert len(top) == MAX_TOP_LOGPROBS
    probabilities = [math.exp(logprob) for _, logprob in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    pieces = [piece for piece, _ in top]
    assert set(pieces) <= _vocabulary_pieces(tiny_tokenizer)
    assert set(pieces) - {tiny_codec.token_of(intent) for intent in tiny_codec.labels}  # non-label tokens too
    # greedy: the generated token is the most likely one, with the same logprob
    assert generation.tokens[0] == pieces[0] and generation.logprobs[0] == top[0][1]


def test_the_trained_adapter_answers_held_out_messages_with_labels(host, trained, tiny_codec, financial_demo_export):
    result, _, _ = trained
    valid = financial_demo_export.valid
    correct = 0
    for record in valid:
        generation = host.generate(result.path, messages=record["messages"][:-1], max_tokens=3)
        intent = financial_demo_export.codec.intent_of(record["messages"][-1]["content"])
        correct += tiny_codec.intent_of(generation.text) == intent
    majority = Counter(financial_demo_export.valid_labels).most_common(1)[0][1] / len(valid)
    assert correct / len(valid) > majority, (correct / len(valid), majority)


def test_a_label_answer_ends_with_finish_reason_stop_at_the_end_of_turn(host, trained, tiny_codec):
    result, _, _ = trained
    generation = host.generate(result.path, messages=_question("hello"), max_tokens=10)
    assert generation.finish_reason == "stop"
    assert generation.completion_tokens == len(generation.tokens) + 1  # the end-of-turn token, not shown
    assert "<|im_end|>" not in generation.text


def test_base_model_and_adapter_differ_and_swapping_back_restores_each(host, trained, tiny_base):
    result, _, _ = trained
    question = _question("I want to pay my credit card")
    with_adapter = host.generate(result.path, messages=question, max_tokens=4, top_logprobs=3)
    bare = host.generate(None, messages=question, max_tokens=4, top_logprobs=3)
    assert bare.top != with_adapter.top
    assert host.generate(result.path, messages=question, max_tokens=4, top_logprobs=3).top == with_adapter.top
    assert host.generate(None, messages=question, max_tokens=4, top_logprobs=3).top == bare.top
    assert host_for(tiny_base, "cpu") is host_for(tiny_base, "cpu")  # the base model is loaded once per process


def test_seeded_sampling_repeats_and_seeds_differ(host, trained):
    result, _, _ = trained

    def sample(seed):
        return host.generate(result.path, prompt="hello there", max_tokens=8, temperature=1.5, seed=seed).text

    assert sample(11) == sample(11)
    assert len({sample(seed) for seed in range(6)}) > 1
    greedy = [host.generate(result.path, prompt="hello there", max_tokens=8, temperature=0).text for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_stop_sequence_cuts_the_text_like_openai(host):
    full = host.generate(None, prompt="transfer money", max_tokens=12)
    assert full.finish_reason == "length" and len(full.text) >= 6
    stop = full.text[3:5]
    cut = host.generate(None, prompt="transfer money", max_tokens=12, stop=[stop, "never appears"])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert len(cut.tokens) == len(cut.logprobs) == len(cut.top)


def test_a_character_split_across_tokens_comes_out_whole(host, tiny_tokenizer):
    text = "pay 5 € to the café"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    # the tokenizer never saw these characters: each is two or three byte tokens, so a prefix can end inside one
    assert any(tiny_tokenizer.decode(ids[:end]).endswith("\ufffd") for end in range(1, len(ids)))
    anchor = host.tokenizer(prompts.SEPARATOR, add_special_tokens=False)["input_ids"][-3:]
    answers = [host.answer_text(anchor, ids[:end]) for end in range(1, len(ids) + 1)]
    assert answers[-1] == text and not any("\ufffd" in answer for answer in answers)
    # every step's text extends the one before, so the pieces a generation reports add up to the whole text
    assert all(longer.startswith(shorter) for shorter, longer in zip(answers, answers[1:]))


def test_concurrent_requests_on_two_adapters_get_their_own_answers(host, trained):
    result, _, _ = trained
    adapters = [result.path, result.checkpoints[0].path]
    questions = [_question(text) for text in ("hi", "show my transactions", "bye", "send money to Anna")]
    expected = {
        (a, q): host.generate(adapters[a], messages=questions[q], max_tokens=3, top_logprobs=2).top
        for a in range(2)
        for q in range(4)
    }
    assert expected[(0, 0)] != expected[(1, 0)]
    got = {}

    def ask(a, q):
        for _ in range(3):
            got.setdefault((a, q), []).append(
                host.generate(adapters[a], messages=questions[q], max_tokens=3, top_logprobs=2).top
            )

    threads = [threading.Thread(target=ask, args=key) for key in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answers == [expected[key]] * 3 for key, answers in got.items())


def test_counts_and_context_length_come_from_tokenizer_and_config(host, tiny_tokenizer):
    question = _question("what is my balance")
    rendered = tiny_tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert host.prompt_tokens(messages=question) == len(tiny_tokenizer(rendered)["input_ids"])
    assert host.count_tokens("what is my balance") == len(tiny_tokenizer("what is my balance")["input_ids"])
    assert host.context_length == 1024
    with pytest.raises(LoraError) as raised:
        host.generate(None, prompt="hello " * 600, max_tokens=500)
    assert raised.value.code == CONTEXT_LENGTH_EXCEEDED and "1024" in raised.value.message


def test_an_adapter_read_into_arrays_and_written_back_answers_the_same(host, trained, tmp_path):
    result, _, _ = trained
    weights = read_adapter(result.path)
    assert weights.config["r"] == 16 and all(value.dtype.name == "float32" for value in weights.tensors.values())
    written = write_adapter(weights, tmp_path / "export", base_model_name="ORG/tiny")
    assert sorted(p.name for p in written) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "ORG/tiny" and config["peft_type"] == "LORA"
    question = _question("are you a bot")
    answers = [
        host.generate(adapter, messages=question, max_tokens=3, top_logprobs=5).top
        for adapter in (result.path, tmp_path / "export", weights)
    ]
    assert answers[0] == answers[1] == answers[2]
    assert host.unload_adapter(weights) and not host.unload_adapter(weights)
    text = vllm_instructions("ORG/tiny", "bot-intents", tmp_path / "export", rank=32)
    assert "--enable-lora" in text and "--max-logprobs 20" in text and "--max-lora-rank 32" in text
    # the bot names the base model as the local backend does, so its components read the answers with its labels
    assert "`model: bot-intents` with `base_model: hf:ORG/tiny`" in text


def test_weights_that_do_not_fit_the_base_model_are_refused_and_leave_the_others(host, trained, tmp_path):
    from rasa_gpt3.local.lora.adapter_files import AdapterWeights

    result, _, _ = trained
    weights = read_adapter(result.path)
    question = _question("bye")
    before = host.generate(result.path, messages=question, max_tokens=2, top_logprobs=3).top
    renamed = AdapterWeights(
        config=weights.config, tensors={k.replace("layers.0", "layers.7"): v for k, v in weights.tensors.items()}
    )
    with pytest.raises(LoraError) as raised:
        host.generate(renamed, messages=question, max_tokens=1)
    assert raised.value.code == INVALID_ADAPTER
    assert host.generate(result.path, messages=question, max_tokens=2, top_logprobs=3).top == before


def test_not_an_adapter_fails_clearly(host, tmp_path):
    with pytest.raises(LoraError) as raised:
        host.generate(tmp_path, prompt="hi", max_tokens=1)
    assert raised.value.code == INVALID_ADAPTER and str(tmp_path) in raised.value.message
    with pytest.raises(LoraError):
        read_adapter(tmp_path)


def test_missing_base_model_directory_fails_clearly(tmp_path):
    from rasa_gpt3.local.lora.base_model import resolve_base_model

    for name in (str(tmp_path / "nope"), str(tmp_path)):
        with pytest.raises(LoraError) as raised:
            resolve_base_model(name)
        assert raised.value.code == BASE_MODEL_NOT_FOUND and str(tmp_path) in raised.value.message


def test_hub_model_offline_and_not_cached_is_refused_in_one_line(tmp_path, monkeypatch):
    from rasa_gpt3.local.lora.base_model import resolve_base_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    announced = []
    with pytest.raises(LoraError) as raised:
        resolve_base_model("hf:Qwen/Qwen2.5-0.5B-Instruct", announce=announced.append)
    message = raised.value.message
    assert raised.value.code == BASE_MODEL_NOT_FOUND and "\n" not in message
    assert "hf:Qwen/Qwen2.5-0.5B-Instruct" in message and str(tmp_path / "hub") in message
    assert "HF_HUB_OFFLINE" in message
    assert announced == []


def test_hub_model_in_the_cache_resolves_offline(tmp_path, monkeypatch, tiny_base):
    import shutil

    from rasa_gpt3.local.lora.base_model import resolve_base_model

    # the cache layout huggingface_hub writes: refs/main names the snapshot holding the files
    repo = tmp_path / "hub" / "models--ORG--tiny"
    shutil.copytree(tiny_base.path, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_base_model("hf:ORG/tiny")
    assert source.path == repo / "snapshots" / ("0" * 40) and source.serving_name == "ORG/tiny"
    with pytest.raises(LoraError) as raised:
        resolve_base_model("hf:not-a-repo-id")
    assert raised.value.code == BASE_MODEL_NOT_FOUND
