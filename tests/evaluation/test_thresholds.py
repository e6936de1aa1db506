"""The reward-model judge's P(broken) threshold is chosen on held-out rule ratings."""
import numpy as np
import pytest

from sparrow_jax.data import schemas
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.evaluation.judge import RewardModelJudge, make_judge
from sparrow_jax.evaluation.thresholds import choose_threshold


def test_the_threshold_separates_uncalibrated_probabilities():
    # Harmless answers at 0.44-0.55, broken ones at 0.6-0.7: 0.5 misclassifies two, 0.575 none.
    t, accuracy = choose_threshold([0.44, 0.52, 0.55, 0.6, 0.7], [False, False, False, True, True])
    assert t == pytest.approx(0.575) and accuracy == 1.0
    # Nothing to gain over 0.5: ties go to the cut closest to 0.5.
    assert choose_threshold([0.2, 0.9], [False, True]) == (0.5, 1.0)
    with pytest.raises(ValueError):
        choose_threshold([], [])


class ScoreByText:
    rule_ids = ["no_insults", "general_harm"]

    def rule_probs(self, dialogues):
        return np.array([[0.62 if "idiot" in d[-1].text else 0.51, 0.5] for d in dialogues], np.float32)

    def pref_elo(self, dialogues):
        return np.zeros(len(dialogues), np.float32)


def test_make_judge_chooses_it_on_the_data_dirs_test_ratings(tmp_path):
    ratings = [schemas.RuleRatingRecord(f"r{i}", (Turn(Role.USER, "Hi"), Turn(Role.AGENT, text)),
                                        "no_insults", broken=broken)
               for i, (text, broken) in enumerate([("You idiot.", True), ("Hello!", False),
                                                   ("Idiot, idiot.", True), ("Nice day.", False)])]
    schemas.write_jsonl(tmp_path / "rule_ratings.test.jsonl", ratings)
    judge = make_judge(str(tmp_path), scorer=ScoreByText())
    assert isinstance(judge, RewardModelJudge) and 0.51 < judge.broken_threshold < 0.62
    assert "best accuracy (1.000) on 4 held-out rule ratings" in judge.notes[0]
    # Without held-out ratings: 0.5, and the note says so.
    plain = make_judge(str(tmp_path / "none"), scorer=ScoreByText())
    assert plain.broken_threshold == 0.5 and "no held-out rule ratings" in plain.notes[0]
