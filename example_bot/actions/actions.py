"""Acme Bank's custom actions, run by `rasa run actions` (port 5055, see endpoints.yml).

Importing ActionGPT3Fallback is all it takes to serve `action_gpt3_fallback`: rasa-sdk registers every Action
subclass it finds in this module.
"""
from typing import Any, Dict, List, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher

from rasa_gpt3.actions import ActionGPT3Fallback  # noqa: F401  (serves action_gpt3_fallback)

# Demo figures, not market data.
EUR_RATES = {"USD": 1.08, "GBP": 0.86, "JPY": 162.5, "CHF": 0.95}


class ActionExchangeRate(Action):
    """Tells the rate of the currency in the `currency` slot, or lists the known rates."""

    def name(self) -> Text:
        return "action_exchange_rate"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]
    ) -> List[Dict[Text, Any]]:
        currency = (tracker.get_slot("currency") or "").upper()
        if currency in EUR_RATES:
            dispatcher.utter_message(text=f"Today 1 EUR buys {EUR_RATES[currency]} {currency}.")
        else:
            rates = ", ".join(f"{rate} {code}" for code, rate in EUR_RATES.items())
            dispatcher.utter_message(text=f"Today 1 EUR buys {rates}.")
        return []
