"""Reranking @N: the picked candidate is the one the formula ranks first (NumPy reference)."""
import jax
import numpy as np
import pytest

from sparrow_jax.sampling import rerank


def _numpy_scores(elo, p, mean_elo, formula):
    """The formulas written directly (no log space), in float64."""
    elo, p = np.asarray(elo, np.float64), np.asarray(p, np.float64)
    elo_part = 1.0 / (1.0 + np.exp(-(elo - mean_elo)))
    rules_part = np.prod(1.0 - p, axis=-1) ** (1.0 / p.shape[-1])
    return {"sparrow": elo_part * rules_part, "elo_only": elo_part,
            "rules_only": rules_part}[formula]


@pytest.mark.parametrize("formula", rerank.FORMULAS)
def test_picks_what_the_formula_ranks_first(formula):
    rng = np.random.default_rng(0)
    picks = jax.jit(lambda e, q: rerank.rerank(e, q, 0.4, formula))
    for trial in range(50):
        elo = rng.normal(0.0, 2.0, size=8).astype(np.float32)
        p = rng.beta(0.5, 3.0, size=(8, 23)).astype(np.float32)
        want = _numpy_scores(elo, p, 0.4, formula)
        best, log_scores = picks(elo, p)
        # The chosen candidate has the maximal reference score (up to float32 rounding).
        assert want[int(best)] >= want.max() * (1 - 1e-5), trial
        np.testing.assert_allclose(np.exp(np.asarray(log_scores)), want, rtol=1e-5, atol=1e-12)


def test_log_space_equals_direct_product():
    rng = np.random.default_rng(1)
    elo = rng.normal(size=(4, 8)).astype(np.float32)
    p = rng.uniform(0, 0.99, size=(4, 8, 23)).astype(np.float32)
    for formula in rerank.FORMULAS:
        got = np.asarray(rerank.rerank_scores(elo, p, -0.2, formula))
        np.testing.assert_allclose(got, _numpy_scores(elo, p, -0.2, formula), rtol=2e-5)
    # Where the direct product underflows float32, log space keeps the order.
    tiny = np.stack([np.full(40, 0.99999), np.full(40, 0.9999)]).astype(np.float32)
    assert np.prod(1 - tiny, axis=-1, dtype=np.float32).max() == 0.0
    best, log_scores = rerank.rerank(np.zeros(2, np.float32), tiny, 0.0, "rules_only")
    assert int(best) == 1 and np.isfinite(np.asarray(log_scores)).all()


def test_ties_batches_and_edge_cases():
    rng = np.random.default_rng(2)
    elo = rng.normal(size=(3, 8)).astype(np.float32)
    p = rng.uniform(size=(3, 8, 5)).astype(np.float32)
    # Row 0: candidates 2 and 5 are identical and best; the first one wins, as np.argmax.
    elo[0, [2, 5]] = 9.0
    p[0, [2, 5]] = 0.01
    # Row 1: all candidates identical.
    elo[1], p[1] = 0.5, 0.3
    mean_B1 = np.array([[0.0], [1.0], [-1.0]], np.float32)  # per-row mean Elo broadcasts
    best = np.asarray(rerank.pick_best(rerank.rerank_scores(elo, p, mean_B1)))
    np.testing.assert_array_equal(best, np.argmax(_numpy_scores(elo, p, mean_B1, "sparrow"), -1))
    assert best.shape == (3,) and best[0] == 2 and best[1] == 0
    # A surely broken rule zeroes the score; p outside [0, 1] is clipped.
    scores = rerank.rerank_scores(np.zeros(2), np.array([[1.0, 0.0], [1.2, -0.1]]), 0.0)
    np.testing.assert_allclose(scores, [0.0, 0.0])
    assert int(rerank.pick_best(np.array([-np.inf, -np.inf]))) == 0
    with pytest.raises(ValueError, match="formula"):
        rerank.rerank_scores(elo, p, 0.0, "max_elo")
