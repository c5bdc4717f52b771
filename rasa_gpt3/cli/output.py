"""How verbs print tables on a terminal."""

from __future__ import annotations

from typing import Sequence


def format_columns(rows: Sequence[tuple]) -> str:
    """Rows of cells as left-aligned columns (the first row is the header)."""
    widths = [max(len(str(row[index])) for row in rows) for index in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
