"""The RL loss completes the reward with the preference RM's Elo from its own trunk pass;
that must equal scoring the same sequences with the reward module, normalised."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_model_config
from sparrow_jax.losses.a2c import a2c_loss
from sparrow_jax.model import hydra
from sparrow_jax.rewards.pref_scoring import pref_elo
from sparrow_jax.train import stages


@pytest.mark.parametrize("likelihood", [False, True])
def test_rl_loss_adds_the_normalised_elo_at_the_reward_index(likelihood):
    model_cfg = tiny_model_config()
    model_cfg.pref_rm_likelihood = likelihood
    params = hydra.init_params(model_cfg, jax.random.PRNGKey(0),
                               ("policy", "value", "teacher", "pref_rm"))
    batch = stages.example_batch("rl", 4, 16, model_cfg.vocab_size, seed=3)
    mean, std, weight = 0.3, 2.0, 1.5
    loss_fn = stages.loss_fn_for_stage("rl", model_cfg, elo_weight=weight, elo_mean=mean, elo_std=std)
    loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(1))

    # Reference: score with the reward module, place the reward by hand, run the A2C loss.
    elo_B = np.asarray(pref_elo(params, model_cfg, batch["tokens_BxL"], batch["valid_BxL"],
                                batch["reward_index_B"], batch["turn_start_B"]))
    rewards_BxL = np.array(batch["rewards_BxL"])
    rewards_BxL[np.arange(4), batch["reward_index_B"]] += weight * (elo_B - mean) / std
    out = hydra.forward(params, model_cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                        roles=("policy", "value", "teacher"))
    shift = lambda x: jnp.asarray(x)[:, 1:]  # noqa: E731
    ref_loss, ref_metrics = a2c_loss(out["policy"][:, :-1], out["teacher"][:, :-1],
                                     out["value"][:, :-1], shift(batch["tokens_BxL"]),
                                     shift(rewards_BxL), shift(batch["policy_mask_BxL"]),
                                     shift(batch["sampled_mask_BxL"]))
    np.testing.assert_allclose(float(metrics["elo"]), elo_B.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["reward"]), rewards_BxL.sum(axis=1).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["value_loss"]), float(ref_metrics["value_loss"]),
                               rtol=1e-5)


def test_explained_variance_is_one_for_a_perfect_value_and_zero_for_a_constant():
    from sparrow_jax.losses.a2c import explained_variance_from_means
    returns = np.asarray([1.0, 2.0, 3.0, 4.0])

    def explained(values):
        residual = returns - values
        return float(explained_variance_from_means(returns.mean(), (returns ** 2).mean(),
                                                   residual.mean(), (residual ** 2).mean()))
    assert explained(returns) == 1.0
    assert abs(explained(np.full_like(returns, 2.5))) < 1e-6
    assert explained(returns[::-1]) == -3.0  # Var(r - v) = 4 Var(r): worse than a constant
