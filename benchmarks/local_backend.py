"""Figures of the local backend's intent model, every fine-tune through the official SDK over real HTTP.

For each candidate embedder (--embedders, default all), with the trainer's head:
  * banking77 accuracy on the official test split (3,080 texts) after fine-tuning on 10 and 30 examples per intent,
    --repeats training samples (seeds 0, 1, ...): mean ± standard deviation. The test texts are scored in this
    process with the stored model (LocalModel.class_probabilities, the arrays the server answers with, batched for
    speed); --check-requests of them also go through the SDK and the agreement is printed;
  * fine-tune seconds, job creation to `succeeded`: banking77 10- and 30-shot, and financial-demo's NLU intents;
  * classification latency p50/p95 over --latency-requests sequential SDK chat completions (max_tokens 1,
    logprobs, top_logprobs 5), and the server's own share (openai-processing-ms).
First, for the default embedder, out-of-scope detection: --oos-intents banking77 intents are held out of training
(10 shots of the others), thresholds are chosen on held-out train texts (10 per intent) with
rasa_gpt3.evaluation.threshold (in-scope only, as `evaluate` does on a bot's test split; and with the held-out
intents' train texts as out-of-scope examples), and applied to the official test split: in-scope accuracy
(a fallback counts as an error) and out-of-scope recall (share sent to the fallback).
--full adds the full-train-split job (10,003 examples) of the default embedder.

    .venv/bin/python benchmarks/local_backend.py [--embedders minilm+use,use+tfidf] [--repeats 3] [--full]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rasa_gpt3 import prompts  # noqa: E402
from rasa_gpt3.evaluation.threshold import apply_threshold, recommend_threshold  # noqa: E402
from rasa_gpt3.local.embedded import EmbeddedServer  # noqa: E402
from rasa_gpt3.local.embedder import EMBEDDERS, default_embedder_name  # noqa: E402
from rasa_gpt3.local.model import LocalModel  # noqa: E402
from rasa_gpt3.local.store import Store  # noqa: E402

CORPORA = REPO.parent / "shared" / "corpora"
BANKING77 = CORPORA / "banking77" / "banking_data"
FINANCIAL_DEMO = CORPORA / "financial-demo"


def read_split(name):
    with open(BANKING77 / f"{name}.csv", newline="", encoding="utf-8") as stream:
        return [(row["text"], row["category"]) for row in csv.DictReader(stream)]


def by_intent(rows):
    grouped = defaultdict(list)
    for text, intent in rows:
        grouped[intent].append(text)
    return grouped


def sample(rows, shots, seed, intents=None):
    """`shots` texts of each intent (all intents, or `intents`), drawn with `seed`."""
    grouped = by_intent(rows)
    rng = random.Random(seed)
    return [
        (text, intent)
        for intent in sorted(intents or grouped)
        for text in rng.sample(grouped[intent], min(shots, len(grouped[intent])))
    ]


def financial_demo_rows():
    """financial-demo's NLU intent examples as (text, intent), read with Rasa's loader and the exporter's rules."""
    from rasa.shared.nlu.training_data.loading import load_data

    from rasa_gpt3.data.export import intent_examples

    return [(text, intent) for intent, text in intent_examples(load_data(str(FINANCIAL_DEMO / "data" / "nlu")))]


def fine_tune(client, rows, embedder, seed=0):
    records = [prompts.intent_record(text, intent, "chat") for text, intent in rows]
    data = "\n".join(json.dumps(record) for record in records).encode("utf-8")
    started = time.perf_counter()
    upload = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=upload.id, seed=seed, metadata={"task": "intent", "embedder": embedder}
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    return job, time.perf_counter() - started


def classify(client, model, text, server_ms=None, max_tokens=1):
    """The answer and the round trip in ms; max_tokens 1 is GPT3IntentClassifier's request (the label's first token),
    more returns the whole label."""
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
        top_logprobs=5,
        **prompts.intent_request(text, "chat"),
    )
    response = raw.parse()
    elapsed = (time.perf_counter() - started) * 1000
    if server_ms is not None:
        server_ms.append(float(raw.headers["openai-processing-ms"]))
    return response.choices[0].message.content, elapsed


def stored_model(server, model_id):
    store = Store(server.state_dir)
    return LocalModel(store.get_model(model_id), store.model_arrays(model_id))


def predictions(model, texts):
    """(predicted intent, its probability) per text, from the stored model in this process."""
    probabilities = model.class_probabilities(texts)
    best = probabilities.argmax(axis=1)
    return [(model.answers[i], float(probabilities[row, i])) for row, i in enumerate(best)]


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def spread(values):
    mean = statistics.mean(values)
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {deviation:.3f}"


def measure_candidate(client, server, embedder, train_rows, test_rows, financial_rows, args):
    """Accuracy per shot count, fine-tune seconds and latency of one embedder."""
    texts = [text for text, _ in test_rows]
    result = {"accuracy": {}, "seconds": {}}
    for shots in args.shots:
        scores, seconds = [], []
        for repeat in range(args.repeats):
            job, took = fine_tune(client, sample(train_rows, shots, seed=repeat), embedder, seed=repeat)
            seconds.append(took)
            model = stored_model(server, job.fine_tuned_model)
            predicted = predictions(model, texts)
            scores.append(sum(label == intent for (label, _), (_, intent) in zip(predicted, test_rows)) / len(texts))
            if repeat == 0 and args.check_requests:
                agree = sum(
                    classify(client, job.fine_tuned_model, texts[i], max_tokens=16)[0] == predicted[i][0]
                    for i in range(args.check_requests)
                )
                result.setdefault("agreement", []).append(f"{agree}/{args.check_requests}")
            if repeat == 0 and shots == args.shots[0]:
                latency_model = job.fine_tuned_model
            print(
                f"    {embedder} {shots}-shot seed {repeat}: accuracy {scores[-1]:.4f}, fine-tune {took:.1f} s",
                flush=True,
            )
        result["accuracy"][shots], result["seconds"][shots] = scores, seconds
    if financial_rows:
        _, took = fine_tune(client, financial_rows, embedder)
        result["seconds"]["financial-demo"] = [took]
    latencies, server_ms = [], []
    for text in texts[-20:]:
        classify(client, latency_model, text)  # warm-up, not measured
    for text in texts[: args.latency_requests]:
        latencies.append(classify(client, latency_model, text, server_ms)[1])
    result["latency"] = (percentile(latencies, 0.5), percentile(latencies, 0.95), percentile(server_ms, 0.5))
    return result


def scope_split(model, rows, held_out):
    """(confidence, correct) of the in-scope rows and the confidences of the rows whose intent is in `held_out`."""
    predicted = predictions(model, [text for text, _ in rows])
    scope = [
        (confidence, label == intent)
        for (label, confidence), (_, intent) in zip(predicted, rows)
        if intent not in held_out
    ]
    outside = [confidence for (_, confidence), (_, intent) in zip(predicted, rows) if intent in held_out]
    return scope, outside


def out_of_scope(client, server, embedder, train_rows, test_rows, args):
    """In-scope accuracy and out-of-scope recall at the recommended thresholds, banking77 with held-out intents."""
    intents = sorted(by_intent(train_rows))
    rules = defaultdict(lambda: defaultdict(list))
    for repeat in range(args.repeats):
        held_out = set(random.Random(1000 + repeat).sample(intents, args.oos_intents))
        known = [intent for intent in intents if intent not in held_out]
        training = sample(train_rows, 10, seed=repeat, intents=known)
        used = set(training)
        unused = [(text, intent) for text, intent in train_rows if (text, intent) not in used]
        validation = sample(unused, 10, seed=500 + repeat)
        job, _ = fine_tune(client, training, embedder, seed=repeat)
        model = stored_model(server, job.fine_tuned_model)
        valid_scope, valid_outside = scope_split(model, validation, held_out)
        test_scope, test_outside = scope_split(model, test_rows, held_out)
        chosen = {
            "none (threshold 0)": 0.0,
            "Rasa's default 0.3": 0.3,
            "recommended, in-scope only": recommend_threshold(valid_scope).threshold,
            "recommended, with OOS examples": recommend_threshold(valid_scope, valid_outside).threshold,
        }
        for rule, threshold in chosen.items():
            accuracy, fallback_rate, recall = apply_threshold(threshold, test_scope, test_outside)
            for key, value in (
                ("threshold", threshold),
                ("accuracy", accuracy),
                ("fallback", fallback_rate),
                ("recall", recall),
            ):
                rules[rule][key].append(value)
        print(
            f"    OOS seed {repeat}: held out {sorted(held_out)[:3]}..., {len(test_scope)} in-scope / "
            f"{len(test_outside)} out-of-scope test texts",
            flush=True,
        )
    return rules


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedders", default=",".join(EMBEDDERS), help="comma-separated candidates")
    parser.add_argument("--repeats", type=int, default=3, help="training samples (seeds) per shot count")
    parser.add_argument("--shots", default="10,30", help="examples per intent, comma-separated")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--check-requests", type=int, default=50, help="test texts also sent through the SDK")
    parser.add_argument("--oos-intents", type=int, default=10, help="banking77 intents held out as out-of-scope")
    parser.add_argument("--skip-oos", action="store_true")
    parser.add_argument("--full", action="store_true", help="also the full-train-split job of the default embedder")
    args = parser.parse_args()
    args.shots = [int(value) for value in args.shots.split(",")]
    candidates = [name.strip() for name in args.embedders.split(",") if name.strip()]

    train_rows, test_rows = read_split("train"), read_split("test")
    financial_rows = financial_demo_rows() if (FINANCIAL_DEMO / "data" / "nlu").is_dir() else []
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="rasa-gpt3-bench-"))).start()
    client = openai.OpenAI(api_key="local", base_url=server.base_url, max_retries=0)
    default = default_embedder_name()
    print(
        f"banking77: {len(train_rows)} train / {len(test_rows)} test texts, 77 intents; financial-demo: "
        f"{len(financial_rows)} NLU examples, {len({i for _, i in financial_rows})} intents; default embedder "
        f"{default}; server {server.base_url}",
        flush=True,
    )

    if not args.skip_oos:
        rules = out_of_scope(client, server, default, train_rows, test_rows, args)
        print(
            f"\nout-of-scope ({default}): banking77, {args.oos_intents} of 77 intents held out of training, 10 shots "
            f"of the rest, thresholds chosen on held-out train texts, figures on the official test split "
            f"({args.repeats} seeds, mean ± sd)"
        )
        print(f"{'threshold rule':<32} {'threshold':>15} {'in-scope acc':>15} {'to fallback':>15} {'OOS recall':>15}")
        for rule, values in rules.items():
            print(
                f"{rule:<32} {spread(values['threshold']):>15} {spread(values['accuracy']):>15} "
                f"{spread(values['fallback']):>15} {spread(values['recall']):>15}"
            )

    shot_heads = " ".join(f"{f'{shots}-shot acc':>15}" for shots in args.shots)
    second_heads = " ".join(f"{f'ft s {shots}':>7}" for shots in args.shots)
    header = (
        f"{'embedder':<18} {shot_heads} {second_heads} {'ft s fin-demo':>13} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'server p50':>10}  SDK agrees"
    )
    rows = []
    for embedder in candidates:
        result = measure_candidate(client, server, embedder, train_rows, test_rows, financial_rows, args)
        accuracy = " ".join(f"{spread(result['accuracy'][shots]):>15}" for shots in args.shots)
        seconds = " ".join(f"{statistics.mean(result['seconds'][shots]):7.1f}" for shots in args.shots)
        financial = result["seconds"].get("financial-demo")
        p50, p95, server_p50 = result["latency"]
        mark = " (default)" if embedder == default else ""
        rows.append(
            f"{embedder + mark:<18} {accuracy} {seconds} {financial[0] if financial else float('nan'):13.1f} "
            f"{p50:7.1f} {p95:7.1f} {server_p50:10.1f}  {', '.join(result.get('agreement', []))}"
        )
        print(f"  {header}\n  {rows[-1]}", flush=True)
    print(
        f"\nbanking77 official test split, {args.repeats} seeds (mean ± sd); fine-tune seconds (mean) job creation "
        "to succeeded; latency over sequential SDK requests"
    )
    print("\n".join([header] + rows), flush=True)

    if args.full:
        job, took = fine_tune(client, train_rows, default)
        model = stored_model(server, job.fine_tuned_model)
        accuracy = sum(
            label == intent for (label, _), (_, intent) in zip(predictions(model, [t for t, _ in test_rows]), test_rows)
        ) / len(test_rows)
        print(
            f"\nfull train split ({len(train_rows)} examples, embedder {default}): job wall time {took:.1f} s, "
            f"test accuracy {accuracy:.3f}"
        )
    server.stop()


if __name__ == "__main__":
    main()
