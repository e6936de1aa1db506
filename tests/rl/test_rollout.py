"""One agent step: evidence modes, search turns, masks, malformed flags, cuts, determinism."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_helpers import boost, contexts_from, make_env, prompt_shapes_per_call
from sparrow_jax.data.jsonl import clean_text
from sparrow_jax.dialogue.render import parse, render, truncate_left
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.model import hydra
from sparrow_jax.rl import sequence as seq_lib
from sparrow_jax.rl.rollout import NO_RESULTS, rollout
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import TokenIds
from sparrow_jax.sampling.turns import EMPTY, OVER_LENGTH
from sparrow_jax.search import SearchResult, format_evidence

B = 8


class EchoEngine:
    """Finds one document per non-empty query (its title is the query); records the queries."""

    def __init__(self):
        self.queries = []

    def search(self, query, k=1):
        self.queries.append(query)
        if not query.strip():
            return []
        return [SearchResult("d", f"About {query.strip()}", "https://toy/x", "some fragment", 1.0)][:k]


class EmptyEngine:
    def search(self, query, k=1):
        return []


def _left_padded(contexts, tok, width):
    seqs = [render(c, tok).token_ids for c in contexts]
    return seq_lib.left_pad(seqs, width, tok.pad_id)


def test_always_searches_and_inserts_the_top_result(params, model_cfg, tok, engine, prompts):
    contexts = contexts_from(prompts, B)
    for eng in (EchoEngine(), engine):
        batch = rollout(make_env(model_cfg, tok, eng, "always"), params, contexts, jax.random.PRNGKey(1))
        for r in batch.rollouts:
            assert r.searched
            assert [t.role for t in r.new_turns] == [Role.SEARCH_QUERY, Role.SEARCH_RESULT, Role.AGENT]
            results = eng.search(r.new_turns[0].text, k=1)
            # the engine's text passes the boundary rule (an echoed query may hold control ids)
            expected = clean_text(format_evidence(results[0])) if results else "No results."
            assert r.new_turns[1].text == expected
            if not results:
                assert r.malformed is not None  # the query's own flag comes first, else no_results
    echo = rollout(make_env(model_cfg, tok, EchoEngine(), "always"), params, contexts,
                   jax.random.PRNGKey(1))
    assert any(r.new_turns[1].text.startswith("About ") for r in echo.rollouts)


def test_never_writes_one_agent_turn(params, model_cfg, tok, prompts):
    eng = EchoEngine()
    batch = rollout(make_env(model_cfg, tok, eng, "never"), params, contexts_from(prompts, B),
                    jax.random.PRNGKey(2))
    assert eng.queries == [] and batch.role_logprobs_Bx2 is None
    for r in batch.rollouts:
        assert not r.searched and [t.role for t in r.new_turns] == [Role.AGENT]


@pytest.mark.parametrize("favour", [None, Role.SEARCH_QUERY, Role.AGENT])
def test_choose_takes_the_likelier_role(params, model_cfg, tok, prompts, favour):
    if favour is not None:  # push one role token up everywhere (both outcomes get tested)
        params = boost(params, [tok.role_id(favour)], 1.0)
    contexts = contexts_from(prompts, B)
    env = make_env(model_cfg, tok, EchoEngine(), "choose")
    batch = rollout(env, params, contexts, jax.random.PRNGKey(3))
    tokens, valid = _left_padded(contexts, tok, env.config.max_prompt_len - 1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits = hydra.forward(params, model_cfg, jnp.asarray(tokens), positions, jnp.asarray(valid),
                           roles=("policy",))["policy"][:, -1]
    role_ids = [tok.role_id(Role.SEARCH_QUERY), tok.role_id(Role.AGENT)]
    lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[:, role_ids]
    np.testing.assert_allclose(batch.role_logprobs_Bx2, lp, rtol=1e-5, atol=1e-5)
    searched = np.array([r.searched for r in batch.rollouts])
    np.testing.assert_array_equal(searched, lp[:, 0] > lp[:, 1])
    if favour is not None:
        assert searched.all() == (favour == Role.SEARCH_QUERY) and searched.any() == searched.all()


def _check_masks(r, tok):
    s = r.sequence
    assert s.token_ids_L[0] == tok.bos_id and len(s.turn_spans) == len(r.context) + len(r.new_turns)
    assert parse(s.token_ids_L, tok) == r.dialogue
    n_ctx = len(r.context)
    expected = np.zeros(len(s), bool)
    for (start, end), turn in zip(s.turn_spans[n_ctx:], r.new_turns):
        if turn.role in (Role.AGENT, Role.SEARCH_QUERY):
            expected[start:end] = True
    np.testing.assert_array_equal(s.policy_mask_L, expected)
    assert not (s.sampled_mask_L & ~s.policy_mask_L).any()
    assert r.reward_index == len(s) - 1 and s.token_ids_L[r.reward_index] == tok.eot_id
    assert s.turn_spans[-1][1] == len(s) and s.role_ids_L[r.reward_index] == 1  # ROLE_INDEX[agent]
    re = render(r.dialogue, tok, loss_from_turn=n_ctx)  # same mask as render's when ids agree
    if len(re) == len(s) and (re.token_ids == s.token_ids_L).all():
        np.testing.assert_array_equal(re.loss_mask, s.policy_mask_L)


@pytest.mark.parametrize("mode", ["always", "free"])
def test_masks_and_behaviour_logprobs_match_a_training_forward(params, model_cfg, tok, prompts, mode):
    contexts = list(contexts_from(prompts, B - 1)) + [prompts[B].context + (
        Turn(Role.AGENT, "Hello there."), Turn(Role.USER, "And what about that?"))]
    env = make_env(model_cfg, tok, EchoEngine(), mode, max_prompt_len=192)
    batch = rollout(env, params, contexts, jax.random.PRNGKey(4))
    assert batch.num_cut == 0
    for r in batch.rollouts:
        _check_masks(r, tok)
    arrays = batch.training_arrays(env.config.max_seq_len, tok.pad_id)
    assert arrays["tokens_BxL"].shape == (B, env.config.max_seq_len)
    for row, r in enumerate(batch.rollouts):  # the preference RM reads the final Sparrow turn
        start, last = arrays["turn_start_B"][row], arrays["reward_index_B"][row]
        assert arrays["tokens_BxL"][row, start] == tok.role_id(Role.AGENT)
        assert (arrays["role_ids_BxL"][row, start:last + 1] == 1).all()  # ROLE_INDEX[agent]
        assert arrays["tokens_BxL"][row, start - 1] == tok.eot_id  # the turn before ends there
    logits = hydra.forward(params, model_cfg, jnp.asarray(arrays["tokens_BxL"]),
                           jnp.asarray(arrays["positions_BxL"]), jnp.asarray(arrays["valid_BxL"]),
                           roles=("policy",))["policy"]
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    got = np.asarray(jnp.take_along_axis(logp, jnp.asarray(arrays["tokens_BxL"][:, 1:, None]), -1)[..., 0])
    mask = arrays["sampled_mask_BxL"][:, 1:]
    assert mask.sum() > 0
    np.testing.assert_allclose(got[mask], arrays["behaviour_logprobs_BxL"][:, 1:][mask], atol=2e-4)
    if mode == "free":  # the sampled speaker's role token is a sampled token
        first_new = [r.sequence.turn_spans[len(r.context)][0] for r in batch.rollouts]
        assert all(arrays["sampled_mask_BxL"][b, i] for b, i in enumerate(first_new))
    else:
        assert all(r.searched for r in batch.rollouts)


def test_malformed_empty_and_over_length(params, model_cfg, tok, prompts):
    contexts = contexts_from(prompts, B)
    empty = rollout(make_env(model_cfg, tok, EchoEngine(), "never"), boost(params, [tok.eot_id], 10.0),
                    contexts, jax.random.PRNGKey(5))
    assert all(r.malformed == EMPTY and r.new_turns[-1].text == "" for r in empty.rollouts)
    base = TokenIds.from_tokenizer(tok)
    no_eot = dataclasses.replace(base, banned_ids=base.banned_ids + (tok.eot_id,))
    env = dataclasses.replace(make_env(model_cfg, tok, EchoEngine(), "never", max_new_tokens=1), ids=no_eot)
    over = rollout(env, params, contexts, jax.random.PRNGKey(5))
    for r in over.rollouts:
        assert r.malformed == OVER_LENGTH
        s = r.sequence  # closed with an eot the policy never drew: masked for loss, not sampled
        assert s.token_ids_L[-1] == tok.eot_id and s.policy_mask_L[-1] and not s.sampled_mask_L[-1]
        assert s.sampled_mask_L.sum() == 1


def test_malformed_no_results(params, model_cfg, tok, prompts):
    word = tok.encode("capital")[0]
    params = boost(params, [word, tok.eot_id], 10.0)  # short queries: word* eot
    batch = rollout(make_env(model_cfg, tok, EmptyEngine(), "always"), params, contexts_from(prompts, B),
                    jax.random.PRNGKey(6))
    flags = [r.malformed for r in batch.rollouts]
    assert NO_RESULTS in flags
    for r in batch.rollouts:
        assert r.new_turns[1] == Turn(Role.SEARCH_RESULT, "No results.") and r.malformed is not None


def test_reproducible_for_a_seed(params, model_cfg, tok, prompts):
    env = make_env(model_cfg, tok, EchoEngine(), "free")
    contexts = contexts_from(prompts, B)
    a, b, c = (rollout(env, params, contexts, jax.random.PRNGKey(s)) for s in (7, 7, 8))
    assert [r.new_turns for r in a.rollouts] == [r.new_turns for r in b.rollouts]
    assert all((x.sequence.token_ids_L == y.sequence.token_ids_L).all() for x, y in zip(a.rollouts, b.rollouts))
    assert [r.new_turns for r in a.rollouts] != [r.new_turns for r in c.rollouts]


def test_long_contexts_are_cut_from_the_left(params, model_cfg, tok, prompts):
    long = tuple(Turn(Role.USER if i % 2 == 0 else Role.AGENT, f"turn {i} " + "words " * 6)
                 for i in range(12))
    contexts = [long, prompts[0].context]
    env = make_env(model_cfg, tok, EchoEngine(), "never", max_prompt_len=64)
    batch = rollout(env, params, contexts, jax.random.PRNGKey(9))
    assert batch.num_cut == 1 and batch.rollouts[0].truncated and not batch.rollouts[1].truncated
    # With a search the Sparrow prompt grows (query + result) and may be cut again; still bounded.
    searched = rollout(dataclasses.replace(env, config=dataclasses.replace(env.config, evidence="always")),
                       params, contexts, jax.random.PRNGKey(9))
    for r in batch.rollouts + searched.rollouts:
        assert len(r.sequence) <= env.config.max_seq_len
        assert parse(r.sequence.token_ids_L, tok)[-len(r.new_turns):] == r.new_turns
    # The block cut keeps exactly what render.truncate_left keeps.
    blocks = seq_lib.context_blocks(long, tok)
    kept, cut = seq_lib.cut_left(blocks, 62)
    expected, was_cut = truncate_left(render(long, tok, open_role=Role.AGENT), 64)
    assert cut and was_cut
    np.testing.assert_array_equal(seq_lib.assemble(kept, tok, Role.AGENT).token_ids_L, expected.token_ids)


def test_cut_inside_an_over_long_final_turn_matches_truncate_left(tok):
    turns = (Turn(Role.USER, "hi"), Turn(Role.SEARCH_RESULT, "evidence text " * 30))
    blocks = seq_lib.context_blocks(turns, tok)
    sampled = seq_lib.Block(Role.AGENT, blocks[1].text_ids, new=True, sampled_text=True,
                            text_logprobs=tuple(-float(i) for i in range(len(blocks[1].text_ids))),
                            eot_logprob=-0.5, role_logprob=-0.1)
    for last in (blocks[1], sampled):
        kept, cut = seq_lib.cut_left([blocks[0], last], 20)
        assert cut and len(kept) == 1 and kept[0].head_cut and len(kept[0]) == 20
        got = seq_lib.assemble(kept, tok, Role.AGENT)
        expected, _ = truncate_left(render((turns[0], Turn(last.role, turns[1].text)), tok,
                                           open_role=Role.AGENT), 22)
        np.testing.assert_array_equal(got.token_ids_L, expected.token_ids)
    # The kept tail keeps its own log-probs; the cut role token is no longer a sampled token.
    assert got.sampled_mask_L[1] == False and got.sampled_mask_L[2:-1].all()  # noqa: E712
    np.testing.assert_allclose(got.behaviour_logprobs_L[2:-2], sampled.text_logprobs[-18:])
    assert got.behaviour_logprobs_L[-2] == np.float32(-0.5)


def test_rollout_on_a_mesh_matches_one_device(params, model_cfg, tok, prompts):
    from sparrow_jax import sharding as shd
    from sparrow_jax.config import default_config
    cfg = default_config()
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    mesh, rules = shd.make_mesh(cfg.mesh), shd.rules_from_config(cfg.mesh)
    axes = hydra.param_logical_axes(model_cfg, roles=("policy",))
    sharded = jax.device_put(params, shd.shardings_for(axes, mesh, rules, params))
    env = make_env(model_cfg, tok, EchoEngine(), "free")
    contexts = contexts_from(prompts, B)
    one = rollout(env, params, contexts, jax.random.PRNGKey(10))
    eight = rollout(dataclasses.replace(env, mesh=mesh, rules=rules), sharded, contexts,
                    jax.random.PRNGKey(10))
    assert [r.new_turns for r in one.rollouts] == [r.new_turns for r in eight.rollouts]
    np.testing.assert_allclose(one.training_arrays()["behaviour_logprobs_BxL"],
                               eight.training_arrays()["behaviour_logprobs_BxL"], atol=1e-5)


@pytest.mark.parametrize("seed", [5, 6])
def test_rollout_equals_sampling_every_phase_from_scratch(params, model_cfg, tok, prompts, seed):
    """Before one prefill served the speaker choice and the first turn, the rollout encoded
    the dialogue afresh for each phase: one `sample` call over all rows per phase, on that
    phase's prompt (the Search Query with fold_in(rng, 1), the Sparrow turn with
    fold_in(rng, 2)). The turns kept now are the tokens those calls drew."""
    env = make_env(model_cfg, tok, EchoEngine(), "free")
    rng = jax.random.PRNGKey(seed)
    batch = rollout(env, params, contexts_from(prompts, B), rng)
    width = env.config.max_prompt_len
    searched = np.array([r.searched for r in batch.rollouts])
    assert searched.any() and not searched.all()  # both kinds of row in one batch

    def draws(prompts_, key, config):
        tokens, valid = seq_lib.left_pad(prompts_, width, tok.pad_id)
        out = sampler.sample(params, model_cfg, tokens, valid, key, config, env.token_ids)
        return [np.asarray(t)[np.asarray(v)] for t, v in zip(out.tokens_BxN, out.token_valid_BxN)]

    query_prompts = [seq_lib.assemble(seq_lib.cut_left(seq_lib.context_blocks(r.context, tok),
                                                       width - 2)[0], tok,
                                      Role.SEARCH_QUERY).token_ids_L for r in batch.rollouts]
    queries = draws(query_prompts, jax.random.fold_in(rng, 1), env.config.query_config)
    answer_prompts = [r.sequence.token_ids_L[:r.sequence.turn_spans[-1][0] + 1]
                      for r in batch.rollouts]
    answers = draws(answer_prompts, jax.random.fold_in(rng, 2), env.config.agent)
    for row, r in enumerate(batch.rollouts):
        ids = r.sequence.token_ids_L
        start = r.sequence.turn_spans[-1][0]
        # (a turn cut at max_new_tokens gets its eot in the sequence, not from the sampler)
        np.testing.assert_array_equal(ids[start + 1:start + 1 + len(answers[row])], answers[row])
        if r.searched:
            q_start, _ = r.sequence.turn_spans[len(r.context)]
            query = ids[q_start + 1:q_start + 1 + len(queries[row])]
            np.testing.assert_array_equal(query, queries[row])


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("live_rows", [(1, 4, 6), (0, 1, 2, 3, 5, 6, 7), None])
def test_sampling_some_rows_in_half_batches_draws_what_the_whole_batch_draws(
        params, model_cfg, tok, prompts, live_rows, parts):
    """With one call at a time: at most B/2 live rows, one call of B/2 rows; more, two; every
    row live, one call. With P parallel calls (`rl.parallel_calls`), calls of B/(2P) rows, as
    many as the live rows need. Either way each live row's turn is the one `sampler.sample`
    draws for it in the whole batch, and the others are empty."""
    from sparrow_jax.rl.sampler_calls import sample_live
    env = dataclasses.replace(make_env(model_cfg, tok, EchoEngine()), parallel_calls=parts)
    tokens, valid = _left_padded(contexts_from(prompts, B), tok, env.config.max_prompt_len)
    live = np.ones(B, bool) if live_rows is None else np.isin(np.arange(B), live_rows)
    rng = jax.random.PRNGKey(3)
    with prompt_shapes_per_call("sample") as shapes:
        some = sample_live(env, params, tokens, valid, rng, env.config.agent,
                           None if live_rows is None else live)
    calls = [rows for rows, _ in shapes]
    if parts == 1 and live_rows is None:
        assert calls == [B]
    else:
        width = B // (2 * parts)
        assert calls == [width] * -(-int(live.sum()) // width)
    everyone = sampler.sample(params, model_cfg, tokens, valid, rng, env.config.agent,
                              env.token_ids)
    for name in ("tokens_BxN", "token_valid_BxN", "lengths_B", "finished_B"):
        np.testing.assert_array_equal(np.asarray(getattr(some, name))[live],
                                      np.asarray(getattr(everyone, name))[live], err_msg=name)
    np.testing.assert_allclose(np.asarray(some.logprobs_BxN)[live],
                               np.asarray(everyone.logprobs_BxN)[live], atol=1e-5)
    assert not np.asarray(some.token_valid_BxN)[~live].any()
