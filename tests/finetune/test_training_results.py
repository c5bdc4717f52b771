"""The result file: CSV plain or base64 (as OpenAI serves it), the table, and the PNG plot."""

import base64

import pytest
from PIL import Image

from rasa_gpt3.errors import DataError
from rasa_gpt3.training_results import format_table, parse_result_file, plot_results

CSV = (
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
    "1,1.50,0.40,,\n"
    "2,1.00,0.60,1.20,0.55\n"
    "3,0.50,0.90,,\n"
    "4,0.25,0.95,0.40,0.85\n"
)


@pytest.mark.parametrize(
    "content", [CSV, CSV.encode(), base64.b64encode(CSV.encode()), base64.encodebytes(CSV.encode())]
)
def test_plain_and_base64_result_files_parse_the_same(content):
    table = parse_result_file(content)
    assert table.columns[0] == "step" and len(table.rows) == 4
    assert table.rows[0]["valid_loss"] is None and table.rows[1]["valid_loss"] == 1.2
    assert table.final_metrics() == {
        "train_loss": 0.25,
        "train_accuracy": 0.95,
        "valid_loss": 0.4,
        "valid_accuracy": 0.85,
    }


def test_full_validation_figures_are_preferred_when_present():
    table = parse_result_file("step,train_loss,valid_loss,full_valid_loss\n1,1,0.9,\n2,0.5,0.6,0.7\n")
    assert table.final_metrics()["valid_loss"] == 0.7


@pytest.mark.parametrize("content", [b"\x00\x01 not a csv", b"a;b;c", b"col1,col2\n1,2\n"])
def test_anything_else_is_a_clear_error(content):
    with pytest.raises(DataError, match="result file"):
        parse_result_file(content)


def test_table_aligns_columns_and_skips_empty_ones():
    text = format_table(parse_result_file("step,train_loss,valid_loss\n1,0.5,\n10,0.25,\n"))
    lines = text.splitlines()
    assert lines[0].split() == ["step", "train_loss"]
    assert lines[2].split() == ["10", "0.2500"] and len({len(line) for line in lines}) == 1


def test_plot_writes_a_valid_png(tmp_path):
    path = plot_results(parse_result_file(CSV), tmp_path / "curves.png", title="ftjob-1")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
