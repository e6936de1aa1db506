"""Attention against an independent NumPy reference; packing; shift invariance."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import sharpen, tiny_model_cfg
from sparrow_jax.config import ROLES
from sparrow_jax.model import hydra
from sparrow_jax.model.layers import Attention
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.model.stack import attention_context

pytestmark = pytest.mark.long_running(80)


def _numpy_smeared_keys(k, smear, pos, valid):
    """k'_j = w k_j + (1 - w) k_p, w = sigmoid(smear), p the nearest valid j' < j, used only
    when pos_p = pos_j - 1 (else k'_j = k_j)."""
    out = k.copy()
    weight = 1.0 / (1.0 + np.exp(-smear))
    for j in range(len(k)):
        earlier = [i for i in range(j) if valid[i]]
        if valid[j] and earlier and pos[earlier[-1]] == pos[j] - 1:
            out[j] = weight * k[j] + (1 - weight) * k[earlier[-1]]
    return out


def _numpy_relative_attention(x, p, pos, valid, max_len):
    """Transformer-XL attention written straight from the equations, one score at a time.

    score_ij = [(q_i + u) . k_j + (q_i + v) . (W_r^T R_{pos_i - pos_j})] / sqrt(K) over keys j
    with j <= i, pos_j <= pos_i and valid_j; R_d = [sin(d w), cos(d w)], w_f = 10000^(-2f/D).
    With smeared keys (`p['smear']` present) k_j is first mixed with the previous token's key.
    """
    batch, length, width = x.shape
    heads, head_dim = p["u_bias"].shape
    freqs = 10000.0 ** (-2.0 * np.arange(width // 2) / width)

    def encoding(d):
        return np.concatenate([np.sin(d * freqs), np.cos(d * freqs)])

    y = np.zeros((batch, length, width))
    for b in range(batch):
        for h in range(heads):
            q = x[b] @ p["query"][:, h]
            k = x[b] @ p["key"][:, h]
            if "smear" in p:
                k = _numpy_smeared_keys(k, p["smear"][h], pos[b], valid[b])
            v = x[b] @ p["value"][:, h]
            for i in range(length):
                scores = np.full(length, -np.inf)
                for j in range(length):
                    if j <= i and pos[b, j] <= pos[b, i] and valid[b, j]:
                        d = min(pos[b, i] - pos[b, j], max_len - 1)
                        r = encoding(d) @ p["rel_proj"][:, h]
                        scores[j] = ((q[i] + p["u_bias"][h]) @ k[j]
                                     + (q[i] + p["v_bias"][h]) @ r) / np.sqrt(head_dim)
                if np.isinf(scores).all():
                    continue  # nothing to attend to: zero output
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                y[b, i] += (weights @ v) @ p["out"][h]
    return y


@pytest.mark.parametrize("smeared_keys", [False, True])
@pytest.mark.parametrize("causal_block", [None, 4, 2], ids=["one_block", "blocks_of_4", "blocks_of_2"])
def test_relative_attention_matches_numpy_reference(smeared_keys, causal_block):
    """causal_block: None = the cached path's single block over every key; else the
    block-causal path of a forward without a cache (causal_slots), blocks of that size
    (4: a ragged last block)."""
    cfg = tiny_model_cfg(init_std=0.3, max_len=8, smeared_keys=smeared_keys,
                         causal_block=causal_block or 0)
    spec = ModelSpec.of(cfg)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, spec.d_model))
    # Offset and gapped positions, distances past max_len, padding (left, and a gap
    # inside a row), and an all-masked row.
    pos = jnp.array([[3, 4, 5, 9, 12, 13], [0, 0, 0, 1, 2, 3], [0, 1, 1, 2, 3, 0]], jnp.int32)
    valid = jnp.array([[True] * 6, [False, False, True, True, True, True],
                       [True, True, False, True, True, False]])
    slots = jnp.arange(6, dtype=jnp.int32)
    ctx = attention_context(spec, pos, pos, valid, slots, slots,
                            causal_slots=causal_block is not None)
    params = nn.meta.unbox(Attention(spec).init(jax.random.PRNGKey(1), x, ctx)["params"])
    params = sharpen(params, jax.random.PRNGKey(2), bias_scale=1.0)
    got, _ = Attention(spec).apply({"params": params}, x, ctx)
    want = _numpy_relative_attention(np.asarray(x, np.float64),
                                     jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                                     np.asarray(pos), np.asarray(valid), spec.max_len)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).max() > 0.1  # not a vacuous comparison
    if smeared_keys:  # the smearing changes the output
        plain = {k: v for k, v in params.items() if k != "smear"}
        unsmeared = _numpy_relative_attention(np.asarray(x, np.float64),
                                              jax.tree.map(lambda a: np.asarray(a, np.float64), plain),
                                              np.asarray(pos), np.asarray(valid), spec.max_len)
        assert np.abs(unsmeared - want).max() > 1e-2


@pytest.fixture(scope="module", params=[False, True], ids=["plain_keys", "smeared_keys"])
def all_role_params(request):
    cfg = tiny_model_cfg(init_std=0.3, smeared_keys=request.param)
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES)
    return cfg, sharpen(params, jax.random.PRNGKey(1))


def test_packed_segments_equal_separate_sequences(all_role_params):
    cfg, params = all_role_params
    forward = jax.jit(lambda p, t, pos, seg: hydra.forward(p, cfg, t, pos, None, seg,
                                                           roles=ROLES))
    first = jax.random.randint(jax.random.PRNGKey(5), (1, 4), 0, cfg.vocab_size)
    second = jax.random.randint(jax.random.PRNGKey(6), (1, 5), 0, cfg.vocab_size)
    packed = jnp.concatenate([first, second], axis=1)
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4]], jnp.int32)
    segments = jnp.array([[0] * 4 + [1] * 5], jnp.int32)
    together = forward(params, packed, positions, segments)
    alone_first = forward(params, first, positions[:, :4], jnp.zeros((1, 4), jnp.int32))
    alone_second = forward(params, second, positions[:, 4:], jnp.zeros((1, 5), jnp.int32))
    for role in ROLES:
        np.testing.assert_allclose(together[role][:, :4], alone_first[role], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(together[role][:, 4:], alone_second[role], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_outputs_depend_only_on_relative_positions(position):
    cfg = tiny_model_cfg(init_std=0.3, position=position)
    params = sharpen(hydra.init_params(cfg, jax.random.PRNGKey(0), ("policy",)),
                     jax.random.PRNGKey(1))
    forward = jax.jit(lambda p, t, pos: hydra.forward(p, cfg, t, pos, roles=("policy",)))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 7), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7))
    base = forward(params, tokens, positions)["policy"]
    shifted = forward(params, tokens, positions + 11)["policy"]
    np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("smeared_keys", [False, True])
def test_block_causal_forward_and_gradients_equal_one_block(smeared_keys):
    """hydra.forward (causal slots: block-causal attention) against the same model with
    one block over every key: outputs and parameter gradients, with packed segments, a
    padding gap and offset positions."""
    cfg = tiny_model_cfg(init_std=0.3, smeared_keys=smeared_keys)
    params = sharpen(hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES), jax.random.PRNGKey(1))
    length = 13
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, length), 0, cfg.vocab_size)
    positions = jnp.array([list(range(5)) + list(range(3, 11)),
                           list(range(2, 2 + length))], jnp.int32)
    segments = jnp.array([[0] * 5 + [1] * 8, [0] * length], jnp.int32)
    valid = jnp.ones((2, length), bool).at[1, 6:8].set(False)
    weights = jax.random.normal(jax.random.PRNGKey(3), (2, length, cfg.vocab_size))

    def loss(p, block):
        spec = dataclasses.replace(ModelSpec.of(cfg), causal_block=block)
        out = hydra.forward(p, spec, tokens, positions, valid, segments, roles=ROLES)
        return (jnp.sum(out["policy"] * weights) + jnp.sum(out["value"])
                + jnp.sum(out["pref_rm"]) + jnp.sum(out["rule_rm"])), out

    results = {}
    for block in (0, 4):
        grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
        results[block] = grad(params, block)
    _assert_same_outputs_and_gradients(results[4], results[0])


def _assert_same_outputs_and_gradients(got, want):
    """(grads, outputs) of two forwards: every role's output, and every parameter's gradient
    to 1e-5 of its largest entry."""
    (got_grads, got_out), (want_grads, want_out) = got, want
    for role in ROLES:
        np.testing.assert_allclose(got_out[role], want_out[role], rtol=1e-5, atol=1e-5)
    for path, want_leaf in jax.tree_util.tree_leaves_with_path(want_grads):
        got_leaf = got_grads
        for key in path:
            got_leaf = got_leaf[key.key]
        scale = float(jnp.max(jnp.abs(want_leaf))) + 1e-6
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("causal_block", [0, 4])
def test_slot_positions_skip_the_gather_with_the_same_outputs_and_gradients(causal_block):
    """hydra.forward without positions (every row's positions are its slots: the relative
    term by reshape, `layers.relative_scores`) against the same positions passed explicitly
    (the gathered term): outputs and parameter gradients, right padding included; the
    last layer of each top queries some slots only (gathered there either way)."""
    cfg = tiny_model_cfg(init_std=0.3, smeared_keys=True, causal_block=causal_block)
    params = sharpen(hydra.init_params(cfg, jax.random.PRNGKey(0), ROLES), jax.random.PRNGKey(1))
    length = 11
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, length), 0, cfg.vocab_size)
    valid = jnp.ones((2, length), bool).at[1, 7:].set(False)
    arange = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (2, length))
    read = jnp.array([[0, 3, 9, 10], [1, 2, 5, 6]], jnp.int32)
    weights = jax.random.normal(jax.random.PRNGKey(3), (2, 4, cfg.vocab_size))

    def loss(p, positions):
        out = hydra.forward(p, cfg, tokens, positions, valid, roles=ROLES, read_BxK=read)
        return (jnp.sum(out["policy"] * weights) + jnp.sum(out["value"])
                + jnp.sum(out["pref_rm"]) + jnp.sum(out["rule_rm"])), out

    grad = jax.jit(jax.grad(loss, has_aux=True))
    gathered = grad(params, arange)
    _assert_same_outputs_and_gradients(grad(params, None), gathered)
    out_gather = gathered[1]
    # Not vacuous: the relative term matters (shifted distances change the outputs).
    moved = hydra.forward(params, cfg, tokens, arange * 2, valid, roles=ROLES, read_BxK=read)
    assert np.abs(np.asarray(moved["policy"] - out_gather["policy"])).max() > 1e-2
