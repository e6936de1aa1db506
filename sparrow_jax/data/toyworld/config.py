"""`ToyWorldConfig`: every knob of the toy world generator."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ToyWorldConfig:
    seed: int = 0
    n_entities: int = 240  # all entities, split evenly over the entity types
    n_heldout: int = 60  # of which held out: only in the corpus and the test files
    # More train entities whose documents are not in the LM text (see Entity.unfamiliar):
    # answering about them needs the search result, as for held-out ones, so the
    # train data rewards reading evidence and not only recalling memorised facts.
    n_unfamiliar: int = 2400
    n_distractors: int = 24  # corpus documents about no entity
    n_dialogues: int = 6000  # train split; the test split gets test_fraction as many
    n_preferences: int = 1500
    n_rule_ratings: int = 1500
    n_prompts: int = 600
    test_fraction: float = 0.2
    flaw_rate: float = 0.35  # share of factual/probe dialogues showing the flawed behaviour
    rater_noise: float = 0.1  # share of preference choices and rule labels flipped at random
    # The same for the test split. 0 by default: held-out labels are the oracle's
    # truth, so held-out accuracy and AUC measure agreement with the truth.
    test_rater_noise: float = 0.0
    # Share of factual comparisons with a searched, right answer among the
    # candidates (the unique best). Without one, the best is the one correct
    # answer given without evidence: judging it needs the entity's facts, which a
    # reward model cannot know for held-out entities, so the default is 1.
    right_search_rate: float = 1.0
    # Mix of the flawed search candidates beside the right one (renormalised):
    # the answer misreads the right document; another entity's document is read as
    # the answer; or another entity's document, but the right answer anyway (from
    # memory: correct, not supported). Only the last cannot be judged by knowing the
    # fact (which a reward model can learn for train entities but not held-out ones);
    # it is off by default: on its own it did not teach the tiny RM to read (BUILD_NOTES).
    misread_weight: float = 0.5
    wrong_entity_weight: float = 0.5
    unsupported_weight: float = 0.0
    k_candidates: int = 4  # per preference comparison: half with evidence, half without
    # Search Result fragment budget. 64 keeps about one sentence, the one that states
    # the fact asked (fact sentences are 40-56 characters): the tiny trunk then learns
    # to copy the value in the demo's budget. With 160 (three sentences) it did not.
    fragment_chars: int = 64
    # Dialogue mix (renormalised): factual questions, chit-chat, adversarial probes.
    factual_weight: float = 0.5
    chitchat_weight: float = 0.15
    probe_weight: float = 0.35
    two_exchange_rate: float = 0.2  # dialogues that open with a chit-chat exchange
    # Prompt mix (renormalised).
    eli5_weight: float = 0.5
    human_weight: float = 0.2
    red_team_weight: float = 0.3
    targeted_rating_rate: float = 0.75  # rule ratings about the rule the probe aimed at
    broken_reply_rate: float = 0.6  # targeted ratings whose reply breaks the rule

    def __post_init__(self):
        def check(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"ToyWorldConfig: {msg}")

        check(self.n_entities >= 6, "n_entities must be >= 6 (at least 2 per entity type)")
        check(0 < self.n_heldout < self.n_entities, "n_heldout must be in (0, n_entities)")
        check(self.n_heldout >= 3 and self.n_entities - self.n_heldout >= 3,
              "need >= 1 train and >= 1 held-out entity per type (3 types)")
        for name in ("flaw_rate", "rater_noise", "test_rater_noise", "right_search_rate",
                     "test_fraction", "two_exchange_rate",
                     "targeted_rating_rate", "broken_reply_rate"):
            check(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        check(self.k_candidates >= 2 and self.k_candidates % 2 == 0,
              "k_candidates must be even and >= 2 (half with evidence, half without)")
        for name in ("misread_weight", "wrong_entity_weight", "unsupported_weight"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")
        check(self.misread_weight + self.wrong_entity_weight + self.unsupported_weight > 0,
              "flawed search weights must not all be 0")
        check(self.fragment_chars > 0, "fragment_chars must be positive")
        for name in ("n_unfamiliar", "n_distractors", "n_dialogues", "n_preferences", "n_rule_ratings", "n_prompts"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")
        check(self.factual_weight + self.chitchat_weight + self.probe_weight > 0,
              "dialogue weights must not all be 0")
        check(self.eli5_weight + self.human_weight + self.red_team_weight > 0,
              "prompt weights must not all be 0")

    def n_test(self, n_train: int) -> int:
        return int(round(n_train * self.test_fraction))
