"""KV cache: cached prefill + decode and shared-prefix extension equal the full forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import sharpen, tiny_model_cfg
from sparrow_jax.model import hydra

TOL = dict(rtol=1e-5, atol=1e-5)


def _jitted(cfg, roles):
    forward = jax.jit(lambda p, t, pos, v: hydra.forward(p, cfg, t, pos, v, roles=roles))
    extend = jax.jit(lambda p, t, pos, v, c: hydra.extend(p, cfg, t, pos, v, c, roles=roles))
    return forward, extend


def _left_padded_batch(prompt_lens, n_decode, vocab, seed=0):
    """tokens/positions/valid [B, P + n_decode] for ragged prompts padded on the left."""
    width = max(prompt_lens)
    total = width + n_decode
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(seed), (len(prompt_lens), total),
                                           0, vocab))
    pads = np.array([width - n for n in prompt_lens])[:, None]
    slots = np.arange(total)[None, :]
    valid = slots >= pads
    positions = np.maximum(slots - pads, 0)
    tokens = np.where(valid, tokens, 0)
    return jnp.asarray(tokens), jnp.asarray(positions, jnp.int32), jnp.asarray(valid), width


# Looped layers keep a cache per layer and read it after writing the new block
# (layers.attend_written); scanned layers read the cache and the block apart.
@pytest.mark.parametrize("position,smeared_keys,scan_layers",
                         [("relative", False, True), ("rotary", False, True),
                          ("relative", True, True), ("relative", True, False),
                          ("rotary", False, False)])
def test_prefill_then_decode_matches_full_forward(position, smeared_keys, scan_layers):
    cfg = tiny_model_cfg(position=position, init_std=0.3, mlp="gated_gelu",
                         smeared_keys=smeared_keys, scan_layers=scan_layers)
    roles = ("policy", "value")
    params = sharpen(hydra.init_params(cfg, jax.random.PRNGKey(0), roles), jax.random.PRNGKey(1))
    tokens, positions, valid, width = _left_padded_batch([5, 3, 1], n_decode=4,
                                                         vocab=cfg.vocab_size)
    forward, extend = _jitted(cfg, roles)
    full = forward(params, tokens, positions, valid)

    cache = hydra.init_cache(cfg, batch=3, cache_len=12, tops=roles)
    prefilled, cache = extend(params, tokens[:, :width], positions[:, :width], valid[:, :width],
                              cache)

    @jax.jit
    def decode(params, cache, tokens_BxN, positions_BxN, valid_BxN):
        """One token at a time inside lax.scan: the fill index is a traced loop carry."""
        def step(cache, column):
            token_B, position_B, valid_B = column
            out, cache = hydra.extend(params, cfg, token_B[:, None], position_B[:, None],
                                      valid_B[:, None], cache, roles=roles)
            return cache, jax.tree.map(lambda a: a[:, 0], out)
        cache, outs = jax.lax.scan(step, cache, (tokens_BxN.T, positions_BxN.T, valid_BxN.T))
        return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), outs), cache

    decoded, cache = decode(params, cache, tokens[:, width:], positions[:, width:],
                            valid[:, width:])
    assert int(cache["index"]) == tokens.shape[1]
    for role in roles:
        cached = jnp.concatenate([prefilled[role], decoded[role]], axis=1)
        np.testing.assert_allclose(cached, full[role], **TOL)

    # The comparison is meaningful: moving the positions changes the logits.
    moved = forward(params, tokens, positions * 2, valid)
    assert np.abs(np.asarray(moved["policy"] - full["policy"])).max() > 1e-2


@pytest.mark.parametrize("smeared_keys,scan_layers", [(False, True), (True, True), (True, False)])
def test_shared_prefix_extend_matches_full_forward(smeared_keys, scan_layers):
    cfg = tiny_model_cfg(init_std=0.3, smeared_keys=smeared_keys, scan_layers=scan_layers)
    roles = ("rule_rm",)
    params = sharpen(hydra.init_params(cfg, jax.random.PRNGKey(0), roles), jax.random.PRNGKey(2))
    n, prefix_len, suffix_len = 3, 4, 6  # a suffix longer than the read-only cache below
    prefix = jax.random.randint(jax.random.PRNGKey(3), (1, prefix_len), 0, cfg.vocab_size)
    suffixes = jax.random.randint(jax.random.PRNGKey(4), (n, suffix_len), 0, cfg.vocab_size)
    # The last suffix is one token shorter: right padding inside the block.
    suffix_valid = jnp.ones((n, suffix_len), bool).at[-1, -1].set(False)
    forward, extend = _jitted(cfg, roles)

    cache = hydra.init_cache(cfg, batch=1, cache_len=prefix_len + suffix_len, tops=roles)
    prefix_pos = jnp.arange(prefix_len, dtype=jnp.int32)[None]
    prefix_out, cache = extend(params, prefix, prefix_pos, jnp.ones_like(prefix, bool), cache)
    cache = hydra.broadcast_cache(cache, n)
    suffix_pos = jnp.broadcast_to(jnp.arange(prefix_len, prefix_len + suffix_len), (n, suffix_len))
    suffix_out, cache = extend(params, suffixes, suffix_pos, suffix_valid, cache)

    tokens = jnp.concatenate([jnp.repeat(prefix, n, axis=0), suffixes], axis=1)
    valid = jnp.concatenate([jnp.ones((n, prefix_len), bool), suffix_valid], axis=1)
    full = forward(params, tokens, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape),
                   valid)["rule_rm"]
    np.testing.assert_allclose(prefix_out["rule_rm"][0], full[0, :prefix_len], **TOL)
    got, want = np.asarray(suffix_out["rule_rm"]), np.asarray(full[:, prefix_len:])
    keep = np.asarray(suffix_valid)
    np.testing.assert_allclose(got[keep], want[keep], **TOL)

    # keep_cache=False: the suffixes read a cache with no room for them, which stays unwritten.
    small = hydra.init_cache(cfg, batch=1, cache_len=prefix_len, tops=roles)
    _, small = extend(params, prefix, prefix_pos, jnp.ones_like(prefix, bool), small)
    small = hydra.broadcast_cache(small, n)
    read_only = jax.jit(lambda p, t, pos, v, c: hydra.extend(p, cfg, t, pos, v, c, roles=roles,
                                                             keep_cache=False))
    out, none = read_only(params, suffixes, suffix_pos, suffix_valid, small)
    assert none is None
    np.testing.assert_allclose(np.asarray(out["rule_rm"])[keep], want[keep], **TOL)


def test_cache_layout_and_errors():
    cfg = tiny_model_cfg()
    cache = hydra.init_cache(cfg, batch=2, cache_len=7, tops=("value", "pref_rm"))
    assert set(cache["layers"]) == {"trunk", "policy", "pref_rm"}
    slots = (cfg.n_heads, 2, 7, cfg.head_dim)  # [G, B, S, K]
    assert cache["layers"]["trunk"]["k"].shape == (cfg.n_frozen_layers,) + slots
    assert cache["layers"]["policy"]["v"].shape == (cfg.n_layers - cfg.n_frozen_layers,) + slots
    assert cache["positions"].dtype == jnp.int32 and cache["valid"].dtype == jnp.bool_
    assert cache["index"].shape == ()
    wide = hydra.broadcast_cache(hydra.init_cache(cfg, 1, 7), 4)
    assert wide["layers"]["policy"]["k"].shape[2] == 4 and wide["valid"].shape == (4, 7)
    axes = hydra.cache_logical_axes(cfg, tops=("value", "pref_rm"))
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) \
        == jax.tree.structure(cache)
    # Looped layers: one buffer per layer (a layer reads its own, never a slice of all).
    looped_cfg = tiny_model_cfg(scan_layers=False)
    looped = hydra.init_cache(looped_cfg, batch=2, cache_len=7, tops=("policy",))
    assert len(looped["layers"]["policy"]) == cfg.n_layers - cfg.n_frozen_layers
    assert looped["layers"]["policy"][0]["k"].shape == slots
    assert hydra.broadcast_cache(looped, 3)["layers"]["trunk"][1]["v"].shape[1] == 6
    looped_axes = hydra.cache_logical_axes(looped_cfg)
    assert jax.tree.structure(looped_axes, is_leaf=lambda x: isinstance(
        x, jax.sharding.PartitionSpec)) == jax.tree.structure(looped)
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ("policy", "rule_rm"))
    # A decode loop's weights: looped stacks split once into per-layer trees, scanned kept.
    split = hydra.per_layer_params(params, looped_cfg)
    assert len(split["policy"]["layers"]) == cfg.n_layers - cfg.n_frozen_layers
    assert split["trunk"]["layers"][0]["attn"]["query"].shape == \
        params["trunk"]["layers"]["attn"]["query"].shape[1:]
    assert hydra.per_layer_params(params, cfg) is params
    with pytest.raises(ValueError, match="split_layers"):
        hydra.extend(split, cfg, jnp.ones((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32),
                     None, hydra.init_cache(cfg, 2, 7))
    with pytest.raises(ValueError, match="scan_layers"):  # a cache made for the other layout
        hydra.extend(params, looped_cfg, jnp.ones((2, 1), jnp.int32),
                     jnp.zeros((2, 1), jnp.int32), None, hydra.init_cache(cfg, 2, 7))
    with pytest.raises(ValueError, match="rule_rm"):
        hydra.extend(params, cfg, jnp.ones((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32),
                     None, hydra.init_cache(cfg, 2, 7), roles=("rule_rm",))
