"""action_gpt3_fallback (work in progress: for now it sends utter_default)."""
from typing import Any, Dict, List, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher


class ActionGPT3Fallback(Action):
    """Re-classifies the message NLU was unsure about, or answers it with the fine-tuned response model."""

    def name(self) -> Text:
        return "action_gpt3_fallback"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]
    ) -> List[Dict[Text, Any]]:
        dispatcher.utter_message(response="utter_default")
        return []
