"""The RL update reads the frozen trunk's output from the rule scorer's dialogue prefill
(`rule_violation_probs(return_trunk=True)`, `build_stage(trunk_input=True)`) instead of
running the trunk again: loss, metrics, gradients and the updated params must equal the
update that runs its own trunk."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_rl_read_slots import MAX_NEW, rollout_like_batch
from tiny_models import tiny_model_config
from sparrow_jax import sharding as shd
from sparrow_jax.config import ROLES, default_config
from sparrow_jax.model import hydra
from sparrow_jax.rewards.rule_scoring import rule_violation_probs
from sparrow_jax.train import stages

pytestmark = pytest.mark.long_running(60)

READ_LEN = 2 * (MAX_NEW + 2) + 1
# Two made-up rule suffixes: only the scorer's dialogue prefill (its trunk) matters here.
RULE_TOKENS = np.asarray([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
RULE_VALID = RULE_TOKENS > 0


def _scorer(params, model_cfg, batch, return_trunk=True):
    """The rule scorer over the batch's dialogues: (p_broken, trunk_BxLxD) or p_broken."""
    return jax.jit(lambda p, t, v: rule_violation_probs(
        p, model_cfg, t, v, RULE_TOKENS, RULE_VALID, return_trunk=return_trunk))(
        params, batch["tokens_BxL"], batch["valid_BxL"])


@pytest.mark.parametrize("smeared_keys,scan_layers", [(False, True), (True, False)])
def test_loss_and_gradients_with_the_scorers_trunk_equal_running_the_trunk(smeared_keys,
                                                                            scan_layers):
    model_cfg = tiny_model_config()
    model_cfg.pref_rm_likelihood = True
    model_cfg.smeared_keys, model_cfg.scan_layers = smeared_keys, scan_layers
    params = hydra.init_params(model_cfg, jax.random.PRNGKey(0), ROLES)
    batch = rollout_like_batch(model_cfg.vocab_size, seed=7)
    p_broken, trunk = _scorer(params, model_cfg, batch)
    assert trunk.shape == batch["tokens_BxL"].shape + (model_cfg.d_model,)
    # The scorer itself is unchanged by handing out its trunk.
    np.testing.assert_array_equal(p_broken, _scorer(params, model_cfg, batch, return_trunk=False))
    loss_fn = stages.loss_fn_for_stage("rl", model_cfg, read_len=READ_LEN, elo_mean=0.1,
                                       elo_std=1.3)

    def run(b):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, b, jax.random.PRNGKey(1))
        return loss, metrics, grads

    loss, metrics, grads = run({**batch, "trunk_BxLxD": trunk})
    ref_loss, ref_metrics, ref_grads = run(batch)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-6)
    for name in ref_metrics:
        np.testing.assert_allclose(float(metrics[name]), float(ref_metrics[name]), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    # What RL trains (the trunk is frozen: the reference's trunk gradient is never used).
    trained = lambda g: {k: g[k] for k in ("policy", "value")}  # noqa: E731
    flat, ref_flat = jax.tree.leaves(trained(grads)), jax.tree.leaves(trained(ref_grads))
    assert len(flat) == len(ref_flat) and any(np.abs(np.asarray(g)).max() > 0 for g in flat)
    for g, ref in zip(flat, ref_flat):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-4, atol=1e-7)
    # Not vacuous: the update does read the trunk it is given.
    other, _, _ = run({**batch, "trunk_BxLxD": trunk + 1.0})
    assert abs(float(other) - float(ref_loss)) > 1e-4


def test_step_reading_the_trunk_from_its_batch_updates_as_the_step_running_it():
    cfg = default_config()
    cfg.model = tiny_model_config()
    cfg.train.stage = "rl"
    batch = rollout_like_batch(cfg.model.vocab_size, seed=3)
    rows, length = batch["tokens_BxL"].shape
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    kw = dict(batch_size=rows, seq_len=length, log_unsharded=False, read_len=READ_LEN)
    own = stages.build_stage(cfg, mesh, "rl", **kw)
    given = stages.build_stage(cfg, mesh, "rl", trunk_input=True, **kw)
    assert "trunk_BxLxD" not in own.batch_shapes
    assert given.batch_shapes["trunk_BxLxD"].shape == (rows, length, cfg.model.d_model)
    state = own.init_fn(jax.random.PRNGKey(0))
    _, trunk = _scorer(state.frozen, cfg.model, batch)  # the frozen trunk and rule RM
    new_own, m_own = own.step(state, jax.tree.map(jnp.asarray, batch))
    state = own.init_fn(jax.random.PRNGKey(0))  # the first step donated its input state
    new_given, m_given = given.step(state, {**jax.tree.map(jnp.asarray, batch),
                                            "trunk_BxLxD": trunk})
    np.testing.assert_allclose(float(m_given["loss"]), float(m_own["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new_given.params), jax.tree.leaves(new_own.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_a_trunk_of_the_wrong_shape_is_an_error():
    model_cfg = tiny_model_config()
    params = hydra.init_params(model_cfg, jax.random.PRNGKey(0), ("policy",))
    tokens = jnp.zeros((2, 8), jnp.int32)
    with pytest.raises(ValueError, match="trunk_BxLxD has shape"):
        hydra.forward(params, model_cfg, tokens, roles=("policy",),
                      trunk_BxLxD=jnp.zeros((2, 7, model_cfg.d_model)))
    with pytest.raises(ValueError, match="only the rl stage"):
        stages.batch_shapes("sft", 2, 8, trunk=(model_cfg.d_model, jnp.float32))
