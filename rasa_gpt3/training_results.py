"""A fine-tuning job's result file: parse its CSV (plain, or base64 as OpenAI serves it), print it, plot it.

The result file has one row per training step with columns such as step, train_loss, train_accuracy (or
train_mean_token_accuracy), valid_loss, valid_mean_token_accuracy and, at epoch ends, full_valid_loss and
full_valid_mean_token_accuracy. Cells are empty where a metric was not computed at that step.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.errors import DataError

LOSS_COLUMNS = ("train_loss", "valid_loss", "full_valid_loss")
ACCURACY_COLUMNS = (
    "train_accuracy",
    "train_mean_token_accuracy",
    "valid_mean_token_accuracy",
    "valid_accuracy",
    "full_valid_mean_token_accuracy",
)


@dataclass(frozen=True)
class ResultTable:
    """The rows of a result file: `columns` in file order, each row mapping column → number (None when empty)."""

    columns: List[str]
    rows: List[Dict[str, Optional[float]]]

    def series(self, column: str) -> List[tuple]:
        """(step, value) pairs of `column` where it has a value."""
        points = []
        for index, row in enumerate(self.rows):
            value = row.get(column)
            if value is not None:
                step = row.get("step")
                points.append((step if step is not None else index + 1, value))
        return points

    def final_metrics(self) -> Dict[str, float]:
        """The last value of each metric column, named as the registry stores them.

        valid_loss / valid_accuracy prefer the full-validation-set figures when the file has them.
        """

        def last(*columns: str) -> Optional[float]:
            for column in columns:
                points = self.series(column)
                if points:
                    return points[-1][1]
            return None

        found = {
            "train_loss": last("train_loss"),
            "train_accuracy": last("train_accuracy", "train_mean_token_accuracy"),
            "valid_loss": last("full_valid_loss", "valid_loss"),
            "valid_accuracy": last("full_valid_mean_token_accuracy", "valid_mean_token_accuracy", "valid_accuracy"),
        }
        return {name: value for name, value in found.items() if value is not None}


def decode_result_file(content: Union[bytes, str]) -> str:
    """The CSV text of a result file, whether served plain or base64-encoded."""
    raw = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    text = raw.decode("utf-8-sig", errors="replace").strip()
    first_line = text.splitlines()[0] if text else ""
    if "," in first_line:
        return text
    try:
        decoded = base64.b64decode("".join(text.split()), validate=True).decode("utf-8-sig")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise DataError("the job's result file is neither CSV nor base64-encoded CSV") from None
    if "," not in (decoded.splitlines() or [""])[0]:
        raise DataError("the job's result file is neither CSV nor base64-encoded CSV")
    return decoded.strip()


def _cell(value: Optional[str]) -> Optional[float]:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def parse_result_file(content: Union[bytes, str]) -> ResultTable:
    """A ResultTable from a result file's bytes or text (plain or base64 CSV); raises DataError otherwise."""
    reader = csv.DictReader(io.StringIO(decode_result_file(content)))
    columns = [name.strip() for name in (reader.fieldnames or [])]
    if "step" not in columns:
        raise DataError(f"the job's result file has no `step` column (columns: {', '.join(columns) or 'none'})")
    rows = [{name.strip(): _cell(value) for name, value in row.items() if name} for row in reader]
    return ResultTable(columns=columns, rows=rows)


def format_table(table: ResultTable) -> str:
    """The table as aligned text, leaving out columns that never have a value."""
    columns = [column for column in table.columns if any(row.get(column) is not None for row in table.rows)]
    if not columns:
        return "(the result file has no rows)"

    def show(column: str, value: Optional[float]) -> str:
        if value is None:
            return ""
        return str(int(value)) if column == "step" else f"{value:.4f}"

    cells = [[show(column, row.get(column)) for column in columns] for row in table.rows]
    widths = [max([len(column)] + [len(line[index]) for line in cells]) for index, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def plot_results(table: ResultTable, path: Union[str, Path], title: str = "") -> Path:
    """Writes a PNG with the loss curves (left) and accuracy curves (right) of `table` to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    panels = (
        (figure.add_subplot(1, 2, 1), LOSS_COLUMNS, "loss"),
        (figure.add_subplot(1, 2, 2), ACCURACY_COLUMNS, "accuracy"),
    )
    for axes, columns, label in panels:
        _draw(axes, table, columns)
        axes.set_xlabel("step")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def _draw(axes, table: ResultTable, columns: Sequence[str]) -> None:
    drawn = False
    for column in columns:
        points = table.series(column)
        if not points:
            continue
        steps, values = zip(*points)
        # sparse series (validation every few steps, full validation at epoch ends) read better with markers
        marker = "o" if len(points) < len(table.rows) / 2 else None
        axes.plot(steps, values, label=column, marker=marker, markersize=3)
        drawn = True
    if drawn:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
