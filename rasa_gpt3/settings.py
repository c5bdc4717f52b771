"""One typed settings object for every part of rasa_gpt3: where the API is, how long to wait, where state lives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import urlparse

LOCAL_BACKEND = "local"
STATE_DIR_NAME = ".rasa_gpt3"
REGISTRY_FILE_NAME = "gpt3_models.yml"

ENV_API_KEY = "OPENAI_API_KEY"
ENV_BASE_URL = "OPENAI_BASE_URL"
# forces the embedded local backend even when an API key is set (tests, demos)
ENV_FORCE_LOCAL = "RASA_GPT3_LOCAL"
ENV_STATE_DIR = "RASA_GPT3_STATE_DIR"


@dataclass(frozen=True)
class Settings:
    """How to reach the model API and where the project keeps its files.

    With no API key (or RASA_GPT3_LOCAL=1) the embedded local backend is used; with a key, OpenAI or the
    OpenAI-compatible server at `base_url`.
    """

    project_dir: Path = field(default_factory=Path.cwd)
    api_key: Optional[str] = None
    base_url: Optional[str] = None
    force_local: bool = False
    state_dir: Optional[Path] = None
    # seconds for one HTTP request; the NLU component overrides this with its own small budget
    timeout: float = 30.0
    max_retries: int = 2

    @classmethod
    def from_env(cls, project_dir: Optional[os.PathLike] = None, **overrides: Any) -> Settings:
        """Settings from the environment (OPENAI_API_KEY, OPENAI_BASE_URL, RASA_GPT3_*), then `overrides`."""
        env: Dict[str, Any] = {
            "project_dir": Path(project_dir) if project_dir is not None else Path.cwd(),
            "api_key": os.environ.get(ENV_API_KEY) or None,
            "base_url": os.environ.get(ENV_BASE_URL) or None,
            "force_local": os.environ.get(ENV_FORCE_LOCAL, "").lower() in ("1", "true", "yes"),
            "state_dir": Path(os.environ[ENV_STATE_DIR]) if os.environ.get(ENV_STATE_DIR) else None,
        }
        env.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**env)

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes` applied."""
        return replace(self, **changes)

    @property
    def uses_local_backend(self) -> bool:
        """True when requests go to the embedded local backend rather than a remote API."""
        return self.force_local or not self.api_key

    @property
    def backend_name(self) -> str:
        """A stable name for where models live: 'local', or the API host (e.g. 'api.openai.com')."""
        if self.uses_local_backend:
            return LOCAL_BACKEND
        return urlparse(self.base_url).hostname if self.base_url else "api.openai.com"

    @property
    def local_state_dir(self) -> Path:
        """Directory of the local backend's files, jobs and models (in the bot project by default)."""
        return self.state_dir or (Path(self.project_dir) / STATE_DIR_NAME / "local")

    @property
    def registry_path(self) -> Path:
        """The project's model registry file, meant to be committed."""
        return Path(self.project_dir) / REGISTRY_FILE_NAME
