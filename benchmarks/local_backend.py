"""Figures of the local backend on banking77, measured through the official SDK over real HTTP.

Prints:
  * accuracy on banking77's official test split after fine-tuning on 10 and 30 examples per intent, for each
    embedder (use+tfidf, use, tfidf), with the ratios use/tfidf and use+tfidf/use;
  * wall time of a fine-tuning job on the full train split (target < 60 s), from job creation to `succeeded`;
  * chat completion latency p50/p95 (max_tokens 1, logprobs, top_logprobs 5; target p50 < 20 ms).

    .venv/bin/python benchmarks/local_backend.py [--repeats N] [--test-limit N] [--latency-requests N] [--skip-accuracy]
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
from rasa_gpt3.local.embedded import EmbeddedServer  # noqa: E402
from rasa_gpt3.local.embedder import EMBEDDERS, default_embedder_name  # noqa: E402

BANKING77 = REPO.parent / "shared" / "corpora" / "banking77" / "banking_data"


def read_split(name):
    with open(BANKING77 / f"{name}.csv", newline="", encoding="utf-8") as stream:
        return [(row["text"], row["category"]) for row in csv.DictReader(stream)]


def sample(rows, shots, seed):
    grouped = defaultdict(list)
    for text, intent in rows:
        grouped[intent].append(text)
    rng = random.Random(seed)
    return [(text, intent) for intent in sorted(grouped) for text in rng.sample(grouped[intent], min(shots, len(grouped[intent])))]


def fine_tune(client, rows, embedder, seed=0):
    records = [prompts.intent_record(text, intent, "chat") for text, intent in rows]
    data = "\n".join(json.dumps(record) for record in records).encode("utf-8")
    started = time.perf_counter()
    upload = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload.id, seed=seed,
                                         metadata={"task": "intent", "embedder": embedder})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    return job, time.perf_counter() - started


def classify(client, model, text, server_ms=None):
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model, temperature=0, max_tokens=1, logprobs=True, top_logprobs=5, **prompts.intent_request(text, "chat"))
    response = raw.parse()
    elapsed = (time.perf_counter() - started) * 1000
    if server_ms is not None:
        server_ms.append(float(raw.headers["openai-processing-ms"]))
    return response.choices[0].message.content, elapsed


def accuracy(client, model, test_rows):
    return sum(classify(client, model, text)[0] == intent for text, intent in test_rows) / len(test_rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="training samples (seeds) per shot count")
    parser.add_argument("--test-limit", type=int, default=0, help="use only the first N test texts (0: all 3080)")
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--skip-accuracy", action="store_true", help="only the full-split job and the latency")
    args = parser.parse_args()

    train_rows, test_rows = read_split("train"), read_split("test")
    if args.test_limit:
        test_rows = random.Random(1).sample(test_rows, args.test_limit)
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="rasa-gpt3-bench-"))).start()
    client = openai.OpenAI(api_key="local", base_url=server.base_url, max_retries=0)
    print(f"banking77: {len(train_rows)} train / {len(test_rows)} test texts, 77 intents; server {server.base_url}")

    if not args.skip_accuracy:
        print("\naccuracy on the official test split (mean over repeats); job seconds in brackets")
        print(f"{'shots':>5} " + " ".join(f"{name:>16}" for name in EMBEDDERS) + f" {'use/tfidf':>9} {'use+tfidf/use':>13}")
        for shots in (10, 30):
            scores = {name: [] for name in EMBEDDERS}
            seconds = {name: [] for name in EMBEDDERS}
            for repeat in range(args.repeats):
                rows = sample(train_rows, shots, seed=repeat)
                for embedder in EMBEDDERS:
                    job, took = fine_tune(client, rows, embedder, seed=repeat)
                    seconds[embedder].append(took)
                    scores[embedder].append(accuracy(client, job.fine_tuned_model, test_rows))
            mean = {name: statistics.mean(values) for name, values in scores.items()}
            cells = " ".join(f"{mean[name]:7.3f} ({statistics.mean(seconds[name]):5.1f} s)" for name in EMBEDDERS)
            print(f"{shots:>5} {cells} {mean['use'] / mean['tfidf']:9.2f} {mean['use+tfidf'] / mean['use']:13.2f}")

    job, took = fine_tune(client, train_rows, default_embedder_name())
    full = client.fine_tuning.jobs.retrieve(job.id)
    print(f"\nfull train split ({len(train_rows)} examples, {full.hyperparameters.n_epochs} epochs, "
          f"embedder {default_embedder_name()}, "
          f"batch {full.hyperparameters.batch_size}): job wall time {took:.1f} s (target < 60 s)")
    print(f"  accuracy on the test split: {accuracy(client, job.fine_tuned_model, test_rows):.3f}")

    latencies, server_ms = [], []
    texts = [text for text, _ in test_rows]
    for text in texts[-20:]:
        classify(client, job.fine_tuned_model, text)  # warm up (texts not measured below)
    for index in range(min(args.latency_requests, len(texts) - 20)):
        latencies.append(classify(client, job.fine_tuned_model, texts[index], server_ms)[1])
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    print(f"\nchat completion latency over {len(latencies)} sequential SDK requests: "
          f"p50 {p50:.1f} ms, p95 {p95:.1f} ms (target p50 < 20 ms)")
    server_ms.sort()
    print(f"  of which inside the server (openai-processing-ms): p50 {server_ms[len(server_ms) // 2]:.1f} ms, "
          f"p95 {server_ms[min(len(server_ms) - 1, int(len(server_ms) * 0.95))]:.1f} ms")
    server.stop()


if __name__ == "__main__":
    main()
