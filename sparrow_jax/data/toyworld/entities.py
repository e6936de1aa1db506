"""Entities of the toy world: syllable names, attribute values, the train/held-out split,
and one encyclopedia-style corpus document per entity (plus distractor documents)."""
from __future__ import annotations

import dataclasses
import random
from typing import Iterable

from sparrow_jax.data.toyworld.templates import (
    DISTRACTORS, ENTITY_TYPES, TYPES_BY_NAME, all_template_words,
)
from sparrow_jax.search import Document

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
          "gr", "kr", "th", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ei")
CODAS = ("", "", "l", "n", "r", "s", "th", "rn", "ld")
URL_PREFIX = "https://toywiki.org/"


@dataclasses.dataclass(frozen=True)
class Entity:
    name: str
    type: str
    attributes: dict[str, str]  # attribute name -> value
    held_out: bool
    # Train-split entities whose documents are left out of the LM text: the models
    # meet them only in a few dialogues and comparisons, with the search result.
    unfamiliar: bool = False

    def to_json(self) -> dict:
        out = {"name": self.name, "type": self.type, "attributes": dict(self.attributes),
               "held_out": self.held_out}
        if self.unfamiliar:
            out["unfamiliar"] = True
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Entity":
        return cls(obj["name"], obj["type"], dict(obj["attributes"]), bool(obj["held_out"]),
                   bool(obj.get("unfamiliar", False)))


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def make_names(n: int, rng: random.Random) -> list[str]:
    """`n` distinct capitalised two-syllable names that are not template words."""
    reserved = all_template_words()
    names: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(names) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct names")
        name = _syllable(rng) + _syllable(rng)
        if len(name) < 4 or len(name) > 9 or name in seen or name in reserved:
            continue
        seen.add(name)
        names.append(name.capitalize())
    return names


def make_entities(n_entities: int, n_heldout: int, rng: random.Random) -> list[Entity]:
    """Entities spread evenly over the types; held-out ones spread evenly too."""
    names = make_names(n_entities, rng)
    n_types = len(ENTITY_TYPES)
    entities = []
    for i, name in enumerate(names):
        etype = ENTITY_TYPES[i % n_types]
        attrs = {spec.name: rng.choice(spec.values) for spec in etype.attributes}
        entities.append(Entity(name, etype.name, attrs, held_out=False))
    # Interleaved types, so the last n_heldout cover every type about equally.
    held = set(range(n_entities - n_heldout, n_entities))
    return [dataclasses.replace(e, held_out=i in held) for i, e in enumerate(entities)]


def make_unfamiliar(n: int, taken: Iterable[str], rng: random.Random) -> list[Entity]:
    """`n` more train entities (types interleaved), named unlike any in `taken`."""
    taken = {name.lower() for name in taken}
    names = [name for name in make_names(n + len(taken), rng) if name.lower() not in taken][:n]
    n_types = len(ENTITY_TYPES)
    out = []
    for i, name in enumerate(names):
        etype = ENTITY_TYPES[i % n_types]
        attrs = {spec.name: rng.choice(spec.values) for spec in etype.attributes}
        out.append(Entity(name, etype.name, attrs, held_out=False, unfamiliar=True))
    return out


def entity_document(entity: Entity, rng: random.Random) -> Document:
    """One short article: the fact sentences and two fillers, in a random order."""
    etype = TYPES_BY_NAME[entity.type]
    sentences = [spec.doc.format(e=entity.name, v=entity.attributes[spec.name])
                 for spec in etype.attributes]
    sentences += [f.format(e=entity.name) for f in rng.sample(etype.fillers, 2)]
    rng.shuffle(sentences)
    return Document(id=f"{entity.type}-{entity.name.lower()}", title=entity.name,
                    url=URL_PREFIX + entity.name, text=" ".join(sentences))


def distractor_documents(n: int, rng: random.Random) -> list[Document]:
    pool = [(title.format(v=v), text.format(v=v)) for title, text, values in DISTRACTORS
            for v in values]
    chosen = rng.sample(pool, min(n, len(pool)))
    return [Document(id=f"topic-{title.lower().replace(' ', '-')}", title=title,
                     url=URL_PREFIX + title.replace(" ", "_"), text=text)
            for title, text in chosen]


def corpus_documents(entities: Iterable[Entity], n_distractors: int, rng: random.Random
                     ) -> list[Document]:
    docs = [entity_document(e, rng) for e in entities]
    return docs + distractor_documents(n_distractors, rng)
