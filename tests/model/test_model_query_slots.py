"""A top's last layer computing only the read slots equals reading the full output there."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import sharpen, tiny_model_cfg
from sparrow_jax.model import hydra

TOL = dict(rtol=1e-5, atol=1e-5)
ROLES = ("policy", "value", "rule_rm")


@pytest.mark.parametrize("position,smeared_keys,scan_layers",
                         [("relative", True, True), ("relative", True, False),
                          ("rotary", False, True), ("rotary", False, False)])
def test_read_slots_equal_the_full_output(position, smeared_keys, scan_layers):
    cfg = tiny_model_cfg(position=position, init_std=0.3, mlp="gated_gelu",
                         smeared_keys=smeared_keys, scan_layers=scan_layers)
    params = sharpen(hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES), jax.random.PRNGKey(1))
    batch, length = 3, 10
    tokens = jax.random.randint(jax.random.PRNGKey(2), (batch, length), 0, cfg.vocab_size)
    valid = jnp.ones((batch, length), bool).at[2, 7:].set(False)
    read_BxK = jnp.asarray([[0, 4, 9], [3, 3, 8], [1, 6, 2]], jnp.int32)

    full = jax.jit(lambda p: hydra.forward(p, cfg, tokens, valid_BxL=valid, roles=ROLES))(params)
    read = jax.jit(lambda p: hydra.forward(p, cfg, tokens, valid_BxL=valid, roles=ROLES,
                                           read_BxK=read_BxK))(params)
    for role in ROLES:
        np.testing.assert_allclose(read[role], hydra.read_slots(full[role], read_BxK), **TOL)

    # On a cache: a prefill and then a block extending it; the cache is the same either way.
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    split = 6

    def run(read_prefill, read_block):
        cache = hydra.init_cache(cfg, batch, length, tops=ROLES)
        first, cache = hydra.extend(params, cfg, tokens[:, :split], positions[:, :split],
                                    valid[:, :split], cache, roles=ROLES, empty_cache=True,
                                    read_BxK=read_prefill)
        second, cache = hydra.extend(params, cfg, tokens[:, split:], positions[:, split:],
                                     valid[:, split:], cache, roles=ROLES, read_BxK=read_block)
        return first, second, cache
    prefill_B, block_B = read_BxK[:, :2] % split, (read_BxK[:, 1:] % (length - split))
    whole = jax.jit(lambda: run(None, None))()
    some = jax.jit(lambda: run(prefill_B, block_B))()
    for role in ROLES:
        np.testing.assert_allclose(some[0][role], hydra.read_slots(whole[0][role], prefill_B), **TOL)
        np.testing.assert_allclose(some[1][role], hydra.read_slots(whole[1][role], block_B), **TOL)
        np.testing.assert_allclose(whole[1][role][:, -length + split:],
                                   full[role][:, split:], **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), some[2], whole[2])
    last, _ = jax.jit(lambda c: hydra.extend(params, cfg, tokens, positions, valid, c,
                                             roles=ROLES, empty_cache=True, last_only=True))(
        hydra.init_cache(cfg, batch, length, tops=ROLES))
    np.testing.assert_allclose(last["policy"], full["policy"][:, -1:], **TOL)
