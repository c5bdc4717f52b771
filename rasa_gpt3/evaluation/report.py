"""What `rasa-gpt3 evaluate` shows and writes: Markdown tables, summary.md, the PNGs, results.json, predictions.jsonl.

Everything here reads the results document `rasa_gpt3.evaluation.runner` builds (plain dicts) and the predictions;
nothing here trains or calls a model. Plots use matplotlib's Agg backend (no display needed); every file is written
atomically.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.evaluation.metrics import per_intent_f1
from rasa_gpt3.evaluation.results import (
    ALL,
    BASELINE,
    CONFUSION_PNG,
    CURVE_PNG,
    FINE_TUNED,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    SYSTEMS,
    Prediction,
    intent_report_file,
)

# confusion-matrix cells get their count written in them up to this many labels
ANNOTATE_UP_TO = 25


def _number(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_std(mean: float, std: float, repeats: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if repeats > 1 else f"{mean:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[Sequence[str]] = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def curve_table(results: Dict[str, Any]) -> str:
    """The few-shot curve as a Markdown table: per shot count, both sides' accuracy and macro-F1 (mean ± std)."""
    by_key = {(row["shots"], row["system"]): row for row in results["curve"]}
    shots: List[str] = []
    for row in results["curve"]:
        if row["shots"] not in shots:
            shots.append(row["shots"])
    rows = []
    for value in shots:
        base, tuned = by_key.get((value, BASELINE)), by_key.get((value, FINE_TUNED))
        first = base or tuned
        cells = [value, f"{first['n_train']:g}", str(first["repeats"])]
        for metric in ("accuracy", "macro_f1"):
            for row in (base, tuned):
                cells.append(
                    "–" if row is None else _mean_std(row[f"{metric}_mean"], row[f"{metric}_std"], row["repeats"])
                )
        rows.append(cells)
    header = [
        "examples per intent",
        "training examples",
        "repeats",
        "baseline accuracy",
        "fine-tuned accuracy",
        "baseline macro-F1",
        "fine-tuned macro-F1",
    ]
    return _table(header, rows)


def full_run_table(results: Dict[str, Any]) -> str:
    """Both sides of the run with the most data, side by side, as a Markdown table."""
    run = results["runs"][results["full_run"]]
    base, tuned = run["systems"][BASELINE], run["systems"][FINE_TUNED]

    def both(read) -> List[str]:
        return [read(base), read(tuned)]

    rows = [
        ["accuracy", *both(lambda s: _number(s["accuracy"]))],
        ["macro-F1", *both(lambda s: _number(s["macro_f1"]))],
        ["weighted F1", *both(lambda s: _number(s["weighted_f1"]))],
        ["would fall back", *both(lambda s: f"{s['fallback_rate']:.1%}")],
    ]
    if base.get("out_of_scope"):
        rows += [
            ["out-of-scope recall", *both(lambda s: _number(s["out_of_scope"]["recall"]))],
            ["out-of-scope precision", *both(lambda s: _number(s["out_of_scope"]["precision"]))],
            ["in-scope wrongly rejected", *both(lambda s: _percent(s["out_of_scope"]["in_scope_rejected"]))],
        ]
    rows += [
        ["latency p50 / p95 (ms)", *both(lambda s: f"{s['latency_ms']['p50']:.1f} / {s['latency_ms']['p95']:.1f}")],
        ["calls over the NLU component's 2 s budget", "–", f"{tuned['latency_ms'].get('over_nlu_budget', 0):,}"],
        ["training time (s)", *both(lambda s: f"{s['train_seconds']:.1f}" + (" (reused)" if s.get("reused") else ""))],
        ["API calls", *both(lambda s: f"{s['api_calls']:,}")],
        ["tokens (prompt + completion)", *both(lambda s: f"{s['prompt_tokens']:,} + {s['completion_tokens']:,}")],
        ["trained tokens", "–", f"{tuned.get('trained_tokens', 0):,}"],
        ["cost: training", "$0", f"${tuned['cost_usd']['training']:.4f}"],
        ["cost: per 1,000 messages", "$0", f"${tuned['cost_usd']['per_1000_messages']:.4f}"],
    ]
    shots = run["shots"]
    title = "all training examples" if shots == ALL else f"{shots} examples per intent"
    header = [
        f"{title} ({run['n_train']} training, {base['n_test']} test)",
        BASELINE,
        f"{FINE_TUNED} ({results['base_model']})",
    ]
    return _table(header, rows, ["---", "---:", "---:"])


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1%}"


def per_intent_table(results: Dict[str, Any]) -> str:
    """Per-intent support and precision/recall/F1 of both sides in the run with the most data."""
    run = results["runs"][results["full_run"]]
    reports = {system: run["systems"][system]["report"] for system in SYSTEMS}
    intents = sorted(
        name
        for name, row in reports[BASELINE].items()
        if isinstance(row, dict) and "support" in row and name not in ("macro avg", "weighted avg", "micro avg")
    )
    rows = []
    for intent in intents:
        cells = [intent, str(int(reports[BASELINE][intent]["support"]))]
        for system in SYSTEMS:
            row = reports[system].get(intent) or {}
            cells.append(" / ".join(_number(row.get(key), 2) for key in ("precision", "recall", "f1-score")))
        rows.append(cells)
    return _table(["intent", "support", "baseline P / R / F1", "fine-tuned P / R / F1"], rows)


def threshold_line(results: Dict[str, Any]) -> str:
    """The recommended FallbackClassifier threshold of the run with the most data, as one line for a reader."""
    recommendation = results.get("recommended_threshold")
    if not recommendation:
        return "no FallbackClassifier threshold recommended: the test set has no in-scope messages"
    return f"{recommendation['system']} side: {recommendation['description']}"


def summary_markdown(results: Dict[str, Any]) -> str:
    """The whole summary.md: setup, the full run side by side, the few-shot curve, per-intent scores, totals."""
    data = results["data"]
    totals = results["totals"]
    fallback = data.get("fallback_rule")
    lines = [
        f"# Evaluation of {results['project']['name']}: fine-tuned model vs. the bot's own pipeline",
        "",
        f"- command: `{results['command']}`" if results.get("command") else "- command: (library call)",
        f"- fine-tuned side: {results['base_model']} ({results['format']} format) "
        f"on the **{results['backend']}** backend",
        f"- baseline: {results['baseline']['source']}",
    ]
    for dropped in results["baseline"]["dropped"]:
        lines.append(f"  - left out {dropped['component']}: {dropped['reason']}")
    lines += [
        f"- test set: {data['test']} messages ({data['test_source']}); training pool: {data['train_pool']} "
        f"examples of {data['intents']} intents",
        *(
            [
                f"- **{data['test_in_training']} test messages are also in the training pool**; "
                "their scores flatter both sides"
            ]
            if data.get("test_in_training")
            else []
        ),
        f"- out-of-scope intent: {data['out_of_scope_intent'] or 'none in the data'}",
        "- fallback rule (both sides): "
        + (
            f"confidence below {fallback['threshold']:g} or top two within {fallback['ambiguity_threshold']:g}"
            if fallback
            else "none (no FallbackClassifier configured)"
        ),
        "",
        "## Side by side",
        "",
        full_run_table(results),
        "",
        threshold_line(results) + ".",
        "",
        "## Few-shot curve",
        "",
        curve_table(results),
        "",
        f"![few-shot curve]({CURVE_PNG})",
        "",
        "## Per intent",
        "",
        per_intent_table(results),
        "",
        f"![confusion matrices]({CONFUSION_PNG})",
        "",
        "## Totals",
        "",
        f"{totals['fine_tunes']} fine-tunes ({totals['reused_models']} reused), {totals['api_calls']:,} API calls, "
        f"{totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion tokens, "
        f"{totals['trained_tokens']:,} trained tokens; at {results['base_model']} prices: "
        f"${totals['training_usd']:.4f} training + ${totals['serving_usd']:.4f} serving"
        + (" (the local backend itself is free)" if results["backend"] == "local" else "")
        + ".",
        "",
        f"Files: `{RESULTS_FILE}` (everything above), `{PREDICTIONS_FILE}` (one line per run, side and test message), "
        f"`{intent_report_file(BASELINE)}` / `{intent_report_file(FINE_TUNED)}` (Rasa's intent_report.json shape).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots


def _pyplot():
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        # matplotlib 3.5 calls pyparsing names that pyparsing 3.1 deprecates; nothing for a user to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return write_atomic(path, buffer.getvalue())


def plot_curve(results: Dict[str, Any], path: Path) -> Path:
    """Accuracy and macro-F1 against examples per intent for both sides, with ± one standard deviation."""
    plt = _pyplot()
    shots: List[str] = []
    for row in results["curve"]:
        if row["shots"] not in shots:
            shots.append(row["shots"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, constrained_layout=True)
    positions = list(range(len(shots)))
    for axis, metric, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "macro_f1", "macro-F1")):
        for system, style in ((BASELINE, "o-"), (FINE_TUNED, "s-")):
            rows = {row["shots"]: row for row in results["curve"] if row["system"] == system}
            means = [rows[s][f"{metric}_mean"] if s in rows else float("nan") for s in shots]
            stds = [rows[s][f"{metric}_std"] if s in rows else 0.0 for s in shots]
            label = system if system == BASELINE else f"{system} ({results['base_model']})"
            axis.errorbar(positions, means, yerr=stds, fmt=style, capsize=4, label=label)
        axis.set_xticks(positions)
        axis.set_xticklabels(shots)
        axis.set_xlabel("training examples per intent")
        axis.set_title(title)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    figure.suptitle(f"{results['project']['name']}: few-shot curve ({results['data']['test']} test messages)")
    return _save(figure, path)


def confusion_counts(targets: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> List[List[int]]:
    """Row = true intent, column = predicted intent, counts over `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for target, guess in zip(targets, predicted):
        matrix[index[target]][index[guess]] += 1
    return matrix


def plot_confusion(predictions: Dict[str, Sequence[Any]], path: Path, title: str = "") -> Path:
    """Both sides' confusion matrices (true intent by row, predicted by column) next to each other."""
    plt = _pyplot()
    labels = sorted(
        {p.intent for items in predictions.values() for p in items}
        | {p.predicted for items in predictions.values() for p in items}
    )
    size = max(6.0, 0.17 * len(labels) + 2)
    figure, axes = plt.subplots(
        1, len(predictions), figsize=(size * len(predictions) + 2, size), constrained_layout=True
    )
    if len(predictions) == 1:
        axes = [axes]
    for axis, (system, items) in zip(axes, predictions.items()):
        matrix = confusion_counts([p.intent for p in items], [p.predicted for p in items], labels)
        # colour by the share of each true intent, so rare intents are as visible as frequent ones
        shares = [[count / max(1, sum(row)) for count in row] for row in matrix]
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        font = 8 if len(labels) <= ANNOTATE_UP_TO else 4
        axis.set_xticks(range(len(labels)))
        axis.set_yticks(range(len(labels)))
        axis.set_xticklabels(labels, rotation=90, fontsize=font)
        axis.set_yticklabels(labels, fontsize=font)
        axis.set_xlabel("predicted intent")
        axis.set_ylabel("true intent")
        correct = sum(1 for p in items if p.intent == p.predicted)
        axis.set_title(f"{system}: {correct}/{len(items)} correct")
        if len(labels) <= ANNOTATE_UP_TO:
            for i, row in enumerate(matrix):
                for j, count in enumerate(row):
                    if count:
                        axis.text(
                            j,
                            i,
                            str(count),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if shares[i][j] > 0.5 else "black",
                        )
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------- files


def prediction_rows(predictions: Dict[Tuple[str, int, str], List[Prediction]]) -> Iterator[Dict[str, Any]]:
    """The lines of predictions.jsonl: one per run, side and test message."""
    for (shots, repeat, system), items in predictions.items():
        for p in items:
            row = {"shots": shots, "repeat": repeat, "system": system}
            row.update(asdict(p))
            row["latency_ms"] = round(p.latency_ms, 3)
            yield row


def write_outputs(
    out: Path, results: Dict[str, Any], predictions: Dict[Tuple[str, int, str], List[Prediction]]
) -> Dict[str, Path]:
    """Writes results.json, predictions.jsonl, the full run's intent reports, summary.md and the PNGs into `out`."""
    files: Dict[str, Path] = {}
    lines = [json.dumps(row, ensure_ascii=False) for row in prediction_rows(predictions)]
    files["predictions"] = write_atomic(out / PREDICTIONS_FILE, "\n".join(lines) + "\n")
    full = results["runs"][results["full_run"]]
    for system in SYSTEMS:
        report = json.dumps(full["systems"][system]["report"], indent=2) + "\n"
        files[f"{system} report"] = write_atomic(out / intent_report_file(system), report)
    files["curve plot"] = plot_curve(results, out / CURVE_PNG)
    key = (full["shots"], full["repeat"])
    files["confusion plot"] = plot_confusion(
        {system: predictions[key + (system,)] for system in SYSTEMS},
        out / CONFUSION_PNG,
        title=("all training examples" if full["shots"] == ALL else f"{full['shots']} examples per intent")
        + f" ({full['n_train']} training, {len(predictions[key + (BASELINE,)])} test messages)",
    )
    files["summary"] = write_atomic(out / SUMMARY_FILE, summary_markdown(results))
    files["results"] = write_atomic(out / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return files


# ---------------------------------------------------------------------------------------------- --models


def comparison_table(results: Dict[str, Any]) -> str:
    """`evaluate --models`: the baseline and every model side by side, as a Markdown table."""
    systems = [(BASELINE, results["baseline"]["metrics"])] + [
        (model["name"] + (" (in use)" if model["in_use"] else ""), model["metrics"]) for model in results["models"]
    ]

    def row(label: str, read) -> List[str]:
        return [label] + [read(metrics) for _, metrics in systems]

    def money(metrics: Dict[str, Any]) -> str:
        cost = metrics.get("cost_usd")
        return f"${cost['per_1000_messages']:.4f}" if cost else "$0"

    models = results["models"]
    rows = [
        row("accuracy", lambda s: _number(s["accuracy"])),
        row("macro-F1", lambda s: _number(s["macro_f1"])),
        row("would fall back", lambda s: f"{s['fallback_rate']:.1%}"),
        row("latency p50 / p95 (ms)", lambda s: f"{s['latency_ms']['p50']:.1f} / {s['latency_ms']['p95']:.1f}"),
        row("cost per 1,000 messages", money),
        ["backend", "Rasa"] + [model["backend"] for model in models],
        ["base model", "–"] + [model["base_model"] for model in models],
        ["days until shutdown", "–"]
        + ["–" if model["days_left"] is None else str(model["days_left"]) for model in models],
    ]
    data = results["data"]
    header = [f"{data['test']} held-out messages"] + [name for name, _ in systems]
    return _table(header, rows, ["---"] + ["---:"] * len(systems))


def comparison_legend(results: Dict[str, Any]) -> List[str]:
    """One line per model: its letter, id, backend and how its labels were checked."""
    return [
        f"{model['name']} = {model['model']} on {model['backend']}{' (in use)' if model['in_use'] else ''}; "
        f"labels {model['labels']}"
        for model in results["models"]
    ]


def comparison_per_intent_table(results: Dict[str, Any]) -> str:
    """Per intent: the reference's F1 and each other model's F1 difference from it."""
    reference, others = results["models"][0], results["models"][1:]
    f1 = per_intent_f1(reference["metrics"]["report"])
    baseline = per_intent_f1(results["baseline"]["metrics"]["report"])
    rows = []
    for intent in sorted(f1):
        cells = [intent, _number(baseline.get(intent), 2), _number(f1[intent], 2)]
        cells += [f"{model['vs_reference']['per_intent_f1'].get(intent, 0.0):+.2f}" for model in others]
        rows.append(cells)
    header = ["intent", "baseline F1", f"{reference['name']} F1"] + [
        f"{m['name']} − {reference['name']}" for m in others
    ]
    return _table(header, rows)


def comparison_markdown(results: Dict[str, Any]) -> str:
    """The summary.md of `evaluate --models`: setup, the side-by-side table, the verdicts, per-intent F1 changes."""
    data = results["data"]
    fallback = data.get("fallback_rule")
    lines = [
        f"# {results['project']['name']}: fine-tuned intent models compared",
        "",
        f"- command: `{results['command']}`" if results.get("command") else "- command: (library call)",
        f"- test set: {data['test']} messages ({data['test_source']})",
        f"- baseline: {results['baseline']['source']}",
        "- fallback rule: "
        + (
            f"confidence below {fallback['threshold']:g} or top two within {fallback['ambiguity_threshold']:g}"
            if fallback
            else "none (no FallbackClassifier configured)"
        ),
        f"- verdict rule: {results['rule']} (tolerance {results['tolerance']:g})",
        *[f"- {line}" for line in comparison_legend(results)],
        "",
        comparison_table(results),
        "",
        "## Verdicts",
        "",
        *[f"- {model['verdict']}" for model in results["models"]],
        "",
        "## Per intent",
        "",
        comparison_per_intent_table(results),
        "",
    ]
    return "\n".join(lines)
