"""Non-blocking NLU for Rasa 3.6: an NLU server of ours that parses many messages at once, reached by Rasa core.

(placeholder; the rationale is written once the measurement is in)
"""
