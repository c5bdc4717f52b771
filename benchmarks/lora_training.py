"""Figures of the LoRA engine (rasa_gpt3.local.lora) on CPU, with stand-in base models of random weights.

Prints:
  * the tiny stand-in (2 layers, hidden 64, tokenizer trained on the bot) fine-tuned on financial-demo's intent
    export: training tokens/s and seconds per epoch, and its held-out accuracy next to the majority-class share;
  * a realistic shape (Qwen2.5-0.5B's config, 494M parameters, random weights) for a few steps: seconds per
    training example and the peak resident memory of that process (run apart, so its peak is its own);
  * latency p50/p95 of a one-token classification call (max_tokens 1, top 20 logprobs) on each, one caller at a
    time, and the throughput of 4 concurrent callers against one caller (requests share one lock per model).

No pretrained weights can be downloaded here, so accuracy with real models was not measured. The load average is
printed with the figures: on a shared machine they move with it.

    .venv/bin/python benchmarks/lora_training.py [--epochs N] [--big-examples N] [--requests N] [--threads N]
                                                 [--skip-big]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINANCIAL_DEMO = REPO.parent / "shared" / "corpora" / "financial-demo"
TINY_LEARNING_RATE_MULTIPLIER = 50.0  # 1e-2: the tiny random model needs a far larger step than a pretrained one


def export_records(base, tokenizer):
    """financial-demo's intent export, relabelled so every label is one token of `tokenizer`."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.labels import LabelCodec
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.local.lora.rendering import one_token_predicate, tokenizer_name

    project = load_project(FINANCIAL_DEMO)
    exported = export_task("intent", project.nlu, project.domain, project.stories)
    codec = LabelCodec.build(
        exported.codec.labels, tokenizer_name(tokenizer), "chat", is_one_token=one_token_predicate(tokenizer, "chat")
    )

    def relabel(records):
        return [
            {
                "messages": r["messages"][:-1]
                + [
                    {
                        "role": "assistant",
                        "content": codec.label_of(exported.codec.intent_of(r["messages"][-1]["content"])),
                    }
                ]
            }
            for r in records
        ]

    return relabel(exported.train), relabel(exported.valid), exported, codec


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def latency(host, adapter, questions, requests, callers=4):
    """p50/p95 ms of one-token calls one at a time, and requests/s of `callers` threads against one."""
    call = lambda q: host.generate(adapter, messages=q, max_tokens=1, top_logprobs=20)  # noqa: E731
    for question in questions[:5]:  # loads the adapter, warms the allocator
        call(question)
    times = []
    started = time.perf_counter()
    for index in range(requests):
        begin = time.perf_counter()
        call(questions[index % len(questions)])
        times.append((time.perf_counter() - begin) * 1000)
    sequential_rate = requests / (time.perf_counter() - started)

    def worker(offset):
        for index in range(offset, requests, callers):
            call(questions[index % len(questions)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent_rate = requests / (time.perf_counter() - started)
    return percentile(times, 0.5), percentile(times, 0.95), sequential_rate, concurrent_rate


def tiny_part(args, work):
    from rasa_gpt3.local.engines import Hyperparameters
    from rasa_gpt3.local.lora.base_model import load_tokenizer, resolve_base_model
    from rasa_gpt3.local.lora.serving import AdapterHost
    from rasa_gpt3.local.lora.tiny import bot_texts, build_tiny_model
    from rasa_gpt3.local.lora.training import train_adapter

    base = resolve_base_model(str(build_tiny_model(work / "tiny", bot_texts(FINANCIAL_DEMO))))
    train, valid, exported, codec = export_records(base, load_tokenizer(base, needs_chat_template=True))
    result = train_adapter(
        base,
        train,
        valid,
        Hyperparameters(args.epochs, 16, TINY_LEARNING_RATE_MULTIPLIER),
        work / "tiny-run",
        seed=0,
        device="cpu",
    )
    print(
        f"tiny model, financial-demo intents ({len(train)} train / {len(valid)} held out, batch 16, "
        f"{args.epochs} epochs): {result.trained_tokens / result.seconds:,.0f} training tokens/s, "
        f"{result.seconds / args.epochs:.1f} s per epoch (evaluation and checkpoint included)"
    )
    host = AdapterHost(base, device="cpu")
    questions = [r["messages"][:-1] for r in valid]
    correct = sum(
        codec.intent_of(host.generate(result.path, messages=q, max_tokens=3).text)
        == exported.codec.intent_of(r["messages"][-1]["content"])
        for q, r in zip(questions, exported.valid)
    )
    majority = Counter(exported.valid_labels).most_common(1)[0][1] / len(valid)
    print(
        f"tiny model held-out accuracy {correct / len(valid):.3f} (majority-class share {majority:.3f}; "
        "random weights, not a measure of a pretrained model)"
    )
    p50, p95, one, many = latency(host, result.path, questions, args.requests)
    print(
        f"tiny model one-token classification: p50 {p50:.1f} ms, p95 {p95:.1f} ms; 4 concurrent callers "
        f"{many:.1f} req/s vs 1 caller {one:.1f} req/s (ratio {many / one:.2f})"
    )


def _reset_peak_rss() -> None:
    """Starts the kernel's peak-RSS count (VmHWM) afresh (Linux)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mb() -> float:
    """This process's peak resident memory since the last reset, in MB (Linux: VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def big_part(args, work):
    """Trains and serves the model in --big-dir in a process of its own (peak RSS is per process); prints JSON."""
    from rasa_gpt3.local.engines import Hyperparameters
    from rasa_gpt3.local.lora.base_model import load_tokenizer, resolve_base_model
    from rasa_gpt3.local.lora.serving import AdapterHost
    from rasa_gpt3.local.lora.training import train_adapter

    base = resolve_base_model(args.big_dir)
    train, valid, _, _ = export_records(base, load_tokenizer(base, needs_chat_template=True))
    examples = train[: args.big_examples]
    _reset_peak_rss()  # from here: what training adds to the loaded process
    result = train_adapter(
        base, examples, [], Hyperparameters(1, args.big_batch, 1.0), work / "big-run", seed=0, device="cpu"
    )
    peak_training = _peak_rss_mb()
    host = AdapterHost(base, device="cpu")
    parameters = sum(p.numel() for p in host.model.parameters())  # before an adapter adds its own
    p50, p95, one, many = latency(host, result.path, [r["messages"][:-1] for r in valid], max(8, args.requests // 5))
    print(
        json.dumps(
            {
                "parameters": parameters,
                "examples": len(examples),
                "batch": args.big_batch,
                "seconds": result.seconds,
                "tokens": result.trained_tokens,
                "peak_rss_mb_training": peak_training,
                "peak_rss_mb": _peak_rss_mb(),
                "p50": p50,
                "p95": p95,
                "one": one,
                "many": many,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--big-examples", type=int, default=16)
    parser.add_argument("--big-batch", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--part", choices=("all", "big"), default="all", help=argparse.SUPPRESS)
    parser.add_argument("--big-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as work:
        work = Path(work)
        if args.part == "big":
            big_part(args, work)
            return
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f} at start"
        )
        tiny_part(args, work)
        if args.skip_big:
            return
        from rasa_gpt3.local.lora.tiny import bot_texts, build_tiny_model

        started = time.perf_counter()
        big_dir = build_tiny_model(work / "qwen2-0.5b", bot_texts(FINANCIAL_DEMO), preset="qwen2-0.5b")
        built = time.perf_counter() - started
        command = [
            sys.executable,
            __file__,
            "--part",
            "big",
            "--big-dir",
            str(big_dir),
            "--big-examples",
            str(args.big_examples),
            "--big-batch",
            str(args.big_batch),
            "--requests",
            str(args.requests),
            "--threads",
            str(args.threads),
        ]
        output = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        if output.returncode != 0 or not lines:
            raise SystemExit(f"the 0.5B run failed:\n{output.stderr[-3000:]}")
        big = json.loads(lines[-1])
        print(
            f"Qwen2.5-0.5B shape ({big['parameters'] / 1e6:.0f}M parameters, random weights, float32): "
            f"{big['seconds'] / big['examples']:.2f} s per training example ({big['examples']} examples, "
            f"batch {big['batch']}, {big['tokens'] / big['seconds']:,.0f} tokens/s); peak RSS "
            f"{big['peak_rss_mb_training'] / 1024:.2f} GB while training ({big['peak_rss_mb'] / 1024:.2f} GB once "
            f"the serving copy is loaded too); building the random model took {built:.0f} s"
        )
        print(
            f"Qwen2.5-0.5B shape one-token classification: p50 {big['p50']:.0f} ms, p95 {big['p95']:.0f} ms; "
            f"4 concurrent callers {big['many']:.2f} req/s vs 1 caller {big['one']:.2f} req/s"
        )
        print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared: figures move with it)")


if __name__ == "__main__":
    main()
