"""Record sets and file writers shared by the tests in tests/data."""
import os

from sparrow_jax.data import schemas
from sparrow_jax.dialogue.turns import dialogue

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RULES = {"no_insults": "Do not insult the user.", "general_harm": "Do not encourage harm.",
         "no_repetition": "Do not repeat yourself."}
WORDS = "the quick brown fox jumps over a lazy dog near river town country sea".split()


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n))


def make_records(n: int = 24) -> dict[str, list]:
    """Deterministic records of every kind; some dialogues are long enough to need cutting."""
    dialogues, preferences, ratings, prompts, corpus = [], [], [], [], []
    for i in range(n):
        turns = dialogue([("user", _text(i, 3 + i % 5)), ("search_query", _text(i, 2)),
                          ("search_result", _text(i + 1, 4 + 12 * (i % 4))),
                          ("agent", _text(i + 2, 2 + i % 3)), ("user", _text(i + 3, 2)),
                          ("agent", _text(i + 4, 3))][: 2 + i % 5])
        turns = turns if turns[-1].role.value == "agent" else turns + dialogue([("agent", "ok")])
        dialogues.append(schemas.DialogueRecord(f"d{i}", turns))
        context = dialogue([("user", _text(i, 4))])
        candidates = (dialogue([("search_query", _text(i, 2)), ("search_result", _text(i, 6)),
                                ("agent", _text(i + 1, 3))]),
                      dialogue([("agent", _text(i + 2, 2))]),
                      dialogue([("agent", _text(i + 3, 4))]))[: 2 + i % 2]
        k = len(candidates)
        preferences.append(schemas.PreferenceRecord(
            f"p{i}", context, candidates, chosen=i % k, has_evidence=(True,) + (False,) * (k - 1),
            supported=(i % 2 == 0,) + (None,) * (k - 1) if i % 3 else None,
            plausible=(True,) * k if i % 3 else None))
        ratings.append(schemas.RuleRatingRecord(f"r{i}", turns, list(RULES)[i % 3], broken=i % 2 == 1))
        prompts.append(schemas.PromptRecord(
            f"q{i}", ("eli5", "human", "red_team")[i % 3], dialogue([("user", _text(i, 5))]),
            rule_id="no_insults" if i % 3 == 2 else None,
            entity="Fox" if i % 3 == 0 else None, attribute="colour" if i % 3 == 0 else None))
        corpus.append(schemas.CorpusDoc(f"c{i}", f"Doc {i}", f"https://x.org/{i}", _text(i, 10 + i)))
    return {"dialogues": dialogues, "preferences": preferences, "rule_ratings": ratings,
            "prompts": prompts, "corpus": corpus}



def write_world(directory, recs, splits=("train", "test")) -> str:
    """Writes records as the JSONL files of docs/interfaces.md; returns the directory."""
    os.makedirs(directory, exist_ok=True)
    schemas.write_jsonl(os.path.join(directory, "corpus.jsonl"), recs["corpus"])
    for kind in ("dialogues", "preferences", "rule_ratings", "prompts"):
        half = len(recs[kind]) // 2
        parts = {"train": recs[kind][:half], "test": recs[kind][half:]}
        for split in splits:
            schemas.write_jsonl(os.path.join(directory, f"{kind}.{split}.jsonl"), parts[split])
    return str(directory)
