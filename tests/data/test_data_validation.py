"""`validate`: one test per check (data that trips it, data that doesn't), the report, --json and --fix."""
from __future__ import annotations

import json

import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.cli import main
from rasa_gpt3.data.validation import CHECKS, read_jsonl, repair_records, validate_file, validate_records
from rasa_gpt3.errors import DataError


def chat(text, answer):
    return prompts.intent_record(text, answer, "chat")


def comp(text, answer):
    return prompts.intent_record(text, answer, "completion")


# 100 examples for each of two single-token labels: trips nothing
GOOD_CHAT = [chat(f"message number {i}", "yes" if i % 2 else "no") for i in range(200)]
GOOD_COMP = [comp(f"message number {i}", "yes" if i % 2 else "no") for i in range(200)]
GENERATION = [comp(f"question {i}", f"a long and different answer number {i}") for i in range(120)]


def _with(records, index, record):
    changed = list(records)
    changed[index] = record
    return changed


def _raw_comp(prompt, completion):
    return {"prompt": prompt, "completion": completion}


# check name -> (records that trip it, records that do not, options for validate_records, severity)
CASES = {
    "format": (GOOD_CHAT[:150] + GOOD_COMP[150:], GOOD_CHAT, {}, "error"),
    "missing_keys": (_with(GOOD_COMP, 3, {"prompt": "only a prompt\n\n###\n\n"}), GOOD_COMP, {}, "error"),
    "extra_keys": (_with(GOOD_CHAT, 0, {**GOOD_CHAT[0], "id": 7}), GOOD_CHAT, {}, "warning"),
    "message_structure": (_with(GOOD_CHAT, 1, {"messages": [{"role": "robot", "content": "hi"},
                                                             {"role": "assistant", "content": "yes"}]}),
                          GOOD_CHAT, {}, "error"),
    "assistant_message": (_with(GOOD_CHAT, 2, {"messages": [{"role": "user", "content": "hi"}]}), GOOD_CHAT, {},
                          "error"),
    "empty_completions": (_with(GOOD_COMP, 4, _raw_comp("empty answer\n\n###\n\n", " END")), GOOD_COMP, {}, "error"),
    "duplicates": (GOOD_CHAT + [GOOD_CHAT[5]], GOOD_CHAT, {}, "warning"),
    "example_count": (GOOD_CHAT[:5], GOOD_CHAT, {}, "error"),
    "token_limit": (_with(GOOD_COMP, 0, comp("word " * 17000, "yes")), GOOD_COMP, {"base_model": "babbage-002"},
                    "error"),
    "special_tokens": (_with(GOOD_CHAT, 0, chat("hi <|endoftext|> there", "yes")), GOOD_CHAT, {}, "error"),
    "unicode": (_with(GOOD_CHAT, 0, chat("broken \ud800 text", "yes")), GOOD_CHAT, {}, "error"),
    "prompt_separator": ([_raw_comp(f"question {i}", r["completion"]) for i, r in enumerate(GENERATION)],
                         GENERATION, {}, "warning"),
    "completion_leading_space": (_with(GENERATION, 0, _raw_comp("question 0\n\n###\n\n", "answer END")), GENERATION,
                                 {}, "warning"),
    "completion_stop": ([_raw_comp(r["prompt"], f" answer {i}") for i, r in enumerate(GENERATION)], GENERATION, {},
                        "warning"),
    "capitalisation": ([chat(f"MESSAGE NUMBER {i} IN CAPITALS", r["messages"][-1]["content"])
                        for i, r in enumerate(GOOD_CHAT)], GOOD_CHAT, {}, "warning"),
    "label_conflicts": (GOOD_CHAT + [chat("message number 0", "yes")], GOOD_CHAT, {}, "warning"),
    "examples_per_label": (GOOD_CHAT + [chat("a lonely example", "maybe")], GOOD_CHAT, {}, "warning"),
    "class_imbalance": (GOOD_CHAT + [chat(f"one of a few {i}", "maybe") for i in range(8)], GOOD_CHAT, {}, "warning"),
    "single_token_labels": ([chat(r["messages"][1]["content"], r["messages"][-1]["content"] + "_check_recipients_now")
                             for r in GOOD_CHAT], GOOD_CHAT, {}, "warning"),
}


def test_every_check_has_a_case():
    assert {check.__name__[len("check_"):] for check in CHECKS} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_trips_on_bad_data_and_not_on_good(name):
    bad, good, options, severity = CASES[name]
    tripped = [f for f in validate_records(bad, **options).findings if f.check == name]
    assert tripped, name
    assert {f.severity for f in tripped} == {severity}
    assert all(f.message and f.fix for f in tripped if f.severity == "error")
    clean = validate_records(good, **options)
    assert not [f for f in clean.findings if f.check == name], clean.findings


def test_findings_carry_line_numbers_and_the_report_counts():
    records = _with(GOOD_COMP, 4, _raw_comp("empty answer\n\n###\n\n", " END")) + [GOOD_COMP[7]]
    report = validate_records(records, lines=[n * 2 for n in range(1, len(records) + 1)])
    empty = [f for f in report.findings if f.check == "empty_completions"][0]
    duplicate = [f for f in report.findings if f.check == "duplicates"][0]
    assert empty.lines == [10] and duplicate.lines == [2 * len(records)]
    assert not report.ok and report.summary()["errors"] == 1
    assert report.stats["classification"] is True and report.stats["labels"] == 2
    assert report.stats["tokens"]["total"] > 0 and report.stats["estimate"]["epochs"] >= 1
    text = report.render()
    assert "error [empty_completions]" in text and "fix:" in text and "errors: 1," in text


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_cli_validate_clean_file_exits_zero_with_json(tmp_path, capsys):
    path = _write(tmp_path / "good.jsonl", GOOD_COMP)
    assert main(["validate", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["format"] == "completion" and report["records"] == 200
    assert report["base_model"] == "babbage-002"
    assert report["estimate"]["training_cost_usd"] > 0


def test_cli_validate_errors_exit_one(tmp_path, capsys):
    path = _write(tmp_path / "bad.jsonl", CASES["assistant_message"][0])
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error [assistant_message]" in out and "(lines 3)" in out


def test_cli_fix_writes_a_repaired_copy(tmp_path, capsys):
    records = [_raw_comp(f"question {i}", f"answer {i}") for i in range(30)]
    records += [records[0], _raw_comp("nothing here", "   "), {**records[1], "note": "x"},
                _raw_comp("a <|endoftext|> b", "answer x")]
    path = _write(tmp_path / "raw.jsonl", records)
    fixed = tmp_path / "fixed.jsonl"
    assert main(["validate", str(path), "--fix", str(fixed)]) == 0  # the repaired copy has no errors
    out = capsys.readouterr().out
    assert "error [empty_completions]" in out
    assert "dropped duplicate records: 2 (lines 31, 33)" in out and "dropped records with an empty answer" in out
    assert "added the separator" in out and "added the stop sequence" in out and "removed special tokens" in out
    repaired = read_jsonl(fixed).records
    assert len(repaired) == 31  # the record with an extra key is a duplicate once the key is gone
    assert all(r["prompt"].endswith(prompts.SEPARATOR) for r in repaired)
    assert all(r["completion"].startswith(" ") and r["completion"].endswith(prompts.STOP) for r in repaired)
    assert all(set(r) == {"prompt", "completion"} for r in repaired)
    assert validate_file(fixed).ok


def test_repair_drops_unusable_chat_records():
    records = CASES["message_structure"][0][:20] + CASES["unicode"][0][:3]
    repaired, actions = repair_records(records)
    assert len(repaired) == 20  # 19 + 1: one bad role, one lone surrogate, one duplicate dropped
    assert any("malformed" in a for a in actions) and any("UTF-8" in a for a in actions)


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "completion": " b"}\n\n[1, 2\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: not JSON"):
        read_jsonl(path)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    path.write_text('\n{"prompt": "a", "completion": " b"}\n\n')
    parsed = read_jsonl(path)
    assert parsed.lines == [2] and len(parsed.records) == 1


def test_exported_files_validate_clean(travel_project, tmp_path):
    from rasa_gpt3.data.export import export_task, write_export

    exported = export_task("intent", travel_project.nlu, fmt="completion")
    task_dir = write_export(exported, tmp_path)
    report = validate_file(task_dir / "train.jsonl")
    assert report.ok and report.stats["format"] == "completion"
    assert not [f for f in report.findings if f.check == "single_token_labels"]
