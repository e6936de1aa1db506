"""Trunk features of the open-weight families (issue 18) against a NumPy reference:
grouped / multi-query attention, SwiGLU, Gemma's (1 + w) RMSNorm and sqrt(d_model)
embedding scale, RoPE scaling (linear, Llama 3.1), tied and untied LM heads; cached decode
with grouped-query attention equals the full forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference
from tiny_models import tiny_model_config as tiny_model_cfg  # 2 layers, 1 frozen
from sparrow_jax.config import ConfigError, default_config, validate
from sparrow_jax.model import hydra, positions

ROLES = ("policy",)

LLAMA_LIKE = dict(position="rotary", n_heads=4, head_dim=8, n_kv_heads=2, mlp="swiglu",
                  rotary_base=500000.0, rotary_scaling="llama3", rotary_scaling_factor=8.0,
                  rotary_original_max_len=16, norm_eps=1e-5)
GEMMA_LIKE = dict(position="rotary", n_heads=4, head_dim=8, n_kv_heads=1, mlp="gated_gelu",
                  norm_unit_offset=True, embed_scale=True, tied_embeddings=True)
FEATURES = {
    "llama": LLAMA_LIKE,
    "gemma": GEMMA_LIKE,
    "mha_linear_rope": dict(position="rotary", mlp="swiglu", rotary_scaling="linear",
                            rotary_scaling_factor=4.0),
}


def _random_params(cfg, roles, seed):
    """Every leaf random, norm scales too (so a missing (1 + w) or a wrong head shows);
    shapes from eval_shape and values from NumPy: no init program to compile."""
    shapes = jax.eval_shape(lambda: hydra.init_params(cfg, jax.random.PRNGKey(0), roles))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype),
                        shapes)


def _padded_batch(vocab, length=10, seed=0):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (3, length), 0, vocab)
    lengths = np.array([length, 7, 4])
    valid = np.arange(length)[None] < lengths[:, None]           # right padding
    positions_ = np.arange(length)[None].repeat(3, 0) + np.array([[0], [3], [0]])
    return tokens, jnp.asarray(positions_, jnp.int32), jnp.asarray(valid)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_forward_matches_numpy_reference(name):
    cfg = tiny_model_cfg(**FEATURES[name])
    params = _random_params(cfg, ROLES, 1)
    tokens, positions_, valid = _padded_batch(cfg.vocab_size)
    ours = np.asarray(jax.jit(lambda p: hydra.forward(p, cfg, tokens, positions_, valid,
                                                      roles=ROLES))(params)["policy"])
    ref = numpy_reference.forward(params, cfg, np.asarray(tokens), np.asarray(positions_),
                                  np.asarray(valid))
    mask = np.asarray(valid)
    np.testing.assert_allclose(ours[mask], ref[mask], rtol=1e-4, atol=1e-4)
    assert np.abs(ref[mask]).max() > 1.0  # not a vacuous comparison


@pytest.mark.parametrize("change", [dict(n_kv_heads=4), dict(norm_unit_offset=False),
                                    dict(embed_scale=False), dict(rotary_scaling="none"),
                                    dict(mlp="gated_gelu")])
def test_each_feature_changes_the_output(change):
    """Switching one feature off makes the reference disagree (so each one is exercised)."""
    base = {**GEMMA_LIKE, "rotary_scaling": "llama3", "rotary_scaling_factor": 8.0,
            "rotary_original_max_len": 16, "mlp": "swiglu"}
    if "mlp" in change:
        base["mlp"] = "swiglu"
    cfg = tiny_model_cfg(**base)
    params = _random_params(cfg, ROLES, 1)
    tokens, positions_, valid = _padded_batch(cfg.vocab_size)
    ours = np.asarray(hydra.forward(params, cfg, tokens, positions_, valid, roles=ROLES)["policy"])
    other = tiny_model_cfg(**{**base, **change})
    if "n_kv_heads" in change:  # same weights, each K/V head copied to its query heads
        params = jax.tree_util.tree_map_with_path(
            lambda path, a: jnp.repeat(a, 4, axis=2)
            if jax.tree_util.keystr(path).endswith(("['key']", "['value']")) else a, params)
        np.testing.assert_allclose(
            hydra.forward(params, other, tokens, positions_, valid, roles=ROLES)["policy"],
            ours, rtol=1e-4, atol=1e-4)
        return
    ref = numpy_reference.forward(params, other, np.asarray(tokens), np.asarray(positions_),
                                  np.asarray(valid))
    assert np.abs(ours - ref)[np.asarray(valid)].max() > 1e-2


def test_llama3_rotary_frequencies():
    scaling = ("llama3", 8.0, 1.0, 4.0, 8192)
    ours = positions.rotary_inv_freq(128, 500000.0, scaling)
    np.testing.assert_allclose(ours, numpy_reference.inv_freq(128, 500000.0, scaling), rtol=1e-6)
    plain = numpy_reference.inv_freq(128, 500000.0)
    # High frequencies kept, low ones divided by the factor, a blended band between.
    assert ours[0] == pytest.approx(plain[0]) and ours[-1] == pytest.approx(plain[-1] / 8)
    assert ((np.asarray(ours) < plain * 0.99) & (np.asarray(ours) > plain / 8 * 1.01)).any()


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_cached_decode_matches_full_forward(name):
    cfg = tiny_model_cfg(**FEATURES[name])
    roles = ("policy", "value")
    params = _random_params(cfg, roles, 2)
    batch, prompt, total = 2, 5, 9
    tokens = jax.random.randint(jax.random.PRNGKey(3), (batch, total), 0, cfg.vocab_size)
    valid = jnp.asarray(np.arange(total)[None] >= np.array([[0], [2]]))   # left padding
    positions_ = jnp.maximum(jnp.arange(total)[None] - jnp.array([[0], [2]]), 0)
    full = jax.jit(lambda p: hydra.forward(p, cfg, tokens, positions_, valid, roles=roles))(params)
    cache = hydra.init_cache(cfg, batch=batch, cache_len=total, tops=roles)
    assert cache["layers"]["policy"]["k"].shape[1] == FEATURES[name]["n_kv_heads"]
    extend = jax.jit(lambda p, t, pos, v, c: hydra.extend(p, cfg, t, pos, v, c, roles=roles))
    outs, cache = extend(params, tokens[:, :prompt], positions_[:, :prompt], valid[:, :prompt],
                         cache)
    pieces = [outs]
    for t in range(prompt, total):
        out, cache = extend(params, tokens[:, t:t + 1], positions_[:, t:t + 1],
                            valid[:, t:t + 1], cache)
        pieces.append(out)
    for role in roles:
        cached = jnp.concatenate([p_[role] for p_ in pieces], axis=1)
        np.testing.assert_allclose(cached[valid], full[role][valid], rtol=1e-5, atol=1e-5)


def test_cache_and_params_shard_kv_heads_by_their_own_axis():
    cfg = tiny_model_cfg(n_kv_heads=1, position="rotary")
    axes = hydra.param_logical_axes(cfg, roles=ROLES)
    assert tuple(axes["policy"]["layers"]["attn"]["key"]) == ("layers", "embed", "kv_heads", "kv")
    assert tuple(axes["policy"]["layers"]["attn"]["query"]) == ("layers", "embed", "heads", "kv")
    assert hydra.cache_logical_axes(cfg)["layers"]["policy"]["k"][1] == "kv_heads"
    plain = tiny_model_cfg(position="rotary")
    assert hydra.cache_logical_axes(plain)["layers"]["policy"]["k"][1] == "heads"


@pytest.mark.parametrize("key,value", [("n_kv_heads", 3), ("n_kv_heads", -1),
                                       ("rotary_scaling", "yarn"), ("mlp", "relu")])
def test_config_rejects(key, value):
    cfg = default_config()
    cfg.model[key] = value
    with pytest.raises(ConfigError, match=f"model.{key}"):
        validate(cfg)
