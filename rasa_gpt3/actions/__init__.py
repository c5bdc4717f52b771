"""rasa-sdk actions: `action_gpt3_fallback` (ActionGPT3Fallback)."""

from rasa_gpt3.actions.fallback import ActionGPT3Fallback

__all__ = ["ActionGPT3Fallback"]
