"""The evidence-support check: is the answer's claim in the Search Result it cited?"""
from sparrow_jax.data.schemas import PromptRecord
from sparrow_jax.evaluation.evidence_support import evidence_supported, overlap
from sparrow_jax.evaluation.judge import Verdict
from sparrow_jax.evaluation.metrics import summarise, wilson_interval
from sparrow_jax.dialogue.turns import Role, Turn

EVIDENCE = "Vorlen\nSource: https://x.org/vorlen-heron\nThe symbol of the Vorlen is the grey heron."


def dialogue(answer, evidence=EVIDENCE, question="What is the symbol of the Vorlen?"):
    turns = [Turn(Role.USER, question)]
    if evidence is not None:
        turns += [Turn(Role.SEARCH_QUERY, "Vorlen symbol"), Turn(Role.SEARCH_RESULT, evidence)]
    return tuple(turns + [Turn(Role.AGENT, answer)])


def test_an_answer_is_supported_when_its_content_words_are_in_the_evidence():
    assert evidence_supported(dialogue("It is the grey heron.")) is True
    assert evidence_supported(dialogue("It is a golden eagle.")) is False
    assert evidence_supported(dialogue("Yes.")) is False            # no content words of its own
    assert evidence_supported(dialogue("The heron.", evidence=None)) is None  # nothing cited
    # The Source line is not evidence: words only in the URL do not count.
    assert evidence_supported(dialogue("See x.org, heron.")) is False  # only heron: 1 of 4
    assert overlap("See x.org, heron.", EVIDENCE) == 0.75               # the raw text has the URL


def test_only_the_search_after_the_last_user_turn_counts():
    earlier = dialogue("It is the grey heron.")
    follow_up = earlier + (Turn(Role.USER, "And its colour?"), Turn(Role.AGENT, "Grey, like the heron."))
    assert evidence_supported(follow_up) is None


def test_the_summary_counts_factual_answers_that_cite_evidence():
    prompts = [PromptRecord(f"p{i}", "eli5", ()) for i in range(3)] + [PromptRecord("r", "red_team", (),
                                                                                     rule_id="no_insults")]
    dialogues = [dialogue("It is the grey heron."), dialogue("A golden eagle."),
                 dialogue("No idea.", evidence=None), dialogue("It is the grey heron.")]
    verdicts = [Verdict(None, None, True)] * 2 + [Verdict(None, None, False), Verdict(False, None, True)]
    m = summarise(prompts, verdicts, [False] * 4, dialogues)
    assert m["evidence_support_rate"] == 0.5 and m["intervals"]["evidence_support_rate"]["n"] == 2
    assert (m["intervals"]["evidence_support_rate"]["low"],
            m["intervals"]["evidence_support_rate"]["high"]) == wilson_interval(1, 2)
