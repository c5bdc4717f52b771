"""Object ids of the local backend, shaped like OpenAI's, and their validation (no path tricks through an id)."""

from __future__ import annotations

import re
import secrets
import string
from typing import Optional

_ALPHABET = string.ascii_letters + string.digits

PREFIXES = {"file": "file-", "job": "ftjob-", "event": "ftevent-", "checkpoint": "ftckpt-"}
_OBJECT_ID = re.compile(r"^(file|ftjob|ftevent|ftckpt)-[A-Za-z0-9]{1,64}$")
# ft:<base>:<org>:<suffix>:<key>, as OpenAI names fine-tuned models
_MODEL_ID = re.compile(r"^ft:([A-Za-z0-9._-]{1,80}):([A-Za-z0-9_-]{0,64}):([A-Za-z0-9._-]{0,64}):([A-Za-z0-9]{4,64})$")
ORGANIZATION = "local"


def new_id(kind: str, length: int = 24) -> str:
    """A fresh random id of `kind` ('file', 'job', 'event', 'checkpoint')."""
    return PREFIXES[kind] + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def is_object_id(value: str, kind: str) -> bool:
    """Whether `value` is a well-formed id of `kind` (safe to use as a file name)."""
    return isinstance(value, str) and bool(_OBJECT_ID.match(value)) and value.startswith(PREFIXES[kind])


def clean_suffix(suffix: Optional[str]) -> str:
    """A model-name suffix reduced to what OpenAI allows (letters, digits, '-', '_', '.'; at most 64)."""
    if not suffix:
        return ""
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(suffix))[:64]


def id_base(base_model: str) -> str:
    """A base model's part of a fine-tuned model id: OpenAI's names as they are; an open-weights base model
    (`hf:ORG/NAME` or a directory) by its last part, other characters than letters, digits, '.', '_', '-' as '-'."""
    last = base_model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "-", last.removeprefix("hf:"))[:80] or "model"


def new_model_id(base_model: str, suffix: Optional[str]) -> str:
    """A fine-tuned model id `ft:<base>:local:<suffix>:<key>` (the base as id_base writes it)."""
    key = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"ft:{id_base(base_model)}:{ORGANIZATION}:{clean_suffix(suffix)}:{key}"


def model_key(model_id: str) -> Optional[str]:
    """The storage key (last segment) of a fine-tuned model id, or None when `model_id` is not one."""
    if not isinstance(model_id, str):
        return None
    match = _MODEL_ID.match(model_id)
    return match.group(4) if match else None
