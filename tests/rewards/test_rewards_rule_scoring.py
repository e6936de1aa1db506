"""Rule scoring with the dialogue prefix shared by all rules equals scoring pairs from scratch."""
import jax
import numpy as np
import pytest
from rewards_helpers import random_params, right_padded, tiny_model_cfg

from sparrow_jax import sharding as shd
from sparrow_jax.config import default_config
from sparrow_jax.dialogue import render as render_lib
from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.dialogue.tokenizer import train_tokenizer
from sparrow_jax.model import hydra
from sparrow_jax.rewards import rule_scoring

ROLES = ("rule_rm",)
DIALOGUE_LENGTHS = [12, 7, 3, 10]  # ragged, right-padded to L = 12
RULE_LENGTHS = [6, 2, 4, 1, 5]     # ragged, right-padded to Q = 6


def _inputs(cfg, seed=1):
    tokens, valid = right_padded(DIALOGUE_LENGTHS, 12, cfg.vocab_size, seed)
    rule_tokens, rule_valid = right_padded(RULE_LENGTHS, 6, cfg.vocab_size, seed + 1)
    return tokens, valid, rule_tokens, rule_valid


def _scorers(cfg, **kwargs):
    shared = jax.jit(lambda p, *a: rule_scoring.rule_violation_probs(p, cfg, *a, **kwargs))
    unshared = jax.jit(lambda p, *a: rule_scoring.rule_violation_probs_unshared(p, cfg, *a))
    return shared, unshared


@pytest.mark.parametrize("position,rule_chunk,grouped,scan_layers", [
    ("relative", None, False, True), ("rotary", None, False, True), ("relative", 2, False, True),
    ("relative", None, True, True), ("relative", 1, True, True),
    # Looped layers read the shared cache without writing the suffix into it (keep_cache=False).
    ("relative", 1, True, False), ("rotary", 2, False, False)])
def test_shared_prefix_equals_from_scratch(position, rule_chunk, grouped, scan_layers):
    # tiny_cpu's choices when looped: smeared keys read the cache's newest key across the seam.
    cfg = tiny_model_cfg(position=position, scan_layers=scan_layers, smeared_keys=not scan_layers)
    params = random_params(cfg, ROLES)
    inputs = _inputs(cfg)
    groups = rule_scoring.group_rules_by_length(inputs[3], max_groups=3, multiple=2) if grouped \
        else None
    shared, unshared = _scorers(cfg, rule_chunk=rule_chunk, rule_groups=groups)
    got, want = np.asarray(shared(params, *inputs)), np.asarray(unshared(params, *inputs))
    assert got.shape == want.shape == (len(DIALOGUE_LENGTHS), len(RULE_LENGTHS))
    assert got.dtype == np.float32 and ((got >= 0) & (got <= 1)).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # Not vacuous: the answer depends on both the dialogue and the rule.
    assert np.std(got, axis=0).max() > 1e-2 and np.std(got, axis=1).max() > 1e-2


def test_matches_direct_forward_and_ignores_padding():
    """One pair by hand: forward over exactly dialogue ++ suffix; extra padding changes nothing."""
    cfg = tiny_model_cfg()
    params = random_params(cfg, ROLES)
    tokens, valid, rule_tokens, rule_valid = _inputs(cfg)
    shared, _ = _scorers(cfg)
    got = np.asarray(shared(params, tokens, valid, rule_tokens, rule_valid))
    b, r = 1, 2
    seq = np.concatenate([tokens[b, valid[b]], rule_tokens[r, rule_valid[r]]])[None]
    forward = jax.jit(lambda p, t: hydra.forward(p, cfg, t, roles=ROLES))
    logits = forward(params, seq)["rule_rm"][0, -1]
    np.testing.assert_allclose(got[b, r], jax.nn.softmax(logits)[1], atol=1e-5)

    wide = shared(params, np.pad(tokens, ((0, 0), (0, 5))), np.pad(valid, ((0, 0), (0, 5))),
                  np.pad(rule_tokens, ((0, 0), (0, 3))), np.pad(rule_valid, ((0, 0), (0, 3))))
    np.testing.assert_allclose(wide, got, atol=1e-5)


def test_sharded_mesh_matches_one_device():
    cfg = default_config()
    cfg.model = tiny_model_cfg()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    rules = shd.rules_from_config(cfg.mesh)
    params = random_params(cfg.model, ROLES)
    inputs = _inputs(cfg.model)
    _, unshared = _scorers(cfg.model)
    want = np.asarray(unshared(params, *inputs))

    mesh = shd.make_mesh(cfg.mesh)
    axes = hydra.param_logical_axes(cfg.model, roles=ROLES)
    sharded_params = jax.device_put(params, shd.shardings_for(axes, mesh, rules, params))
    batch_sharding = shd.shardings_for(jax.sharding.PartitionSpec("batch"), mesh, rules)
    fn = jax.jit(lambda p, *a: rule_scoring.rule_violation_probs(p, cfg.model, *a, mesh=mesh,
                                                                 rules=rules))
    with shd.activation_sharding(mesh, rules):
        got = fn(sharded_params, jax.device_put(inputs[0], batch_sharding),
                 jax.device_put(inputs[1], batch_sharding), *inputs[2:])
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
    one = jax.jit(lambda p, *a: rule_scoring.rule_violation_probs(p, cfg.model, *a))(
        jax.device_put(params, jax.devices()[0]), *inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(one), atol=1e-5, rtol=0)


def test_prepare_rule_suffixes(tmp_path):
    rules = load_rules()
    texts = [rule.text for rule in rules] + [render_lib.DEFAULT_RULE_QUESTION, "Hello there."]
    tok = train_tokenizer(texts * 4, tmp_path / "tok.model", vocab_size=300)
    tokens, valid = rule_scoring.prepare_rule_suffixes(rules, tok)
    assert tokens.shape == valid.shape and tokens.shape[0] == len(rules) == 23
    assert tokens.dtype == np.int32 and valid.dtype == bool and tokens.shape[1] % 16 == 0
    for r, rule in enumerate(rules):
        want = render_lib.render_rule_question(rule.text, tok)
        np.testing.assert_array_equal(tokens[r, valid[r]], want)
        assert valid[r, :len(want)].all() and not valid[r, len(want):].any()
        assert (tokens[r, ~valid[r]] == tok.pad_id).all()
    short, short_valid = rule_scoring.prepare_rule_suffixes(["Be kind."], tok, question="Broken?",
                                                            length=40)
    assert short.shape == (1, 40)
    np.testing.assert_array_equal(short[0, short_valid[0]],
                                  render_lib.render_rule_question("Be kind.", tok, "Broken?"))
    with pytest.raises(ValueError, match="more than length"):
        rule_scoring.prepare_rule_suffixes(rules, tok, length=4)


def test_rule_groups_cover_every_rule_at_the_fewest_padded_slots():
    _, rule_valid = right_padded(RULE_LENGTHS, 6, 100, 0)  # lengths 6, 2, 4, 1, 5
    groups = rule_scoring.group_rules_by_length(rule_valid, max_groups=3, multiple=2)
    assert sorted(r for indices, _ in groups for r in indices) == [0, 1, 2, 3, 4]
    for indices, width in groups:  # every group holds its rules' real tokens
        assert all(RULE_LENGTHS[r] <= width <= 6 for r in indices)
    # Sorted lengths 1 2 | 4 | 5 6 at widths 2, 4, 6: 4 + 4 + 12 = 20 slots; the best of
    # every 3-way split of the sorted rules (one group would be 30).
    assert sum(len(i) * w for i, w in groups) == 20
    assert rule_scoring.group_rules_by_length(rule_valid, max_groups=1, multiple=2) == (
        ((3, 1, 2, 4, 0), 6),)
    with pytest.raises(ValueError, match="rule_groups must cover"):
        params = random_params(tiny_model_cfg(), ROLES)
        rule_scoring.rule_violation_probs(params, tiny_model_cfg(), *_inputs(tiny_model_cfg()),
                                          rule_groups=(((0, 1), 6),))
