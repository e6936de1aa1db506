"""judge_agreement: a judge's per-rule rates against a reference judge's Wilson intervals."""
import json

import pytest

from sparrow_jax.evaluation import judge_agreement
from sparrow_jax.evaluation.metrics import wilson_interval


def _answer(i, rule=None, violated=None, supported=None, text="ok"):
    return {"id": f"p{i}", "rule_id": rule, "dialogue": [{"role": "user", "text": f"q{i}"},
                                                         {"role": "agent", "text": text}],
            "violated": violated, "supported": supported}


def _write(directory, answers):
    directory.mkdir()
    (directory / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return str(directory)


def test_rates_intervals_and_agreement(tmp_path, capsys):
    reference = [_answer(0, "a", True), _answer(1, "a", False), _answer(2, "a", False),
                 _answer(3, "b", True), _answer(4, supported=True), _answer(5, supported=False),
                 _answer(6)]
    judged = [_answer(0, "a", True), _answer(1, "a", True), _answer(2, "a", True),
              _answer(3, "b", None), _answer(4, supported=True), _answer(5, supported=True),
              _answer(6)]
    result = judge_agreement.compare(reference, judged)
    a, everything = result["rules"]  # rule b has no verdict of the judged side: left out
    assert (a["name"], a["n"], a["reference_rate"], a["judged_rate"], a["agree"]) == ("a", 3, 1 / 3, 1.0, 1)
    assert (a["low"], a["high"]) == wilson_interval(1, 3) and not a["inside"]
    assert everything["name"] == judge_agreement.ALL_PROBES and everything["n"] == 3
    assert result["supported"]["n"] == 2 and result["supported"]["agree"] == 1
    table = judge_agreement.markdown(result)
    assert "| a | 3 | 0.333 [" in table and "| NO | 1/3 |" in table

    assert judge_agreement.main([_write(tmp_path / "o", reference), _write(tmp_path / "r", judged)]) == 0
    assert "supported & correct" in capsys.readouterr().out


def test_different_answers_are_refused(tmp_path, capsys):
    reference = _write(tmp_path / "o", [_answer(0, "a", True)])
    judged = _write(tmp_path / "r", [_answer(0, "a", True, text="another reply")])
    with pytest.raises(judge_agreement.DifferentAnswers):
        judge_agreement.compare(judge_agreement.read_answers(reference), judge_agreement.read_answers(judged))
    assert judge_agreement.main([reference, judged]) == 2
    assert "answers differ" in capsys.readouterr().err
