"""Self-play: prompt mixture, the context buffer and its state, LM-as-user continuation."""
import collections
import json

import jax
import pytest

from rl_helpers import make_env
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.rl.selfplay import ContextBuffer, Episode, EpisodeSource, play


def _episode(i, agent_turns=1):
    return Episode(id=f"e{i}", prompt_id=f"p{i}", source="eli5", agent_turns=agent_turns,
                   turns=(Turn(Role.USER, f"q{i}"), Turn(Role.AGENT, f"a{i}")))


def _json_round_trip(state):
    return json.loads(json.dumps(state))


def test_buffer_capacity_max_turns_and_policy():
    buf = ContextBuffer(capacity=3, max_turns=2, continue_prob=1.0, seed=0)
    assert buf.take() is None  # empty: start fresh
    assert not buf.add(_episode(0, agent_turns=2))  # finished dialogues are not kept
    for i in range(5):
        assert buf.add(_episode(i))
    assert len(buf) == 3 and buf.num_evicted == 2 and [e.id for e in buf.items] == ["e2", "e3", "e4"]
    taken = {buf.take().id for _ in range(3)}
    assert taken == {"e2", "e3", "e4"} and len(buf) == 0
    never = ContextBuffer(continue_prob=0.0)
    never.add(_episode(0))
    assert all(never.take() is None for _ in range(20)) and len(never) == 1
    half = ContextBuffer(capacity=10_000, continue_prob=0.3, seed=1)
    for i in range(2000):
        half.add(_episode(i))
    share = sum(half.take() is not None for _ in range(1000)) / 1000
    assert abs(share - 0.3) < 0.05


def test_buffer_state_round_trip_resumes_identically():
    buf = ContextBuffer(capacity=8, max_turns=3, continue_prob=0.6, seed=3)
    for i in range(6):
        buf.add(_episode(i))
    buf.take()
    state = _json_round_trip(buf.get_state())
    twin = ContextBuffer(seed=99)
    twin.set_state(state)
    assert twin.items == buf.items
    for i in range(6, 20):  # same adds and takes from here on
        a, b = buf.take(), twin.take()
        assert a == b
        buf.add(_episode(i))
        twin.add(_episode(i))
    assert buf.get_state() == twin.get_state()


def test_mixture_weights_are_respected(prompts):
    weights = {"eli5": 0.6, "human": 0.1, "red_team": 0.3}
    source = EpisodeSource(prompts, weights, ContextBuffer(continue_prob=0.0), seed=0)
    counts = collections.Counter(e.source for e in source.next_batch(4000))
    for name, w in weights.items():
        assert abs(counts[name] / 4000 - w) < 0.03, counts
    only = EpisodeSource(prompts, {"red_team": 1.0, "human": 0.0}, ContextBuffer(), seed=0)
    episodes = only.next_batch(50)
    assert {e.source for e in episodes} == {"red_team"}
    by_id = {p.id: p for p in prompts}
    assert all(e.turns == by_id[e.prompt_id].context and e.rule_id == by_id[e.prompt_id].rule_id
               for e in episodes)
    assert len({e.id for e in episodes}) == 50
    with pytest.raises(ValueError, match="unknown"):
        EpisodeSource(prompts, {"reddit": 1.0}, ContextBuffer())


def test_episode_source_state_round_trip(prompts):
    def make():
        return EpisodeSource(prompts, {"eli5": 1, "human": 1, "red_team": 1},
                             ContextBuffer(capacity=16, continue_prob=0.5, seed=5), seed=7)

    a = make()
    for step in range(3):
        for e in a.next_batch(4):
            a.buffer.add(Episode.from_json({**e.to_json(), "agent_turns": e.agent_turns + 1}))
    state = _json_round_trip(a.get_state())
    b = make()
    b.set_state(state)
    for step in range(4):
        batch_a, batch_b = a.next_batch(4), b.next_batch(4)
        assert batch_a == batch_b
        assert any(e.continued for e in batch_a) or step
        for e in batch_a:
            a.buffer.add(Episode.from_json({**e.to_json(), "agent_turns": e.agent_turns + 1}))
            b.buffer.add(Episode.from_json({**e.to_json(), "agent_turns": e.agent_turns + 1}))
    assert a.get_state() == b.get_state()


def test_play_continues_buffered_dialogues_with_an_lm_user_turn(params, model_cfg, tok, engine, prompts):
    env = make_env(model_cfg, tok, engine, "choose", max_new_tokens=6, max_prompt_len=192)
    buf = ContextBuffer(capacity=16, max_turns=2, continue_prob=1.0, seed=0)
    source = EpisodeSource(prompts, {"eli5": 1, "human": 1, "red_team": 1}, buf, seed=0)
    first = play(env, params, source, 4, jax.random.PRNGKey(0), keep_malformed=True)
    assert not any(e.continued for e in first.episodes) and len(buf) == 4
    assert first.finished == (False,) * 4
    saved = _json_round_trip(source.get_state())
    second = play(env, params, source, 4, jax.random.PRNGKey(1), keep_malformed=True)
    previous = {e.id: r.dialogue for e, r in zip(first.episodes, first.batch.rollouts)}
    for e, r in zip(second.episodes, second.batch.rollouts):
        assert e.continued and e.agent_turns == 1
        # context = the buffered dialogue + the LM's User turn; the rollout extends exactly that.
        assert e.turns[:-1] == previous[e.id] and e.turns[-1].role == Role.USER
        assert r.context == e.turns and r.new_turns[-1].role == Role.AGENT
    assert second.finished == (True,) * 4 and len(buf) == 0  # max_turns=2 reached
    # Resuming from the saved state replays the same step.
    source.set_state(saved)
    again = play(env, params, source, 4, jax.random.PRNGKey(1), keep_malformed=True)
    assert [r.dialogue for r in again.batch.rollouts] == [r.dialogue for r in second.batch.rollouts]
    assert again.user_malformed == second.user_malformed


def test_play_drops_malformed_dialogues_by_default(params, model_cfg, tok, engine, prompts):
    env = make_env(model_cfg, tok, engine, "never", max_new_tokens=2, max_prompt_len=192)
    source = EpisodeSource(prompts, {"eli5": 1}, ContextBuffer(continue_prob=1.0), seed=0)
    step = play(env, params, source, 4, jax.random.PRNGKey(0))
    malformed = [r.malformed is not None for r in step.batch.rollouts]
    assert list(step.finished) == malformed and len(source.buffer) == malformed.count(False)
