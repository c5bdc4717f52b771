"""`export_task` / `rasa-gpt3 export` on financial-demo and the travel_bot fixture, checked against Rasa's loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.cli import main
from rasa_gpt3.data.export import export_task, stratified_split, write_export
from rasa_gpt3.data.labels import LabelCodec
from rasa_gpt3.data.project import load_project
from rasa_gpt3.data.tokens import count_record_tokens, get_encoding
from rasa_gpt3.errors import DataError


def _rasa_intent_pairs(paths):
    """(full intent, normalised text) of every NLU example, read by Rasa's own NLU loader file by file."""
    from rasa.shared.nlu.training_data.loading import load_data

    pairs = set()
    for path in paths:
        for message in load_data(str(path)).intent_examples:
            if message.get("text"):
                pairs.add((message.get_full_intent(), prompts.normalize_text(message.get("text"))))
    return pairs


def _answers(exported):
    return [prompts.record_answer(r) for r in exported.train + exported.valid]


def _texts(exported):
    return [prompts.record_prompt_text(r) for r in exported.train + exported.valid]


def test_financial_demo_intent_records_match_rasas_loader(financial_project, financial_demo_dir):
    exported = export_task("intent", financial_project.nlu)
    expected = _rasa_intent_pairs([financial_demo_dir / "data" / "nlu" / "nlu.yml"])
    got = {(exported.codec.intent_of(a), t) for a, t in zip(_answers(exported), _texts(exported))}
    assert got == expected
    assert len(exported.train) + len(exported.valid) == len(expected)
    assert exported.manifest["records"] == {"train": len(exported.train), "valid": len(exported.valid)}


def test_travel_bot_intent_records_cover_yaml_json_and_retrieval_intents(travel_project, travel_bot_dir):
    exported = export_task("intent", travel_project.nlu)
    expected = _rasa_intent_pairs([travel_bot_dir / "data" / "nlu.yml", travel_bot_dir / "data" / "nlu.json"])
    # plus the end-to-end story turn that carries text and intent: `rasa train` feeds it to NLU components too
    expected.add(("order_meal", "I'd like a vegan meal please"))
    got = {(exported.codec.intent_of(a), t) for a, t in zip(_answers(exported), _texts(exported))}
    assert got == expected
    intents = set(exported.codec.labels)
    assert {"faq/ask_baggage", "faq/ask_checkin", "chitchat/ask_name", "thankyou"} <= intents
    assert "faq" not in intents and "chitchat" not in intents


def test_component_path_gives_the_same_records_and_fingerprint(travel_project, travel_bot_dir):
    """The TrainingData `rasa train` builds (importer from the config file) exports exactly like the CLI's."""
    from rasa.shared.importers.importer import TrainingDataImporter

    importer = TrainingDataImporter.load_from_config(
        str(travel_bot_dir / "config.yml"), str(travel_bot_dir / "domain.yml"), [str(travel_bot_dir / "data")]
    )
    training_data = importer.get_nlu_data("en")
    for fmt in ("chat", "completion"):
        ours = export_task("intent", travel_project.nlu, fmt=fmt)
        theirs = export_task("intent", training_data, fmt=fmt)
        assert theirs.fingerprint == ours.fingerprint
        assert theirs.train_lines == ours.train_lines


def test_stratified_split_every_label_with_two_examples_is_in_both(financial_project):
    exported = export_task("intent", financial_project.nlu, valid_fraction=0.25, seed=3)
    train, valid = Counter(exported.train_labels), Counter(exported.valid_labels)
    total = train + valid
    for label, n in total.items():
        if n >= 2:
            assert train[label] >= 1 and valid[label] >= 1, label
            assert abs(valid[label] - round(n * 0.25)) <= 1
    assert not set(exported.train_lines) & set(exported.valid_lines)
    assert len(set(exported.train_lines + exported.valid_lines)) == len(exported.train_lines) + len(
        exported.valid_lines
    )


def test_stratified_split_edge_cases():
    labels = ["a"] * 2 + ["b"] + ["c"] * 10
    train, valid = stratified_split(labels, 0.2, seed=1)
    assert sorted(train + valid) == list(range(len(labels)))
    assert Counter(labels[i] for i in valid) == {"a": 1, "c": 2}
    assert stratified_split(labels, 0.0, seed=1)[1] == []
    assert stratified_split(labels, 0.2, seed=1) == (train, valid)
    assert stratified_split(labels, 0.2, seed=2) != (train, valid)
    with pytest.raises(DataError):
        stratified_split(labels, 1.0, seed=1)


def test_a_changed_intent_does_not_reshuffle_the_others():
    before = ["a"] * 10 + ["b"] * 10
    after = ["a"] * 10 + ["b"] * 12
    valid_a_before = {i for i in stratified_split(before, 0.3, 7)[1] if before[i] == "a"}
    valid_a_after = {i for i in stratified_split(after, 0.3, 7)[1] if after[i] == "a"}
    assert valid_a_before == valid_a_after


@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_records_follow_the_prompt_format(travel_project, fmt):
    exported = export_task("intent", travel_project.nlu, fmt=fmt)
    record = exported.train[0]
    text, label = prompts.record_prompt_text(record), prompts.record_answer(record)
    assert record == prompts.intent_record(text, label, fmt)
    for line, rec in zip(exported.train_lines, exported.train):
        assert json.loads(line) == rec
        assert line == json.dumps(rec, ensure_ascii=False)
    encoding = get_encoding(exported.base_model.encoding)
    assert exported.manifest["tokens"]["train"] == sum(count_record_tokens(exported.train, encoding))
    assert exported.manifest["tokens"]["valid"] == sum(count_record_tokens(exported.valid, encoding))
    if fmt == "completion":
        assert exported.base_model.name == "babbage-002"
        assert all(r["prompt"].endswith(prompts.SEPARATOR) for r in exported.train)
        assert all(r["completion"].startswith(" ") and r["completion"].endswith(prompts.STOP) for r in exported.train)


def test_entities_task_keeps_spans_roles_groups_and_balances_empty_answers(travel_project):
    exported = export_task("entities", travel_project.nlu)
    by_text = dict(zip(_texts(exported), (prompts.parse_entities(a) for a in _answers(exported))))
    nyc = by_text["get me a ticket from NYC to Rome"]
    # the span as written, not the synonym's value: EntitySynonymMapper maps NYC -> New York afterwards
    assert {"entity": "city", "value": "NYC", "role": "departure", "group": None} in nyc
    assert by_text["I need a flight to the big apple"][0]["value"] == "the big apple"
    meals = by_text["order a small kosher meal and a large veggie one"]
    assert [(e["entity"], e["value"], e["group"]) for e in meals] == [
        ("size", "small", "1"),
        ("meal", "kosher", "1"),
        ("size", "large", "2"),
        ("meal", "veggie", "2"),
    ]
    assert by_text["thanks for booking to Lisbon"] == [
        {"entity": "city", "value": "Lisbon", "role": "destination", "group": None}
    ]  # from the JSON NLU file
    empty = [t for t, e in by_text.items() if e == []]
    annotated = [t for t, e in by_text.items() if e]
    assert 0 < len(empty) <= len(annotated)
    assert exported.codec is None


def test_response_task_uses_stories_rules_and_retrieval_responses(travel_project):
    exported = export_task("response", travel_project.nlu, travel_project.domain, travel_project.stories, history=3)
    records = exported.train + exported.valid
    answers = _answers(exported)
    assert len(records) == len({json.dumps(r, sort_keys=True) for r in records})
    # slot templates kept as they are; first variation only
    assert "Booking your flight to {city}. Shall I go ahead?" in answers
    assert "Hi there! Where to?" not in answers
    # retrieval responses from the domain (chitchat) and from a data file (faq), one per example
    baggage = [t for t, a in zip(_texts(exported), answers) if a == "You can check in one bag of up to 23 kg."]
    assert sorted(baggage) == sorted(
        ["how much luggage can I take?", "what is the baggage allowance", "can I bring two suitcases"]
    )
    assert answers.count("I'm Skye, your travel assistant.") == 3
    # the end-to-end story text is used for the user turn
    assert "I'd like a vegan meal please" in _texts(exported)
    # history: at most 3 turns, the last one before the answer
    for record in records:
        turns = [m for m in record["messages"][1:-1]]
        assert 1 <= len(turns) <= 3
    booked = [r for r in records if prompts.record_answer(r) == "Done, your flight is booked."][0]
    assert [m["role"] for m in booked["messages"][1:]] == ["user", "assistant", "user", "assistant"]


def test_response_history_length_is_configurable(travel_project):
    one = export_task("response", travel_project.nlu, travel_project.domain, travel_project.stories, history=1)
    assert all(len(r["messages"]) == 3 for r in one.train + one.valid)


def test_format_and_base_model_defaults_and_conflicts(travel_project):
    assert export_task("intent", travel_project.nlu).base_model.name == "gpt-4o-mini-2024-07-18"
    assert export_task("intent", travel_project.nlu, base_model="davinci-002").fmt == "completion"
    assert export_task("intent", travel_project.nlu, base_model="gpt-3.5-turbo").codec.encoding == "cl100k_base"
    with pytest.raises(DataError, match="completion format"):
        export_task("intent", travel_project.nlu, fmt="chat", base_model="babbage-002")
    with pytest.raises(DataError, match="unknown base model"):
        export_task("intent", travel_project.nlu, base_model="gpt-2")


def test_manifest_and_labels_files(travel_project, tmp_path):
    exported = export_task("intent", travel_project.nlu, seed=5)
    task_dir = write_export(exported, tmp_path, command="rasa-gpt3 export --project x --out y")
    assert sorted(p.name for p in task_dir.iterdir()) == ["labels.json", "manifest.json", "train.jsonl", "valid.jsonl"]
    manifest = json.loads((task_dir / "manifest.json").read_text())
    assert manifest["fingerprint"] == exported.fingerprint
    assert manifest["prompt_format_version"] == prompts.PROMPT_FORMAT_VERSION
    assert manifest["command"] == "rasa-gpt3 export --project x --out y"
    assert manifest["seed"] == 5
    assert sum(v["train"] + v["valid"] for v in manifest["labels"].values()) == len(exported.train) + len(
        exported.valid
    )
    assert manifest["labels"]["faq/ask_baggage"]["label"] == exported.codec.label_of("faq/ask_baggage")
    assert manifest["estimate"]["epochs"] >= 1 and manifest["estimate"]["training_cost_usd"] > 0
    assert manifest["validation"]["errors"] == 0
    codec = LabelCodec.from_json(json.loads((task_dir / "labels.json").read_text()))
    assert codec.labels == exported.codec.labels
    assert (task_dir / "train.jsonl").read_text(encoding="utf-8") == exported.jsonl("train")


def test_cli_export_all_is_byte_identical_on_rerun(tmp_path, capsys, travel_bot_dir):
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["export", "--project", str(travel_bot_dir), "--task", "all", "--format", "completion"]
    assert main(common + ["--out", str(first)]) == 0
    assert main(common + ["--out", str(second)]) == 0
    out = capsys.readouterr().out
    assert "intent:" in out and "entities:" in out and "response:" in out and "validation:" in out
    for task in ("intent", "entities", "response"):
        for name in ("train.jsonl", "valid.jsonl"):
            assert (first / task / name).read_bytes() == (second / task / name).read_bytes()
        one = json.loads((first / task / "manifest.json").read_text())
        two = json.loads((second / task / "manifest.json").read_text())
        assert one.pop("command").replace(str(first), str(second)) == two.pop("command")
        assert one == two
    assert main(common + ["--out", str(first)]) == 0  # over an existing export: same bytes again
    assert (first / "intent" / "train.jsonl").read_bytes() == (second / "intent" / "train.jsonl").read_bytes()


def test_cli_export_writes_but_exits_one_when_the_data_has_errors(tmp_path, capsys):
    bot = tmp_path / "tiny"
    (bot / "data").mkdir(parents=True)
    (bot / "domain.yml").write_text('version: "3.1"\nintents:\n  - greet\n  - bye\n')
    (bot / "data" / "nlu.yml").write_text(
        'version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n    - hello\n    - hey\n'
        "- intent: bye\n  examples: |\n    - bye\n    - ciao\n"
    )
    assert main(["export", "--project", str(bot), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "error [example_count]" in out
    assert json.loads((tmp_path / "out" / "intent" / "manifest.json").read_text())["validation"]["errors"] == 1
    with pytest.raises(DataError, match="no entity annotations"):
        export_task("entities", load_project(bot).nlu)


@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_batch_intent_records_equal_single_ones(fmt):
    examples = [("  hello   there ", "greet"), ("what's\tmy balance?", "balance"), ("ok", "affirm")]
    assert prompts.intent_records(examples, fmt) == [
        prompts.intent_record(text, label, fmt) for text, label in examples
    ]


def test_user_files_in_the_task_directory_survive_a_re_export(travel_project, tmp_path):
    exported = export_task("intent", travel_project.nlu, seed=5)
    task_dir = write_export(exported, tmp_path)
    (task_dir / "notes.txt").write_text("mine")
    (task_dir / ".train.jsonl.abc123.tmp").write_text("left by an export killed with an older version")
    write_export(export_task("intent", travel_project.nlu, seed=6), tmp_path)
    assert sorted(p.name for p in task_dir.iterdir()) == [
        "labels.json",
        "manifest.json",
        "notes.txt",
        "train.jsonl",
        "valid.jsonl",
    ]
    assert (task_dir / "notes.txt").read_text() == "mine"
    assert json.loads((task_dir / "manifest.json").read_text())["seed"] == 6
    assert os.listdir(tmp_path) == ["intent"]


def test_cli_output_paths_that_cannot_be_written_give_one_line(tmp_path, travel_bot_dir, run_cli_many):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    task_file_out = tmp_path / "task_file_out"
    task_file_out.mkdir()
    (task_file_out / "intent").write_text("keep me too")
    export = ["export", "--project", str(travel_bot_dir), "--out"]
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(prompts.intent_record(f"text {i}", "yes", "chat")) + "\n" for i in range(12)))
    cases = {
        "out_is_a_file": (export + [str(a_file)], "is a file, not a directory"),
        "task_dir_is_a_file": (export + [str(task_file_out)], "intent is a file"),
        "out_under_a_file": (export + [str(a_file / "sub")], f"{a_file} is a file"),
        # root may write anywhere, but not a name longer than the file system allows: refused at write time
        "out_name_too_long": (export + [str(tmp_path / ("x" * 300))], "File name too long"),
        "fix_names_a_directory": (["validate", str(records), "--fix", str(tmp_path)], "is a directory"),
    }
    results = run_cli_many([args for args, _ in cases.values()], tmp_path)
    for (name, (_, expected)), result in zip(cases.items(), results):
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (name, result.stderr)
    assert a_file.read_text() == "keep me" and (task_file_out / "intent").read_text() == "keep me too"
    assert sorted(os.listdir(tmp_path)) == ["a_file", "records.jsonl", "task_file_out"]
    assert os.listdir(task_file_out) == ["intent"]


# ---------------------------------------------------------------- an interrupted re-export

# Runs `rasa-gpt3 export` and stops it just before its N-th step that changes what the output directory shows (a
# temporary directory, a rename, a removal): it makes a file named STOPPED, then waits for one named GO.
# The test sends the signal while it waits, so the kill lands at a known point of the real CLI's run.
_STOPPABLE_CLI = textwrap.dedent("""
    import os, runpy, sys, time

    out, stop_at, control = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    steps = {"tempfile.mkdtemp", "os.rename", "shutil.rmtree"}
    seen, inside = [0], [False]

    def stop_before_step(event, args):
        if inside[0]:
            return
        swap = event == "ctypes.dlsym" and "renameat2" in args  # the directory swap itself
        if not swap and not (event in steps and os.path.realpath(str(args[0])).startswith(out)):
            return
        seen[0] += 1
        if seen[0] != stop_at:
            return
        inside[0] = True
        open(os.path.join(control, "STOPPED"), "w").close()
        inside[0] = False
        while not os.path.exists(os.path.join(control, "GO")):
            time.sleep(0.01)

    sys.addaudithook(stop_before_step)
    sys.argv = ["rasa-gpt3", *sys.argv[4:]]
    runpy.run_module("rasa_gpt3.cli", run_name="__main__")
""")


def _export_state(task_dir):
    """The files of an export directory, the manifest without its command (which names the --out directory)."""
    if not task_dir.is_dir():
        return None
    state = {p.name: p.read_bytes() for p in task_dir.iterdir()}
    if "manifest.json" in state:
        manifest = json.loads(state["manifest.json"])
        manifest.pop("command")
        state["manifest.json"] = manifest
    return state


def _stopped_exports(tmp_path, export_args, old_dir, kill_points, sig, name="run"):
    """Starts one stoppable export per kill point, each over a copy of `old_dir`, and signals each where it stops.

    Returns (kill point, out directory, return code, stopped or not) for each.
    """
    import shutil

    runs = []
    for point in kill_points:
        out, control = tmp_path / f"{name}{point}", tmp_path / f"{name}{point}_control"
        shutil.copytree(old_dir, out / "intent")
        control.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", _STOPPABLE_CLI, str(out), str(point), str(control), *export_args, "--out", str(out)],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs.append((point, out, control, process))
    results = []
    for point, out, control, process in runs:
        while process.poll() is None and not (control / "STOPPED").exists():
            time.sleep(0.02)
        stopped = (control / "STOPPED").exists()
        if stopped:
            process.send_signal(sig)
            (control / "GO").touch()
        process.communicate(timeout=120)
        results.append((point, out, process.returncode, stopped))
    return results


@pytest.mark.slow  # a dozen export processes
def test_an_interrupted_re_export_leaves_the_old_or_the_new_export_whole(tmp_path, travel_bot_dir, run_cli_many):
    export = ["export", "--project", str(travel_bot_dir), "--format", "completion"]
    old_run, new_run = run_cli_many(
        [
            export + ["--seed", "1", "--out", str(tmp_path / "old")],
            export + ["--seed", "2", "--out", str(tmp_path / "new")],
        ],
        tmp_path,
    )
    assert old_run.returncode == new_run.returncode == 0, old_run.stderr + new_run.stderr
    old, new = _export_state(tmp_path / "old" / "intent"), _export_state(tmp_path / "new" / "intent")
    assert old != new and old["train.jsonl"] != new["train.jsonl"]

    completed, point = False, 1
    while not completed:  # SIGTERM before each step of the re-export in turn, until one runs to the end
        points = range(point, point + 4)
        for point, out, code, stopped in _stopped_exports(
            tmp_path, export + ["--seed", "2"], tmp_path / "old" / "intent", points, signal.SIGTERM
        ):
            state = _export_state(out / "intent")
            assert state in (old, new), (point, sorted(state or {}))
            assert os.listdir(out) == ["intent"], (point, os.listdir(out))  # no temporary file or directory
            if stopped:
                assert code == -signal.SIGTERM, point
            else:
                assert code == 0 and state == new, point
                completed = True
        point += 1
    assert point > 4  # the re-export took several steps, each one interrupted once

    # SIGKILL cannot be caught: the temporary directory stays, the old export too, and the next export removes it
    ((_, out, code, stopped),) = _stopped_exports(
        tmp_path, export + ["--seed", "2"], tmp_path / "old" / "intent", [2], signal.SIGKILL, name="killed"
    )
    assert stopped and code == -signal.SIGKILL
    assert _export_state(out / "intent") == old and len(os.listdir(out)) == 2
    (rerun,) = run_cli_many([export + ["--seed", "2", "--out", str(out)]], tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert _export_state(out / "intent") == new and os.listdir(out) == ["intent"]
