"""The FallbackClassifier threshold recommendation: its two rules on confidences whose answer is known."""

from __future__ import annotations

import pytest

from rasa_gpt3.evaluation.threshold import apply_threshold, recommend_threshold


def test_with_out_of_scope_messages_the_threshold_separates_them_from_confident_in_scope_answers():
    in_scope = [(0.9, True), (0.85, True), (0.8, True), (0.7, True), (0.45, False), (0.6, True)]
    out_of_scope = [0.2, 0.3, 0.35, 0.5]
    recommendation = recommend_threshold(in_scope, out_of_scope)
    # 0.51..0.60 keep every correct in-scope answer and send every out-of-scope message to the fallback
    assert 0.5 < recommendation.threshold <= 0.6
    assert recommendation.in_scope_accuracy == pytest.approx(5 / 6)
    assert recommendation.out_of_scope_recall == 1.0
    assert recommendation.in_scope_fallback_rate == pytest.approx(1 / 6)
    assert "out-of-scope recall 1.000" in recommendation.describe()


def test_without_out_of_scope_messages_it_keeps_the_requested_share_of_correct_answers():
    in_scope = [(confidence / 100, True) for confidence in range(1, 101)] + [(0.99, False)]
    recommendation = recommend_threshold(in_scope, keep=0.95)
    assert recommendation.threshold == 0.06
    accuracy, fallback_rate, recall = apply_threshold(recommendation.threshold, in_scope)
    assert accuracy == pytest.approx(95 / 101) and recall is None
    assert recommendation.out_of_scope_recall is None and "95%" in recommendation.rule
    # a threshold is what a config.yml holds: two decimals, rounded down so the promise still holds
    assert recommend_threshold([(0.777, True)]).threshold == 0.77


def test_no_predictions_or_a_bad_keep_is_a_clear_error():
    with pytest.raises(ValueError, match="no in-scope predictions"):
        recommend_threshold([])
    with pytest.raises(ValueError, match="keep must be"):
        recommend_threshold([(0.5, True)], keep=0)
