"""Which LoRA target modules let the tiny random stand-in learn financial-demo's intents: held-out accuracy per
target set and per random base model; prints figures, asserts nothing.

    .venv/bin/python benchmarks/lora_targets.py [--seeds 0 1 2 3] [--epochs 30] [--threads 1]

For each seed it builds the tiny stand-in (random weights seeded by it, tokenizer trained on financial-demo), splits
financial-demo's NLU data 80/20 as tests/lora/test_lora_plugin.py does (Rasa's stratified split, seed 42), exports
the 80 % for the model's tokenizer, trains one adapter per target set (batch 16, learning-rate multiplier 25) and
scores each held-out message by the label token the adapter ranks highest after the chat template's assistant
prefix. The majority-class share is printed beside it: the plugin test asserts at least 3 times that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINANCIAL_DEMO = REPO.parent / "shared" / "corpora" / "financial-demo"
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_SETS = {"all-linear (default)": "all-linear", "all-linear + embed_tokens": (*LINEAR, "embed_tokens")}


def held_out_accuracy(base, adapter_dir, records, codec) -> float:
    """The share of `records` whose highest-ranked label token (among the codec's labels) is the right one."""
    import torch
    from peft import PeftModel

    from rasa_gpt3.local.lora.base_model import load_causal_lm, load_tokenizer
    from rasa_gpt3.local.lora.rendering import emitted_label_ids, prompt_ids

    tokenizer = load_tokenizer(base, needs_chat_template=True)
    model = PeftModel.from_pretrained(load_causal_lm(base, "cpu"), str(adapter_dir)).eval()
    token_of = {intent: emitted_label_ids(tokenizer, label, "chat")[0] for intent, label in codec.labels.items()}
    correct = 0
    with torch.no_grad():
        for record in records:
            logits = model(torch.tensor([prompt_ids(tokenizer, messages=record["messages"][:-1])])).logits[0, -1]
            best = max(token_of, key=lambda intent: logits[token_of[intent]].item())
            correct += best == codec.intent_of(record["messages"][-1]["content"])
    return correct / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="random base models to build")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.local.engines import Hyperparameters
    from rasa_gpt3.local.lora.base_model import resolve_base_model
    from rasa_gpt3.local.lora.tiny import bot_texts, build_tiny_model
    from rasa_gpt3.local.lora.training import LoraSettings, train_adapter

    torch.set_num_threads(args.threads)
    project = load_project(FINANCIAL_DEMO)
    train, test = project.nlu.train_test_split(train_frac=0.8, random_seed=42)
    hyperparameters = Hyperparameters(n_epochs=args.epochs, batch_size=16, learning_rate_multiplier=25)
    results = {name: [] for name in TARGET_SETS}
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            path = build_tiny_model(Path(work, f"model-{seed}"), bot_texts(FINANCIAL_DEMO), seed=seed)
            base = resolve_base_model(str(path), announce=lambda line: None)
            exported = export_task("intent", train, project.domain, project.stories, base_model=str(path))
            held_out = export_task(
                "intent", test, project.domain, project.stories, base_model=str(path), valid_fraction=0.0
            ).train
            majority = max(Counter(r["messages"][-1]["content"] for r in held_out).values()) / len(held_out)
            for name, targets in TARGET_SETS.items():
                run_dir = Path(work, f"run-{seed}-{len(results[name])}")
                adapter = train_adapter(
                    base,
                    exported.train,
                    exported.valid,
                    hyperparameters,
                    run_dir,
                    settings=LoraSettings(target_modules=targets),
                    device="cpu",
                )
                accuracy = held_out_accuracy(base, adapter.path, held_out, exported.codec)
                results[name].append(accuracy)
                print(
                    f"seed {seed}  {name:<26} held out {accuracy:.3f} = {accuracy / majority:.2f}x the majority "
                    f"share {majority:.3f} ({len(held_out)} messages, {adapter.seconds:.0f} s training)",
                    flush=True,
                )
    for name, accuracies in results.items():
        print(
            f"{name:<26} mean {statistics.mean(accuracies):.3f}, min {min(accuracies):.3f}, "
            f"max {max(accuracies):.3f} over {len(accuracies)} random models"
        )


if __name__ == "__main__":
    main()
