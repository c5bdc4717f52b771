"""Export speed: a generated Rasa project with 100,000 intent examples, Rasa's loading vs. our export.

Run: .venv/bin/python benchmarks/export_speed.py [--examples N] [--intents K] [--format chat|completion] [--profile]

Prints examples/s for (1) Rasa's TrainingDataImporter loading the project and (2) our export of the intent task
(records, label codec, stratified split, exact token counts, every validation check), and (3) writing the files.
The target for (2) is at least 50,000 examples/s on a 2-core machine. The figures are wall time: on a machine
busy with other work they include waiting for a core (`chrt -f 10 python benchmarks/export_speed.py` as root
measures the machine rather than the queue).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "account balance transfer money card credit pay bill show me my last week month please can you I want to "
    "check send book flight hotel cancel order pizza weather today tomorrow how much is what where when why "
    "help need new open close change address phone email password reset login statement savings loan rate "
    "branch nearest limit increase report lost stolen travel notice fee refund dispute charge"
).split()


def generate_project(root: Path, examples: int, intents: int, seed: int = 7) -> None:
    """Writes domain.yml and data/nlu.yml with `examples` distinct examples spread over `intents` intents."""
    rng = random.Random(seed)
    names = [f"intent_{i:03d}_{rng.choice(WORDS)}" for i in range(intents)]
    (root / "data").mkdir(parents=True)
    (root / "domain.yml").write_text(
        'version: "3.1"\nintents:\n' + "".join(f"  - {name}\n" for name in names), encoding="utf-8"
    )
    seen = set()
    per_intent = {name: [] for name in names}
    index = 0
    while len(seen) < examples:
        name = names[index % intents]
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + f" {len(seen)}"
        if text not in seen:
            seen.add(text)
            per_intent[name].append(text)
            index += 1
    lines = ['version: "3.1"', "nlu:"]
    for name in names:
        lines.append(f"- intent: {name}")
        lines.append("  examples: |")
        lines.extend(f"    - {text}" for text in per_intent[name])
    (root / "data" / "nlu.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--intents", type=int, default=200)
    parser.add_argument("--format", choices=("chat", "completion"), default="chat")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of our export")
    args = parser.parse_args()

    from rasa_gpt3.data.base_models import default_base_model, resolve_base_model
    from rasa_gpt3.data.export import export_task, write_export
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.data.tokens import get_encoding

    get_encoding(resolve_base_model(default_base_model(args.format)).encoding)  # load the BPE file outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bot"
        generate_project(root, args.examples, args.intents)

        started = time.perf_counter()
        project = load_project(root)
        rasa_seconds = time.perf_counter() - started
        n = len(project.nlu.intent_examples)

        started, cpu_started = time.perf_counter(), time.process_time()
        exported = export_task("intent", project.nlu, fmt=args.format)
        export_seconds = time.perf_counter() - started
        export_cpu = time.process_time() - cpu_started

        started = time.perf_counter()
        write_export(exported, Path(tmp) / "out", command="benchmark")
        write_seconds = time.perf_counter() - started

        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            export_task("intent", project.nlu, fmt=args.format)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)

    print(f"examples: {n:,} in {args.intents} intents, format {args.format}, base model {exported.base_model.name}")
    print(f"rasa loading (TrainingDataImporter): {rasa_seconds:6.2f} s  {n / rasa_seconds:12,.0f} examples/s")
    print(
        f"our export (records, codec, split, tokens, validation): {export_seconds:6.2f} s  "
        f"{n / export_seconds:12,.0f} examples/s  (target >= 50,000)"
    )
    print(f"  CPU time of the export (both threads: token counting runs beside the rest): {export_cpu:6.2f} s")
    print(f"writing the files: {write_seconds:6.2f} s  {n / write_seconds:12,.0f} examples/s")
    print(
        f"records: {len(exported.train):,} train / {len(exported.valid):,} valid; "
        f"validation: {exported.report.summary()['errors']} errors, {exported.report.summary()['warnings']} warnings"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
