"""Rated data: preference comparisons, rule ratings and RL prompts.

Labels come from the oracle (the world's "raters") with `rater_noise` flipping a share of
them; the oracle is only used here to label data, never as a reward.

Preferences: a factual context gets k/2 candidates that search (right query and right
answer, a misread value, another entity's document read as the answer, or another entity's
document with the right answer given anyway, from memory: correct but unsupported) and k/2
that do not (right, wrong, or right but rude); a probe context gets k replies without
evidence, some breaking the rule.
`supported` is filled for evidence candidates only; `plausible` = no checkable rule broken.
Rule ratings: mostly the probe's own rule (`targeted_rating_rate`), otherwise another rule
on any kind of dialogue ("other rule" pairs, usually kept).
"""
from __future__ import annotations

import random
from typing import Any

from sparrow_jax.data.toyworld.dialogues import (
    SplitWorld, answer, chitchat_sample, exchange, factual_sample, pick_kind, probe_fill, probe_reply,
    probe_sample, probe_user, question, search_query, searched_answer, wrong_value,
)
from sparrow_jax.data.toyworld.oracle import CHECKABLE_RULES, Oracle
from sparrow_jax.data.toyworld.templates import OPENERS, PROBES, RUDE_ANSWER_PREFIX
from sparrow_jax.dialogue.turns import Role, Turn, to_json

# Weights of the candidate kinds offered to raters (flawed searches: ToyWorldConfig).
FLAWED_NO_EVIDENCE_KINDS = {"wrong": 0.7, "rude": 0.3}


def _weighted(table: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


def rater_choice(scores: list[int], noise: float, rng: random.Random) -> int:
    """The best candidate (ties at random); with probability `noise`, another one at random."""
    best = max(scores)
    chosen = rng.choice([i for i, s in enumerate(scores) if s == best])
    if rng.random() < noise and len(scores) > 1:
        chosen = rng.choice([i for i in range(len(scores)) if i != chosen])
    return chosen


def flawed_search_kinds(config, right_search: bool) -> dict[str, float]:
    """Weights of the flawed search candidates: misread, wrong_entity, unsupported.

    "unsupported" (another entity's document, the right answer anyway) is correct,
    quality 2, so it is only offered beside a right search (quality 3): without one,
    the best is the one correct no-search answer and it would tie.
    """
    kinds = {"misread": config.misread_weight, "wrong_entity": config.wrong_entity_weight,
             "unsupported": config.unsupported_weight if right_search else 0.0}
    if not any(kinds.values()):
        kinds["misread"] = 1.0
    return kinds


def factual_candidates(world: SplitWorld, entity, attribute) -> tuple[list[list[Turn]], list[bool]]:
    """K candidates, half with a search, drawn so that exactly one is the best.

    A tie for best would make the rater's choice a coin flip that no reward model
    can predict, so: with probability `right_search_rate` one search candidate reads
    the right value (quality 3) and the other searches go wrong (misread or another
    entity's value: quality 1; or the right value despite another entity's document:
    correct but unsupported, quality 2); without one, exactly one no-search
    candidate is correct (quality 2) and the rest are wrong or rude.
    """
    rng, k = world.rng, world.config.k_candidates
    candidates, has_evidence = [], []
    right_search = rng.random() < world.config.right_search_rate
    flawed = flawed_search_kinds(world.config, right_search)
    for i in range(k // 2):
        kind = "right" if (right_search and i == 0) else _weighted(flawed, rng)
        query, value = search_query(entity.name, attribute), None
        if kind == "misread":
            value = wrong_value(entity, attribute, rng)
        elif kind in ("wrong_entity", "unsupported"):
            others = [e for e in world.entities if e.type == entity.type and e.name != entity.name]
            other = rng.choice(others) if others else None
            if other is not None and other.attributes[attribute] != entity.attributes[attribute]:
                query = search_query(other.name, attribute)
                value = other.attributes[attribute] if kind == "wrong_entity" else None
            else:
                value = wrong_value(entity, attribute, rng)
        candidates.append(searched_answer(world, entity, attribute, query, value))
        has_evidence.append(True)
    for i in range(k - k // 2):
        correct_slot = i == 0 and (not right_search or rng.random() < 0.5)
        kind = "correct" if correct_slot else _weighted(FLAWED_NO_EVIDENCE_KINDS, rng)
        text = answer(entity, attribute, None if kind != "wrong" else wrong_value(entity, attribute, rng))
        if kind == "rude":
            text = RUDE_ANSWER_PREFIX + text
        candidates.append([Turn(Role.AGENT, text)])
        has_evidence.append(False)
    return candidates, has_evidence


def probe_candidates(world: SplitWorld, probe, fill) -> list[list[Turn]]:
    """One compliant reply and K - 1 violating ones (a unique best, as above)."""
    k = world.config.k_candidates
    return [[Turn(Role.AGENT, probe_reply(probe, fill, i > 0, world.rng))] for i in range(k)]


def preference_record(world: SplitWorld, oracle: Oracle, rid: str) -> dict[str, Any]:
    rng = world.rng
    context = exchange(rng.choice(OPENERS)) if rng.random() < world.config.two_exchange_rate else []
    if rng.random() < world.config.probe_weight / (world.config.probe_weight + world.config.factual_weight):
        probe, fill = rng.choice(PROBES), probe_fill(world)
        context.append(Turn(Role.USER, probe_user(probe, fill, rng)))
        candidates = probe_candidates(world, probe, fill)
        has_evidence = [False] * len(candidates)
        entity = attribute = None
    else:
        entity, attribute = world.pick_fact()
        context.append(Turn(Role.USER, question(entity, attribute, rng)))
        candidates, has_evidence = factual_candidates(world, entity, attribute)
    order = list(range(len(candidates)))
    rng.shuffle(order)
    candidates = [candidates[i] for i in order]
    has_evidence = [has_evidence[i] for i in order]
    full = [context + c for c in candidates]
    name = entity.name if entity else None
    scores = [oracle.quality(d, name, attribute) for d in full]
    plausible = [not oracle.violated_rules(d) for d in full]
    supported = [oracle.supported_and_correct(d, name, attribute) if ev and entity else None
                 for d, ev in zip(full, has_evidence)]
    return {"id": rid, "context": to_json(context), "candidates": [to_json(c) for c in candidates],
            "chosen": rater_choice(scores, world.config.rater_noise, rng),
            "has_evidence": has_evidence, "supported": supported, "plausible": plausible}


def rule_rating_record(world: SplitWorld, oracle: Oracle, rid: str) -> dict[str, Any]:
    rng, cfg = world.rng, world.config
    if rng.random() < cfg.targeted_rating_rate:
        sample = probe_sample(world, broken=rng.random() < cfg.broken_reply_rate)
        rule_id = sample.rule_id
    else:
        sample = [factual_sample, chitchat_sample, probe_sample][rng.randrange(3)](world)
        rule_id = rng.choice([r for r in CHECKABLE_RULES if r != sample.rule_id])
    turns = sample.judged_turns
    broken = oracle.violates(rule_id, turns)
    if rng.random() < cfg.rater_noise:
        broken = not broken
    return {"id": rid, "dialogue": to_json(turns), "rule_id": rule_id, "broken": broken}


def prompt_record(world: SplitWorld, rid: str) -> dict[str, Any]:
    rng, cfg = world.rng, world.config
    source = ("eli5", "human", "red_team")[
        pick_kind((cfg.eli5_weight, cfg.human_weight, cfg.red_team_weight), rng)]
    record: dict[str, Any] = {"id": rid, "source": source}
    if source == "eli5":
        entity, attribute = world.pick_fact()
        record["context"] = [Turn(Role.USER, question(entity, attribute, rng)).to_json()]
        record["entity"], record["attribute"] = entity.name, attribute
    elif source == "human":
        record["context"] = [Turn(Role.USER, rng.choice(OPENERS)[0]).to_json()]
    else:
        probe = rng.choice(PROBES)
        record["context"] = [Turn(Role.USER, probe_user(probe, probe_fill(world), rng)).to_json()]
        record["rule_id"] = probe.rule_id
    return record
