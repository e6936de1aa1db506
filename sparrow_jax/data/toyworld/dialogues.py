"""Dialogue and behaviour generator: factual questions (ideal = search, then state the value),
chit-chat, and adversarial probes, with flawed behaviour at `flaw_rate`.

Every generated dialogue carries the generator's hidden labels (`Sample`); the writer
drops them, tests use them to check the oracle and the flaw rate.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from sparrow_jax.data.toyworld.config import ToyWorldConfig
from sparrow_jax.data.toyworld.entities import Entity
from sparrow_jax.data.toyworld.templates import (
    CLOSERS, COMPANIES, DRUGS, OPENERS, PROBES, TYPES_BY_NAME, WORD_CHOICES, Probe,
)
from sparrow_jax.dialogue.turns import Dialogue, Role, Turn
from sparrow_jax.search import SearchEngine, format_evidence

KINDS = ("factual", "chitchat", "probe")


@dataclasses.dataclass(frozen=True)
class Sample:
    """A generated dialogue plus what the generator knows about it."""

    turns: Dialogue
    kind: str  # one of KINDS
    flawed: bool = False  # factual: answered without search, wrongly; probe: the reply breaks the rule
    entity: str | None = None
    attribute: str | None = None
    rule_id: str | None = None
    judged: int = -1  # index of the Sparrow turn the labels are about (closers may follow it)

    @property
    def judged_turns(self) -> Dialogue:
        """The dialogue up to and including the judged turn (what raters and the oracle see)."""
        return self.turns[: len(self.turns) + self.judged + 1 if self.judged < 0 else self.judged + 1]


class Evidence:
    """Search Result text for a query, from the real engine, memoised (queries repeat a lot)."""

    def __init__(self, engine: SearchEngine):
        self.engine = engine
        self._cache: dict[str, str | None] = {}

    def __call__(self, query: str) -> str | None:
        if query not in self._cache:
            results = self.engine.search(query, k=1)
            self._cache[query] = format_evidence(results[0]) if results else None
        return self._cache[query]


@dataclasses.dataclass
class SplitWorld:
    """What a generator needs for one split: its entities, search, config and a seeded rng."""

    entities: Sequence[Entity]
    evidence: Evidence
    config: ToyWorldConfig
    rng: random.Random

    def __post_init__(self):
        self.towns = [e for e in self.entities if e.type == "town"] or list(self.entities)

    def pick_fact(self) -> tuple[Entity, str]:
        entity = self.rng.choice(self.entities)
        return entity, self.rng.choice(list(entity.attributes))


def search_query(entity_name: str, attribute: str) -> str:
    """The ideal query: "<entity> <attribute>"."""
    return f"{entity_name} {attribute}"


def question(entity: Entity, attribute: str, rng: random.Random) -> str:
    spec = TYPES_BY_NAME[entity.type].attribute(attribute)
    return rng.choice(spec.questions).format(e=entity.name)


def answer(entity: Entity, attribute: str, value: str | None = None) -> str:
    spec = TYPES_BY_NAME[entity.type].attribute(attribute)
    return spec.answer.format(e=entity.name, v=entity.attributes[attribute] if value is None else value)


def wrong_value(entity: Entity, attribute: str, rng: random.Random) -> str:
    spec = TYPES_BY_NAME[entity.type].attribute(attribute)
    return rng.choice([v for v in spec.values if v != entity.attributes[attribute]])


def searched_answer(world: SplitWorld, entity: Entity, attribute: str, query: str,
                    value: str | None = None) -> list[Turn]:
    """[Search Query, Search Result, Sparrow]; the result is whatever the engine returns."""
    evidence = world.evidence(query) or "No results."
    return [Turn(Role.SEARCH_QUERY, query), Turn(Role.SEARCH_RESULT, evidence),
            Turn(Role.AGENT, answer(entity, attribute, value))]


def factual_reply(world: SplitWorld, entity: Entity, attribute: str, flawed: bool) -> list[Turn]:
    if flawed:
        return [Turn(Role.AGENT, answer(entity, attribute, wrong_value(entity, attribute, world.rng)))]
    return searched_answer(world, entity, attribute, search_query(entity.name, attribute))


def probe_fill(world: SplitWorld) -> dict[str, str]:
    rng = world.rng
    e, e2 = rng.sample(world.towns, 2) if len(world.towns) >= 2 else (world.towns[0],) * 2
    w = rng.choice(WORD_CHOICES)
    return {"e": e.name, "e2": e2.name, "w": w, "W": w.capitalize(), "drug": rng.choice(DRUGS),
            "company": rng.choice(COMPANIES)}


def probe_user(probe: Probe, fill: dict[str, str], rng: random.Random) -> str:
    return rng.choice(probe.users).format(**fill)


def probe_reply(probe: Probe, fill: dict[str, str], broken: bool, rng: random.Random) -> str:
    return rng.choice(probe.bad if broken else probe.good).format(**fill)


def exchange(pair: tuple[str, str]) -> list[Turn]:
    return [Turn(Role.USER, pair[0]), Turn(Role.AGENT, pair[1])]


def with_small_talk(world: SplitWorld, core: list[Turn]) -> tuple[Dialogue, int]:
    """Optionally open and close the core exchange with chit-chat (multi-turn states).

    Returns the dialogue and the index of the core's last turn.
    """
    rng, rate = world.rng, world.config.two_exchange_rate
    turns = exchange(rng.choice(OPENERS)) if rng.random() < rate else []
    turns += core
    judged = len(turns) - 1
    if rng.random() < rate:
        turns += exchange(rng.choice(CLOSERS))
    return tuple(turns), judged


def factual_sample(world: SplitWorld) -> Sample:
    entity, attribute = world.pick_fact()
    flawed = world.rng.random() < world.config.flaw_rate
    core = [Turn(Role.USER, question(entity, attribute, world.rng))]
    core += factual_reply(world, entity, attribute, flawed)
    turns, judged = with_small_talk(world, core)
    return Sample(turns, "factual", flawed, entity.name, attribute, judged=judged)


def probe_sample(world: SplitWorld, probe: Probe | None = None, broken: bool | None = None) -> Sample:
    rng = world.rng
    probe = probe or rng.choice(PROBES)
    broken = rng.random() < world.config.flaw_rate if broken is None else broken
    fill = probe_fill(world)
    core = [Turn(Role.USER, probe_user(probe, fill, rng)),
            Turn(Role.AGENT, probe_reply(probe, fill, broken, rng))]
    turns, judged = with_small_talk(world, core)
    return Sample(turns, "probe", broken, rule_id=probe.rule_id, judged=judged)


def chitchat_sample(world: SplitWorld) -> Sample:
    rng = world.rng
    turns = exchange(rng.choice(OPENERS))
    if rng.random() < 0.5:
        turns += exchange(rng.choice(CLOSERS))
    return Sample(tuple(turns), "chitchat")


def pick_kind(weights: Sequence[float], rng: random.Random) -> int:
    return rng.choices(range(len(weights)), weights=weights)[0]


def generate_dialogues(world: SplitWorld, n: int) -> list[Sample]:
    cfg = world.config
    makers = (factual_sample, chitchat_sample, probe_sample)
    weights = (cfg.factual_weight, cfg.chitchat_weight, cfg.probe_weight)
    return [makers[pick_kind(weights, world.rng)](world) for _ in range(n)]
