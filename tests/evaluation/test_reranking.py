"""Reranking @N: the pick is the candidate the formula ranks first; N/2 candidates search, N/2 do not."""
import os

import jax
import numpy as np
import pytest

from eval_helpers import FixedEngine
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.evaluation.agent import load_agent
from sparrow_jax.evaluation.reranking import RerankConfig, best_of_n, rank_candidates
from sparrow_jax.evaluation.evaluator import make_environment


def _formula(elo_N, p_NxR, mean_elo, formula):
    """docs/recipe.md section 7, directly in numpy (not in log space)."""
    sig = 1 / (1 + np.exp(-(elo_N - mean_elo)))
    rules = np.prod(1 - p_NxR, axis=-1) ** (1 / p_NxR.shape[-1])
    return {"sparrow": sig * rules, "elo_only": sig, "rules_only": rules}[formula]


@pytest.mark.parametrize("formula", ["sparrow", "elo_only", "rules_only"])
def test_pick_is_the_formulas_first(formula):
    rng = np.random.default_rng(0)
    elo = rng.normal(size=(16, 8)).astype(np.float32)
    p = rng.uniform(0, 0.9, size=(16, 8, 5)).astype(np.float32)
    best, log_scores = rank_candidates(elo, p, RerankConfig(8, formula))
    expected = np.stack([_formula(elo[b], p[b], elo[b].mean(), formula) for b in range(16)])
    np.testing.assert_array_equal(best, expected.argmax(-1))
    np.testing.assert_allclose(np.exp(log_scores), expected, rtol=1e-5)


def test_mean_elo_default_is_per_context_and_can_be_fixed():
    elo = np.array([[0.0, 1.0], [10.0, 11.0]], np.float32)
    p = np.zeros((2, 2, 1), np.float32)
    _, per_context = rank_candidates(elo, p, RerankConfig(2))
    np.testing.assert_allclose(per_context[0], per_context[1], rtol=1e-6)  # only differences count
    _, fixed = rank_candidates(elo, p, RerankConfig(2, mean_elo=0.0))
    assert fixed[1, 0] > fixed[0, 0]


def test_a_surely_broken_rule_loses_and_malformed_candidates_go_last():
    elo = np.array([[5.0, 0.0, -1.0]], np.float32)
    p = np.array([[[1.0, 0.0], [0.0, 0.0], [0.1, 0.1]]], np.float32)
    best, log_scores = rank_candidates(elo, p, RerankConfig(2, "sparrow"))
    assert best[0] == 1 and np.isneginf(log_scores[0, 0])
    malformed = np.array([[False, True, False]])
    best, _ = rank_candidates(elo, p, RerankConfig(2), malformed)
    assert best[0] == 2
    best, _ = rank_candidates(elo, p, RerankConfig(2, skip_malformed=False), malformed)
    assert best[0] == 1
    best, _ = rank_candidates(elo, p, RerankConfig(2), np.ones((1, 3), bool))  # all malformed: formula
    assert best[0] == 1


def test_config_validation():
    for bad in (dict(n=3), dict(n=0), dict(n=4, formula="nope")):
        with pytest.raises(ValueError):
            RerankConfig(**bad)


class ScriptedScorer:
    """Scores by the dialogue's final text (a deterministic hash), so the expected pick is computable."""
    rule_ids = ["a", "b"]

    @staticmethod
    def _value(dialogue, salt):
        return (sum(map(ord, dialogue[-1].text + salt)) % 97) / 97.0

    def pref_elo(self, dialogues):
        return np.array([4 * self._value(d, "elo") - 2 for d in dialogues], np.float32)

    def rule_probs(self, dialogues):
        return np.array([[0.9 * self._value(d, r) for r in self.rule_ids] for d in dialogues], np.float32)


def test_best_of_n_on_rollouts(root):
    agent = load_agent(os.path.join(root, "sft"))
    env = make_environment(agent, engine=FixedEngine())
    contexts = [(Turn(Role.USER, "Where is Zorbel?"),), (Turn(Role.USER, "Hello!"),)]
    scorer = ScriptedScorer()
    config = RerankConfig(4, skip_malformed=False)
    ranked = best_of_n(env, agent.params, scorer, contexts, jax.random.PRNGKey(3), config)
    assert len(ranked) == 2
    for context, r in zip(contexts, ranked):
        assert [c.evidence for c in r.candidates] == ["always", "always", "never", "never"]
        assert [c.rollout.searched for c in r.candidates] == [True, True, False, False]
        assert all(c.rollout.context == context for c in r.candidates)
        assert r.candidates[0].rollout.new_turns[1].text.startswith("Zorbel\nSource: https://")
        dialogues = [c.rollout.dialogue for c in r.candidates]
        expected = _formula(scorer.pref_elo(dialogues), scorer.rule_probs(dialogues),
                            scorer.pref_elo(dialogues).mean(), "sparrow")
        assert r.best_index == int(np.argmax(expected))
        assert r.best is r.candidates[r.best_index]
    again = best_of_n(env, agent.params, scorer, contexts, jax.random.PRNGKey(3), config)
    dialogues = lambda r: [c.rollout.dialogue for c in r.candidates]  # noqa: E731
    assert dialogues(again[0]) == dialogues(ranked[0])  # seeded
