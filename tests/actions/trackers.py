"""The tracker the fallback action is run with in tests: one user message that Rasa's NLU parsed as nlu_fallback."""

from __future__ import annotations

from typing import Any, Dict, Optional

from rasa_sdk import Tracker


def fallback_tracker(
    text: str, *, sender: str = "test", slots: Optional[Dict[str, Any]] = None, **parse_extra: Any
) -> Tracker:
    """A conversation whose latest message `text` fell back (confidence 0.4); `parse_extra` adds parse data."""
    latest = {
        "text": text,
        "intent": {"name": "nlu_fallback", "confidence": 0.4},
        "intent_ranking": [{"name": "nlu_fallback", "confidence": 0.4}],
        "entities": [],
        **parse_extra,
    }
    events = [{"event": "action", "name": "action_listen"}, {"event": "user", "text": text, "parse_data": latest}]
    return Tracker(sender, slots or {}, latest, events, False, None, {}, "action_listen")
