"""What long messages cost the local backend, measured through the official SDK over real HTTP.

Prints, for a chat intent model (gpt-4o-mini, 65,536 tokens of context), the median wall time of a normal message,
of messages of 10 KB and 100 KB (within the context: answered from the first 2,000 characters), and of 1 MB
messages of words and of one run of letters (over the context: refused with 400 context_length_exceeded), each as a
ratio to the normal message in the same run; and how long normal messages take while 1 MB messages are refused
next to them (ratio to the same messages alone).

    .venv/bin/python benchmarks/long_messages.py [--repeats N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rasa_gpt3 import prompts  # noqa: E402
from rasa_gpt3.local.embedded import EmbeddedServer  # noqa: E402
from tests.conftest import small_intent_records  # noqa: E402

NORMAL = "what is my balance"
# numbers that make every text sent new: no embedding comes from the encoder's cache
FRESH = itertools.count()
WORDS = "please tell me what my account balance is "


def fine_tuned_model(client: openai.OpenAI) -> str:
    data = "\n".join(json.dumps(record) for record in small_intent_records("chat")).encode()
    upload = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload.id, metadata={"task": "intent"})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"fine-tuning failed: {job.error}")
    return job.fine_tuned_model


def ask(client: openai.OpenAI, model: str, text: str) -> str:
    """Sends `text` as the user message; returns the answer or the error code."""
    try:
        response = client.chat.completions.create(model=model, temperature=0, **prompts.intent_request(text, "chat"))
    except openai.BadRequestError as error:
        return str(error.code)
    return response.choices[0].message.content


def timed(client: openai.OpenAI, model: str, text: str, repeats: int):
    seconds, outcome = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        outcome = ask(client, model, f"{next(FRESH)} {text}")
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="long-messages-"))).start()
    client = openai.OpenAI(api_key="local", base_url=server.base_url, max_retries=0, timeout=600)
    try:
        model = fine_tuned_model(client)
        ask(client, model, NORMAL)  # loads the model and the encoder
        baseline, _ = timed(client, model, NORMAL, args.repeats * 4)
        print(f"normal message: {baseline * 1000:.1f} ms (median of {args.repeats * 4})")
        cases = {
            "10 KB of words": (WORDS * 250)[:10_000],
            "100 KB of words": (WORDS * 2500)[:100_000],
            "1 MB of words": (WORDS * 25_000)[:1_000_000],
            "1 MB of one letter": "a" * 1_000_000,
        }
        for name, text in cases.items():
            seconds, outcome = timed(client, model, text, args.repeats)
            print(f"{name}: {seconds * 1000:.1f} ms, {seconds / baseline:.1f}x the normal message -> {outcome}")
        texts = [f"{next(FRESH)} {NORMAL}" for _ in range(40)]
        started = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda text: ask(client, model, text), texts))
        alone = time.perf_counter() - started
        started = time.perf_counter()
        texts = [f"{next(FRESH)} {NORMAL}" for _ in range(40)]
        with ThreadPoolExecutor(6) as pool:
            hostile = [pool.submit(ask, client, model, cases["1 MB of words"]) for _ in range(4)]
            answers = list(pool.map(lambda text: ask(client, model, text), texts))
            refused = [run.result() for run in hostile]
        beside = time.perf_counter() - started
        print(
            f"40 normal messages: {alone:.2f} s alone, {beside:.2f} s beside four 1 MB messages "
            f"({beside / alone:.2f}x); answers {sorted(set(answers))}, the 1 MB ones {sorted(set(refused))}"
        )
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
