"""Checks of fine-tune data (work in progress: the report structure; the checks follow)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Finding:
    """One problem a check found: severity (error/warning), the check's name, message, fix, and line numbers."""

    check: str
    severity: str
    message: str
    fix: str = ""
    lines: List[int] = field(default_factory=list)


@dataclass
class ValidationReport:
    """All findings for one file or record list, with counts, tokens and the cost estimate."""

    source: str
    findings: List[Finding] = field(default_factory=list)
    stats: Dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def summary(self) -> Dict[str, Any]:
        """Counts of errors and warnings and the checks that raised them."""
        return {
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks": sorted({f.check for f in self.findings}),
        }


    def summary_lines(self) -> List[str]:
        """One line with the counts, then one line per finding."""
        lines = [f"validation: {len(self.errors)} errors, {len(self.warnings)} warnings"]
        lines.extend(f"{f.severity} [{f.check}]: {f.message}" for f in self.findings)
        return lines


def validate_records(records: List[Dict[str, Any]], *, fmt: Optional[str] = None, base_model: Any = None,
                     labels: Optional[List[str]] = None, codec: Any = None, token_counts: Optional[List[int]] = None,
                     source: str = "records") -> ValidationReport:
    """Runs every check on `records` (placeholder until the checks land)."""
    return ValidationReport(source=source)
