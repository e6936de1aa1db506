"""`generate(out_dir, config)`: build a toy world and write every file of it.

Files (schemas in docs/interfaces.md): corpus.jsonl, world.json, search_index/,
{dialogues,preferences,rule_ratings,prompts}.{train,test}.jsonl and lm.txt.
Train files only ever mention train entities; held-out entities appear only in the
corpus (and its index), world.json and the test files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Any, Callable, Iterable, Sequence

from sparrow_jax.data.jsonl import atomic_write
from sparrow_jax.data.toyworld.config import ToyWorldConfig
from sparrow_jax.data.toyworld.dialogues import Evidence, SplitWorld, generate_dialogues
from sparrow_jax.data.toyworld.entities import (
    Entity, corpus_documents, entity_document, make_entities, make_unfamiliar,
)
from sparrow_jax.data.toyworld.labels import preference_record, prompt_record, rule_rating_record
from sparrow_jax.data.toyworld.oracle import CHECKABLE_RULES, WORLD_FILE, Oracle
from sparrow_jax.data.toyworld.templates import ENTITY_TYPES
from sparrow_jax.dialogue.turns import DEFAULT_DISPLAY_NAMES, Turn, to_json
from sparrow_jax.search import BM25Engine, Document, write_corpus

SPLITS = ("train", "test")
INDEX_DIR = "search_index"


@dataclasses.dataclass
class World:
    config: ToyWorldConfig
    entities: list[Entity]
    docs: list[Document]
    engine: BM25Engine

    def split_entities(self, split: str) -> list[Entity]:
        return [e for e in self.entities if e.held_out == (split == "test")]

    def split_world(self, split: str, stage: str) -> SplitWorld:
        """An independent, seeded stream per (split, stage): changing one count leaves the rest."""
        rng = random.Random(f"{self.config.seed}/{split}/{stage}")
        config = self.config
        if split == "test":
            config = dataclasses.replace(config, rater_noise=config.test_rater_noise)
        return SplitWorld(self.split_entities(split), Evidence(self.engine), config, rng)

    def oracle(self) -> Oracle:
        return Oracle(self.entities)


def build_world(config: ToyWorldConfig) -> World:
    """Entities, corpus and search engine, in memory."""
    rng = random.Random(f"{config.seed}/world")
    entities = make_entities(config.n_entities, config.n_heldout, rng)
    docs = corpus_documents(entities, config.n_distractors, rng)
    if config.n_unfamiliar:
        # Their own stream, after everything else: the rest of the world is unchanged.
        extra_rng = random.Random(f"{config.seed}/unfamiliar")
        extra = make_unfamiliar(config.n_unfamiliar, [e.name for e in entities], extra_rng)
        docs += [entity_document(e, extra_rng) for e in extra]
        entities = entities + extra
    return World(config, entities, docs, BM25Engine(docs, fragment_chars=config.fragment_chars))


def render_transcript(turns: Sequence[Turn]) -> str:
    """Plain "Name: text" lines, for the language-model text file."""
    return "\n".join(f"{DEFAULT_DISPLAY_NAMES[t.role]}: {t.text}" for t in turns)


def world_json(world: World) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(world.config),
        "entity_types": {t.name: {a.name: list(a.values) for a in t.attributes} for t in ENTITY_TYPES},
        "checkable_rules": list(CHECKABLE_RULES),
        "heldout": [e.name for e in world.entities if e.held_out],
        "entities": [e.to_json() for e in world.entities],
        "corpus": "corpus.jsonl",
        "search_index": INDEX_DIR,
    }


def _write_jsonl(path: str, records: Iterable[dict]) -> None:
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _records(world: World, split: str, stage: str, n: int,
             make: Callable[[SplitWorld, str], dict]) -> list[dict]:
    sw = world.split_world(split, stage)
    return [make(sw, f"{split}-{stage}-{i:05d}") for i in range(n)]


def generate(out_dir: str | os.PathLike, config: ToyWorldConfig | None = None) -> dict[str, str]:
    """Write the whole toy world to `out_dir`; returns {name: path}. Same seed, same bytes."""
    config = config or ToyWorldConfig()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    world = build_world(config)
    oracle = world.oracle()
    paths = {"corpus": os.path.join(out_dir, "corpus.jsonl"),
             "world": os.path.join(out_dir, WORLD_FILE),
             "search_index": os.path.join(out_dir, INDEX_DIR),
             "lm": os.path.join(out_dir, "lm.txt")}
    write_corpus(paths["corpus"], world.docs)
    world.engine.save(paths["search_index"])
    with atomic_write(paths["world"]) as f:
        json.dump(world_json(world), f, indent=1, ensure_ascii=False)
        f.write("\n")

    train_dialogues = None
    for split in SPLITS:
        scale = (lambda n: n) if split == "train" else config.n_test
        samples = generate_dialogues(world.split_world(split, "dialogues"), scale(config.n_dialogues))
        if split == "train":
            train_dialogues = samples
        tables = {
            "dialogues": [{"id": f"{split}-dialogues-{i:05d}", "turns": to_json(s.turns)}
                          for i, s in enumerate(samples)],
            "preferences": _records(world, split, "preferences", scale(config.n_preferences),
                                    lambda sw, rid: preference_record(sw, oracle, rid)),
            "rule_ratings": _records(world, split, "rule_ratings", scale(config.n_rule_ratings),
                                     lambda sw, rid: rule_rating_record(sw, oracle, rid)),
            "prompts": _records(world, split, "prompts", scale(config.n_prompts), prompt_record),
        }
        for name, records in tables.items():
            key = f"{name}.{split}"
            paths[key] = os.path.join(out_dir, f"{key}.jsonl")
            _write_jsonl(paths[key], records)

    # Held-out and unfamiliar entities' documents stay out of the LM text.
    held_out_ids = {f"{e.type}-{e.name.lower()}" for e in world.entities
                    if e.held_out or e.unfamiliar}
    with atomic_write(paths["lm"]) as f:
        for doc in world.docs:
            if doc.id not in held_out_ids:
                f.write(f"{doc.title}\n{doc.text}\n\n")
        for sample in train_dialogues:
            f.write(render_transcript(sample.turns) + "\n\n")
    return paths
