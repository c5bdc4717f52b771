"""Bad projects and bad files: one clear line naming the file, a non-zero exit, no traceback, no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rasa_gpt3.data.project import load_project
from rasa_gpt3.errors import ProjectError

NLU_OK = 'version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n    - hello\n'
DOMAIN_OK = 'version: "3.1"\nintents:\n  - greet\n'

BAD_PROJECTS = {
    # name: (domain.yml, data/nlu.yml, what the one line must say)
    "malformed_nlu_yaml": (
        DOMAIN_OK,
        'version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n   - x: [\n',
        ["malformed YAML", "nlu.yml", "line 6"],
    ),
    "malformed_domain_yaml": ('version: "3.1"\nintents:\n  - greet: [\n', NLU_OK, ["malformed YAML", "domain.yml"]),
    "domain_schema_rejected": (
        'version: "3.1"\nintents:\n  - greet\nslots:\n  s:\n    type: text\n',
        NLU_OK,
        ["domain.yml", "line 6", "mappings"],
    ),
    "domain_invalid": (
        'version: "3.1"\nintents:\n  - greet\nentities:\n  - city:\n',
        NLU_OK,
        ["Rasa rejected", "domain.yml", "entity 'city'"],
    ),
    "nlu_schema_rejected": (
        DOMAIN_OK,
        'version: "3.1"\nnlu:\n- intent: greet\n  exmples: |\n    - hi\n',
        ["nlu.yml", "line 3", "exmples"],
    ),
    "empty_nlu": (DOMAIN_OK, 'version: "3.1"\nnlu: []\n', ["no NLU training examples", "data"]),
    "bad_json_nlu": (
        DOMAIN_OK,
        {"nlu.json": '{"rasa_nlu_data": {"common_examples": [{"text": "hi", "intent": '},
        ["malformed JSON", "nlu.json", "line 1"],
    ),
    "json_nlu_schema_rejected": (
        DOMAIN_OK,
        {
            "nlu.yml": NLU_OK,
            "more.json": json.dumps(
                {"rasa_nlu_data": {"common_examples": [{"text": "hi", "intent": "greet", "entities": [{"start": 0}]}]}}
            ),
        },
        ["Rasa rejected", "more.json", "'end' is a required property"],
    ),
    "nlu_not_utf8": (DOMAIN_OK, {"nlu.yml": NLU_OK.encode() + b"    - caf\xe9\n"}, ["nlu.yml", "not UTF-8"]),
}


def _make(root: Path, name: str) -> Path:
    domain, nlu, _ = BAD_PROJECTS[name]
    project = root / name
    (project / "data").mkdir(parents=True)
    (project / "domain.yml").write_text(domain)
    files = nlu if isinstance(nlu, dict) else {"nlu.yml": nlu}
    for name, content in files.items():
        target = project / "data" / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return project


@pytest.mark.parametrize("name", sorted(BAD_PROJECTS))
def test_load_project_maps_rasa_failures_to_one_line(tmp_path, name):
    project = _make(tmp_path, name)
    with pytest.raises(ProjectError) as raised:
        load_project(project)
    message = str(raised.value)
    assert "\n" not in message
    for part in BAD_PROJECTS[name][2]:
        assert part in message, message


def test_missing_project_and_paths(tmp_path, travel_bot_dir):
    with pytest.raises(ProjectError, match="does not exist"):
        load_project(tmp_path / "nowhere")
    (tmp_path / "bot").mkdir()
    with pytest.raises(ProjectError, match="training data .* does not exist"):
        load_project(tmp_path / "bot")
    with pytest.raises(ProjectError, match="domain .* does not exist"):
        load_project(travel_bot_dir, domain=tmp_path / "missing.yml")


def test_rasa_warnings_are_collected_not_printed(travel_project):
    assert any("JSON format is deprecated" in w for w in travel_project.warnings)
    assert all("\n" not in w for w in travel_project.warnings)


def test_cli_bad_inputs_give_one_line_and_no_output(tmp_path, travel_bot_dir, run_cli_many):
    cases = {}
    for name in ("malformed_nlu_yaml", "domain_invalid", "empty_nlu"):
        cases[name] = ["export", "--project", str(_make(tmp_path, name)), "--out", str(tmp_path / f"out_{name}")]
    cases["missing_project"] = [
        "export",
        "--project",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "out_missing"),
    ]
    cases["format_model_conflict"] = [
        "export",
        "--project",
        str(travel_bot_dir),
        "--format",
        "chat",
        "--base-model",
        "babbage-002",
        "--out",
        str(tmp_path / "out_conflict"),
    ]
    # (a JSONL line that is not JSON or not UTF-8 is a finding of `validate`, not an error: test_data_validation.py)

    results = dict(zip(cases, run_cli_many(list(cases.values()), cwd=tmp_path)))
    expected = {
        "malformed_nlu_yaml": "nlu.yml",
        "domain_invalid": "domain.yml",
        "empty_nlu": "no NLU training examples",
        "missing_project": "does not exist",
        "format_model_conflict": "babbage-002",
    }
    for name, result in results.items():
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
        assert result.returncode != 0, name
        assert "Traceback" not in result.stderr, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)
        assert expected[name] in lines[0], (name, lines[0])
    assert not any(path.name.startswith("out_") for path in tmp_path.iterdir())
