"""One task's export as data: the records, their split, the label codec, fingerprint and manifest.

Made by `export` (from the bot's training data) and written to disk by `export_files`; both import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from rasa_gpt3.data.base_models import BaseModel
from rasa_gpt3.data.labels import LabelCodec


@dataclass
class ExportedTask:
    """One task's export: records split into train/valid, the label codec (intent task), fingerprint, manifest."""

    task: str
    fmt: str
    base_model: BaseModel
    train: List[Dict[str, Any]]
    valid: List[Dict[str, Any]]
    codec: Optional[LabelCodec]
    fingerprint: str
    manifest: Dict[str, Any]
    train_labels: List[str] = field(default_factory=list, repr=False)
    valid_labels: List[str] = field(default_factory=list, repr=False)
    train_lines: List[str] = field(default_factory=list, repr=False)
    valid_lines: List[str] = field(default_factory=list, repr=False)
    report: Any = field(default=None, repr=False)  # validation.ValidationReport over train + valid

    def jsonl(self, part: str) -> str:
        """The exact text of train.jsonl or valid.jsonl."""
        lines = self.train_lines if part == "train" else self.valid_lines
        return "".join(line + "\n" for line in lines)
