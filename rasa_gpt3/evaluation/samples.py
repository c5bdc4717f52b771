"""What both sides train and test on: a stratified test split, nested k-shot samples, the out-of-scope intent."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.data.export import full_intent, stratified_split, text_examples
from rasa_gpt3.errors import DataError

OUT_OF_SCOPE_NAMES = ("out_of_scope", "outofscope", "out-of-scope", "oos")


def nlu_subset(examples: Sequence[Any], like: Any) -> Any:
    """A TrainingData of `examples` with `like`'s synonyms, regexes, lookup tables and the responses they use."""
    from rasa.shared.nlu.training_data.training_data import TrainingData

    responses = {}
    for message in examples:
        key = message.get("intent_response_key")
        if key:
            name = f"utter_{key}"
            if name in (like.responses or {}):
                responses[name] = like.responses[name]
    return TrainingData(
        list(examples),
        entity_synonyms=dict(like.entity_synonyms or {}),
        regex_features=list(like.regex_features or []),
        lookup_tables=list(like.lookup_tables or []),
        responses=responses,
    )


def split_train_test(nlu: Any, test_fraction: float, seed: int) -> Tuple[Any, Any]:
    """Stratified, seeded train/test split per full intent (export's `stratified_split`); returns two TrainingData."""
    examples = sorted(text_examples(nlu), key=lambda m: (full_intent(m), m.get("text")))
    train_idx, test_idx = stratified_split([full_intent(m) for m in examples], test_fraction, seed)
    train = [examples[i] for i in sorted(train_idx)]
    test = [examples[i] for i in sorted(test_idx)]
    return nlu_subset(train, nlu), nlu_subset(test, nlu)


def sample_shots(train: Any, shots: Optional[int], seed: int) -> Any:
    """At most `shots` examples per full intent (all when None), by a seeded permutation per intent.

    The same seed gives nested samples: the first k of one permutation are inside its first 2k.
    """
    groups: Dict[str, List[Any]] = {}
    for message in text_examples(train):
        groups.setdefault(full_intent(message), []).append(message)
    chosen: List[Any] = []
    for intent in sorted(groups):
        members = sorted(groups[intent], key=lambda m: m.get("text"))
        random.Random(f"{seed}/{intent}").shuffle(members)
        chosen.extend(members if shots is None else members[:shots])
    return nlu_subset(chosen, train)


def find_out_of_scope_intent(intents: Sequence[str], explicit: Optional[str] = None) -> Optional[str]:
    """The out-of-scope intent of the data: `explicit` (must exist), else one named like out_of_scope / oos."""
    if explicit:
        if explicit not in intents:
            raise DataError(f"--out-of-scope-intent '{explicit}' is not an intent of the data")
        return explicit
    for intent in sorted(intents):
        if intent.lower() in OUT_OF_SCOPE_NAMES:
            return intent
    return None
