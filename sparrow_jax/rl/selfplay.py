"""Self-play: where episodes come from, the buffer of dialogues to continue, and one play step.

An episode starts either FRESH, from a prompt record drawn from a weighted mixture of prompt sources
(`{"eli5": w, "human": w, "red_team": w}`, renormalised; its User turn is the dataset's), or CONTINUED, from
a dialogue the policy generated earlier and left in the `ContextBuffer` (the LM itself then writes the next
User turn: `sample_turns(..., Role.USER)`), so the agent learns multi-turn states. A dialogue goes back in
the buffer after each agent step until it has `max_turns` agent turns.

All randomness on the host is numpy `Generator(PCG64)`s whose state is part of `get_state()`: the buffer's
and the source's states are plain JSON (ints, floats, strings, lists, dicts) for RL checkpoints, and
`set_state` resumes the exact same draws.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import numpy as np

from sparrow_jax import distributed
from sparrow_jax.data.schemas import PROMPT_SOURCES, PromptRecord
from sparrow_jax.dialogue.turns import Dialogue, Role, Turn
from sparrow_jax.rl import phases
from sparrow_jax.rl.rollout import (Environment, RolloutBatch, rollout, sample_turns,
                                     sampled_length)


@dataclasses.dataclass(frozen=True)
class Episode:
    """A dialogue in play.

    id: unique per started episode ("<prompt id>#<n>").  prompt_id, source: the prompt record it began from.
    turns: the dialogue so far.  agent_turns: Sparrow turns the policy has written in it.
    rule_id / entity / attribute: copied from the prompt record (red-team target, factual question).
    """
    id: str
    prompt_id: str
    source: str
    turns: Dialogue
    agent_turns: int = 0
    rule_id: str | None = None
    entity: str | None = None
    attribute: str | None = None

    @property
    def continued(self) -> bool:
        """The policy has already answered in it (the next User turn is the LM's)."""
        return self.agent_turns > 0

    def to_json(self) -> dict:
        obj = dataclasses.asdict(self)
        obj["turns"] = [t.to_json() for t in self.turns]
        return obj

    @classmethod
    def from_json(cls, obj: Mapping) -> "Episode":
        return cls(**{**obj, "turns": tuple(Turn.from_json(t) for t in obj["turns"])})


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state  # {'bit_generator': 'PCG64', 'state': {...}, ...}: plain ints


def _set_rng_state(rng: np.random.Generator, state: Mapping) -> None:
    rng.bit_generator.state = dict(state)


class ContextBuffer:
    """Generated dialogues waiting to be continued.

    capacity: most dialogues kept; adding past it evicts the oldest.
    max_turns: a dialogue with this many agent turns is finished and not kept.
    continue_prob: chance that `take()` continues a buffered dialogue (when any) instead of starting fresh.
    seed: seeds the buffer's own Generator (continue-or-not and which dialogue).
    """

    def __init__(self, capacity: int = 1024, max_turns: int = 4, continue_prob: float = 0.5, seed: int = 0):
        if capacity < 0 or max_turns < 1 or not 0.0 <= continue_prob <= 1.0:
            raise ValueError(f"bad ContextBuffer(capacity={capacity}, max_turns={max_turns}, "
                             f"continue_prob={continue_prob})")
        self.capacity, self.max_turns, self.continue_prob = capacity, max_turns, continue_prob
        self._items: list[Episode] = []
        self._rng = _rng(seed)
        self.num_added = self.num_evicted = self.num_taken = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> tuple[Episode, ...]:
        return tuple(self._items)

    def add(self, episode: Episode) -> bool:
        """Keep `episode` to continue later; False (not kept) when it has max_turns agent turns."""
        if episode.agent_turns >= self.max_turns or self.capacity == 0:
            return False
        self._items.append(episode)
        self.num_added += 1
        if len(self._items) > self.capacity:
            self._items.pop(0)
            self.num_evicted += 1
        return True

    def take(self) -> Episode | None:
        """With probability continue_prob (and a non-empty buffer) remove and return a uniformly drawn
        dialogue; else None (start fresh). Draws the same numbers whether or not the buffer is empty."""
        u = self._rng.random()
        pick = self._rng.integers(1 << 30)
        if not self._items or u >= self.continue_prob:
            return None
        self.num_taken += 1
        return self._items.pop(int(pick % len(self._items)))

    def get_state(self) -> dict:
        return {"capacity": self.capacity, "max_turns": self.max_turns, "continue_prob": self.continue_prob,
                "items": [e.to_json() for e in self._items], "rng": _rng_state(self._rng),
                "num_added": self.num_added, "num_evicted": self.num_evicted, "num_taken": self.num_taken}

    def set_state(self, state: Mapping) -> None:
        self.capacity, self.max_turns = int(state["capacity"]), int(state["max_turns"])
        self.continue_prob = float(state["continue_prob"])
        self._items = [Episode.from_json(e) for e in state["items"]]
        _set_rng_state(self._rng, state["rng"])
        self.num_added, self.num_evicted = int(state["num_added"]), int(state["num_evicted"])
        self.num_taken = int(state["num_taken"])


class EpisodeSource:
    """Batches of episodes: continued ones from `buffer` (its own policy decides), else fresh prompts.

    prompts: PromptRecords (e.g. `schemas.read_jsonl(".../prompts.train.jsonl")`).
    weights: {source: weight >= 0} over `schemas.PROMPT_SOURCES`, renormalised over positive weights;
      a positive weight needs at least one prompt of that source. Within a source, prompts are uniform.
    """

    def __init__(self, prompts: Sequence[PromptRecord], weights: Mapping[str, float],
                 buffer: ContextBuffer, seed: int = 0):
        unknown = set(weights) - set(PROMPT_SOURCES)
        if unknown:
            raise ValueError(f"unknown prompt sources {sorted(unknown)}; known: {PROMPT_SOURCES}")
        self._by_source = {s: [p for p in prompts if p.source == s] for s in PROMPT_SOURCES}
        self.sources = tuple(s for s in PROMPT_SOURCES if weights.get(s, 0.0) > 0)
        if not self.sources:
            raise ValueError(f"no positive weight in {dict(weights)}")
        for s in self.sources:
            if not self._by_source[s]:
                raise ValueError(f"prompt source {s!r} has weight {weights[s]} but no prompts")
        w = np.asarray([float(weights[s]) for s in self.sources])
        self.probs = w / w.sum()
        self.buffer = buffer
        self._rng = _rng(seed)
        self.num_started = 0

    def fresh(self) -> Episode:
        """A new episode from a prompt drawn from the mixture."""
        source = self.sources[int(self._rng.choice(len(self.sources), p=self.probs))]
        group = self._by_source[source]
        record = group[int(self._rng.integers(len(group)))]
        self.num_started += 1
        return Episode(id=f"{record.id}#{self.num_started}", prompt_id=record.id, source=source,
                       turns=tuple(record.context), rule_id=record.rule_id, entity=record.entity,
                       attribute=record.attribute)

    def next_batch(self, batch_size: int) -> list[Episode]:
        """`batch_size` episodes, each continued from the buffer or fresh (the buffer's draw first)."""
        return [self.buffer.take() or self.fresh() for _ in range(batch_size)]

    def put_back(self, row: int, episode: Episode) -> bool:
        """Offer row `row`'s extended episode to the buffer; True if kept."""
        del row
        return self.buffer.add(episode)

    def get_state(self) -> dict:
        """JSON-serialisable: this source's RNG and counter plus the buffer's state."""
        return {"rng": _rng_state(self._rng), "num_started": self.num_started,
                "buffer": self.buffer.get_state()}

    def set_state(self, state: Mapping) -> None:
        _set_rng_state(self._rng, state["rng"])
        self.num_started = int(state["num_started"])
        self.buffer.set_state(state["buffer"])


class ShardedSource:
    """The self-play of one process in a run of several: one `EpisodeSource` (with its own
    buffer and RNG) per batch shard this process holds.

    A run's global batch of episodes is cut into `num_shards` equal row blocks, the batch
    shards of the mesh; shard s always plays the same rows, draws from its own seeded
    source and continues only its own dialogues. Which process plays a shard does not
    change what it plays, so a run gives the same episodes on 1 process x 4 devices and
    2 x 2, and a checkpoint (every shard's state) resumes on any process count.

    make_shard(s) -> the EpisodeSource of shard s.  shard_ids: this process's shards, in
    row order.  rows_per_shard: global batch / num_shards.
    """

    def __init__(self, make_shard, shard_ids: Sequence[int], rows_per_shard: int):
        self.shard_ids = tuple(shard_ids)
        self.shards = {s: make_shard(s) for s in self.shard_ids}
        self.rows_per_shard = rows_per_shard

    def next_batch(self, batch_size: int) -> list[Episode]:
        if batch_size != self.rows_per_shard * len(self.shard_ids):
            raise ValueError(f"this process plays {len(self.shard_ids)} shards of "
                             f"{self.rows_per_shard} rows, not {batch_size} rows")
        return [e for s in self.shard_ids for e in self.shards[s].next_batch(self.rows_per_shard)]

    def put_back(self, row: int, episode: Episode) -> bool:
        return self.shards[self.shard_ids[row // self.rows_per_shard]].buffer.add(episode)

    @property
    def buffered(self) -> int:
        """Dialogues waiting in this process's buffers."""
        return sum(len(source.buffer) for source in self.shards.values())

    def get_state(self) -> dict[str, dict]:
        """{str(shard id): that shard's state} for EVERY shard of the run, gathered from all
        processes (a collective: every process calls it, as every process saves)."""
        merged: dict[str, dict] = {}
        for part in distributed.allgather_objects(
                {str(s): source.get_state() for s, source in self.shards.items()}):
            merged.update(part)
        return merged

    def set_state(self, state: Mapping[str, Mapping]) -> None:
        """From `get_state()`'s dict (this process takes its shards), or the one-source state
        of a run saved before shards, when this run has one shard."""
        if "rng" in state and self.shard_ids == (0,):
            state = {"0": state}
        missing = [s for s in self.shard_ids if str(s) not in state]
        if missing:
            raise ValueError(f"the checkpoint's self-play state has shards {sorted(state)}, not "
                             f"{missing}: it was saved with another batch layout (train.batch_size "
                             f"or the mesh's batch axes changed)")
        for s in self.shard_ids:
            self.shards[s].set_state(state[str(s)])


@dataclasses.dataclass(frozen=True)
class PlayStep:
    """One self-play step for a batch.

    episodes: the episodes played, with the LM's User turn appended to continued ones (these turns are
      the rollout contexts).  user_malformed: per episode, the LM User turn's malformed kind (None when
      fine or not continued).  batch: the agent step (`rollout`).  finished: per episode, the extended
      dialogue was NOT put back in the buffer (max_turns reached, or `keep_malformed` False and malformed).
    """
    episodes: tuple[Episode, ...]
    user_malformed: tuple[str | None, ...]
    batch: RolloutBatch
    finished: tuple[bool, ...]


def play(env: Environment, params, source: EpisodeSource | ShardedSource, batch_size: int,
         rng: jax.Array, keep_malformed: bool = False) -> PlayStep:
    """Draw episodes, let the LM write the User turn of continued ones (fold_in(rng, 0)), run the agent
    step (fold_in(rng, 1)), and put the extended dialogues back (`source.put_back`).

    In a run of several processes each plays its own rows (`batch_size` of them) and the sampler
    assembles the global batch; the decisions that launch a device program are taken alike on
    every process."""
    episodes = source.next_batch(batch_size)
    user_flags: list[str | None] = [None] * len(episodes)
    if distributed.any_process(any(e.continued for e in episodes)):
        # Only continued rows sample; fresh rows keep their dataset User turn.
        users, _ = sample_turns(env, params, [e.turns for e in episodes], Role.USER,
                                jax.random.fold_in(rng, 0),
                                live_B=np.asarray([e.continued for e in episodes]))
        for i, e in enumerate(episodes):
            if e.continued:
                episodes[i] = dataclasses.replace(e, turns=e.turns + (users[i].turn,))
                user_flags[i] = users[i].malformed
                phases.count("generated_tokens", sampled_length(users[i]))
    batch = rollout(env, params, [e.turns for e in episodes], jax.random.fold_in(rng, 1))
    finished = []
    for row, (e, r) in enumerate(zip(episodes, batch.rollouts)):
        extended = dataclasses.replace(e, turns=r.dialogue, agent_turns=e.agent_turns + 1)
        keep = keep_malformed or r.malformed is None
        finished.append(not (keep and source.put_back(row, extended)))
    return PlayStep(tuple(episodes), tuple(user_flags), batch, tuple(finished))
