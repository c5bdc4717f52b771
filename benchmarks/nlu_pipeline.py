"""DIET vs GPT3IntentClassifier vs DIET + routing mode on financial-demo, from one run; prints figures.

    .venv/bin/python benchmarks/nlu_pipeline.py [--corpus ../shared/corpora/financial-demo] [--diet-epochs 100]

Steps: copies the corpus to a temporary directory, splits its NLU data 80/20 with Rasa's own stratified split
(seed 42), trains three pipelines with `rasa train nlu` on the 80 % (timing each run; DIET and GPT3 alone start from
an empty Rasa cache, and the GPT3 run fine-tunes on a fresh local backend state, so its time includes the export
and the fine-tune; DIET + routing reuses DIET's cache), evaluates each with
`rasa test nlu` on the 20 %, and measures the component's own time per message in this process:
`process()` wall time minus the HTTP exchange (httpx's elapsed time of the request: network + backend), on
fresh messages and on cache hits, with the local backend in a separate process (`rasa-gpt3 local serve`).
Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "financial-demo"
RASA = str(Path(sys.executable).with_name("rasa"))

# financial-demo's own NLU pipeline without Duckling (needs a server) and spaCy (needs a model download)
DIET_PIPELINE: List[Dict[str, Any]] = [
    {"name": "WhitespaceTokenizer"},
    {"name": "RegexFeaturizer"},
    {"name": "LexicalSyntacticFeaturizer"},
    {"name": "CountVectorsFeaturizer"},
    {"name": "CountVectorsFeaturizer", "analyzer": "char_wb", "min_ngram": 1, "max_ngram": 4},
    {"name": "DIETClassifier", "epochs": 100},
]
GPT3 = {"name": "rasa_gpt3.GPT3IntentClassifier"}
ROUTED_GPT3 = {"name": "rasa_gpt3.GPT3IntentClassifier", "only_below_confidence": 0.7}


def pipelines(diet_epochs: int) -> Dict[str, List[Dict[str, Any]]]:
    """The three pipelines compared (no FallbackClassifier: its nlu_fallback would count as an error for all)."""
    diet = [dict(step) for step in DIET_PIPELINE]
    diet[-1]["epochs"] = diet_epochs
    return {
        "DIET": diet,
        "GPT3IntentClassifier": [{"name": "WhitespaceTokenizer"}, GPT3],
        "DIET + GPT3 routing (<0.7)": diet + [ROUTED_GPT3],
    }


def run(args: List[str], cwd: Path, env: Dict[str, str]) -> float:
    """Runs the rasa CLI; returns its wall time; exits with its output when it fails."""
    started = time.perf_counter()
    process = subprocess.run([RASA, *args], cwd=str(cwd), env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(
            f"error: rasa {' '.join(args)} failed:\n" + "\n".join((process.stdout + process.stderr).splitlines()[-30:])
        )
    return elapsed


def split(project: Path, seed: int) -> None:
    """Rasa's stratified 80/20 split of the project's NLU data into train.yml and test.yml."""
    from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLWriter
    from rasa.shared.nlu.training_data.loading import load_data

    train, test = load_data(str(project / "data" / "nlu")).train_test_split(train_frac=0.8, random_seed=seed)
    RasaYAMLWriter().dump(project / "train.yml", train)
    RasaYAMLWriter().dump(project / "test.yml", test)
    print(
        f"data: {len(train.intent_examples)} training / {len(test.intent_examples)} test examples, "
        f"{len(train.intents)} intents"
    )


def percentile(values: List[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def standalone_backend(state_dir: Path) -> tuple[subprocess.Popen, str]:
    """`rasa-gpt3 local serve` on a free port in its own process; returns (process, base URL)."""
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("rasa-gpt3")), "local", "serve", "--port", "0", "--state", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()  # "local backend on http://127.0.0.1:PORT/v1 (state: ...)"
    if "http://" not in line:
        process.terminate()
        sys.exit("error: the standalone local backend did not start")
    return process, line.split()[3]


def component_overhead(model: Path, texts: List[str], state_dir: Path) -> Dict[str, float]:
    """Milliseconds of GPT3IntentClassifier.process() per message beyond the HTTP exchange, fresh and cached.

    The backend runs in its own process here, so its work does not compete with the component for this
    process's GIL (with the embedded backend it does, and that waiting would show up as component time).
    """
    from rasa.shared.nlu.training_data.message import Message

    from rasa_gpt3.nlu.intent_classifier import GPT3IntentClassifier
    from rasa_gpt3.nlu.task_model import MODEL_FILE, TaskModel

    with tarfile.open(model) as archive:
        (member,) = [m for m in archive.getmembers() if m.name.endswith("/" + MODEL_FILE)]
        task_model = TaskModel.from_json(json.loads(archive.extractfile(member).read()))
    server, base_url = standalone_backend(state_dir)
    try:
        os.environ.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "local"})
        os.environ.pop("RASA_GPT3_LOCAL", None)
        component = GPT3IntentClassifier({}, None, None, None, task_model)
        component.caller.warm_up(task_model.model, component.intent_model.request_body("hello"))
        fresh, cached, backend = [], [], []
        for text in texts:
            message = Message(data={"text": text})
            started = time.perf_counter()
            component.process([message])
            elapsed = (time.perf_counter() - started) * 1000
            record = message.get("gpt3")
            if record["cached"] or record["outcome"] != "ok":
                continue  # duplicates in the test split, or a failed call: not a fresh request
            backend.append(record["backend_ms"])
            fresh.append(elapsed - record["backend_ms"])
        for text in texts:
            message = Message(data={"text": text})
            started = time.perf_counter()
            component.process([message])
            cached.append((time.perf_counter() - started) * 1000)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "messages": len(fresh),
        "own_p50": percentile(fresh, 0.5),
        "own_p95": percentile(fresh, 0.95),
        "backend_p50": percentile(backend, 0.5),
        "hit_p50": percentile(cached, 0.5),
        "hit_p95": percentile(cached, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="a Rasa project with data/nlu")
    parser.add_argument("--diet-epochs", type=int, default=100, help="DIET epochs (financial-demo uses 100)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", action="store_true", help="keep the working directory and print it")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rasa-gpt3-nlu-bench-"))
    project = work / "project"
    shutil.copytree(args.corpus, project, ignore=shutil.ignore_patterns("models", "results", ".rasa_gpt3"))
    for path in [project, *project.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RASA_GPT3_FAULTS")}
    env.update(
        {
            "RASA_GPT3_LOCAL": "1",
            "RASA_GPT3_STATE_DIR": str(work / "local-state"),
            "RASA_TELEMETRY_ENABLED": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
    )
    os.environ.update({k: env[k] for k in ("RASA_GPT3_LOCAL", "RASA_GPT3_STATE_DIR")})
    os.environ.pop("OPENAI_API_KEY", None)
    split(project, args.seed)

    results: Dict[str, Dict[str, Any]] = {}
    for index, (name, pipeline) in enumerate(pipelines(args.diet_epochs).items()):
        config = project / f"config_{index}.yml"
        config.write_text(yaml.safe_dump({"recipe": "default.v1", "language": "en", "pipeline": pipeline}))
        out = project / "models" / str(index)
        # DIET and GPT3 alone train from an empty Rasa cache (their times are compared); DIET + routing reuses
        # DIET's cache, so only its GPT3 component trains
        run_env = {**env, "RASA_CACHE_DIRECTORY": str(work / f"rasa-cache-{0 if index == 2 else index}")}
        train_seconds = run(
            [
                "train",
                "nlu",
                "--config",
                str(config),
                "--nlu",
                "train.yml",
                "--out",
                str(out),
                "--fixed-model-name",
                f"m{index}",
            ],
            project,
            run_env,
        )
        model = next(out.glob("*.tar.gz"))
        run(
            [
                "test",
                "nlu",
                "--model",
                str(model),
                "--nlu",
                "test.yml",
                "--out",
                str(project / f"results_{index}"),
                "--no-plot",
            ],
            project,
            run_env,
        )
        report = json.loads((project / f"results_{index}" / "intent_report.json").read_text())
        results[name] = {
            "train_s": train_seconds,
            "accuracy": report["accuracy"],
            "macro_f1": report["macro avg"]["f1-score"],
            "model": model,
        }
        print(f"  {name}: trained in {train_seconds:.1f} s, accuracy {report['accuracy']:.3f}", flush=True)

    print()
    print(f"rasa test nlu on {args.corpus.name} (20 % held out, seed {args.seed}, DIET epochs {args.diet_epochs}):")
    print(f"  {'pipeline':<28} {'accuracy':>9} {'macro-F1':>9} {'rasa train nlu':>15}")
    for index, (name, row) in enumerate(results.items()):
        note = " (DIET from cache)" if index == 2 else ""
        print(f"  {name:<28} {row['accuracy']:>9.3f} {row['macro_f1']:>9.3f} {row['train_s']:>13.1f} s{note}")
    diet_s = results["DIET"]["train_s"]
    gpt_s = results["GPT3IntentClassifier"]["train_s"]
    print(
        f"  train wall time GPT3IntentClassifier / DIET: {gpt_s / diet_s:.2f}x "
        f"(GPT3 run includes export + local fine-tune; both include Rasa's start-up)"
    )

    from rasa.shared.nlu.training_data.loading import load_data

    texts = [m.get("text") for m in load_data(str(project / "test.yml")).intent_examples]
    figures = component_overhead(results["GPT3IntentClassifier"]["model"], texts, work / "local-state")
    print()
    print(
        f"GPT3IntentClassifier.process() per message, {figures['messages']} test messages "
        f"(local backend in its own process):"
    )
    print(
        f"  own time excluding the HTTP exchange: p50 {figures['own_p50']:.3f} ms, p95 {figures['own_p95']:.3f} ms "
        f"(HTTP exchange p50 {figures['backend_p50']:.2f} ms)"
    )
    print(f"  cache hit:                            p50 {figures['hit_p50']:.4f} ms, p95 {figures['hit_p95']:.4f} ms")
    if args.keep:
        print(f"\nworking directory: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
