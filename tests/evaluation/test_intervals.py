"""95% Wilson intervals and counts for every rate of the evaluation reports (no model needed)."""
import json
import math
import types

import numpy as np
import pytest

from sparrow_jax.data.schemas import PromptRecord
from sparrow_jax.evaluation import schema
from sparrow_jax.evaluation.demo_report import demo_report, write_demo_report
from sparrow_jax.evaluation.evaluator import EvalResult, EvalSettings
from sparrow_jax.evaluation.judge import Verdict
from sparrow_jax.evaluation.metrics import Z_95, rate_interval, summarise, wilson_interval
from sparrow_jax.evaluation.plots import error_bars
from sparrow_jax.evaluation.report import write_eval_report


def test_wilson_interval_known_values_and_edges():
    np.testing.assert_allclose(wilson_interval(1, 4), (0.0456, 0.6994), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(12, 37), (0.1963, 0.4854), atol=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize("successes,n", [(1, 4), (3, 7), (0.5, 3), (30, 60), (59, 60)])
def test_wilson_bounds_are_where_the_score_test_is_exactly_at_z(successes, n):
    """The interval is {p0 : |p_hat - p0| <= z sqrt(p0 (1 - p0) / n)}: each bound solves it with equality."""
    p_hat = successes / n
    low, high = wilson_interval(successes, n)
    assert low < p_hat < high
    for p0 in (low, high):
        assert abs(p_hat - p0) == pytest.approx(Z_95 * math.sqrt(p0 * (1 - p0) / n), rel=1e-9)


def prompt(i, source, rule_id=None):
    return PromptRecord(id=f"p{i}", source=source, context=(), rule_id=rule_id)


# 4 probes of rule a (1 broken), 2 of rule b (2 broken), 3 factual (2 supported, 3 searched), 1 chit-chat.
PROMPTS = [prompt(0, "red_team", "a"), prompt(1, "red_team", "a"), prompt(2, "red_team", "a"),
           prompt(3, "red_team", "a"), prompt(4, "red_team", "b"), prompt(5, "red_team", "b"),
           prompt(6, "eli5"), prompt(7, "eli5"), prompt(8, "eli5"), prompt(9, "human")]
VERDICTS = [Verdict(True, None, False), Verdict(False, None, False), Verdict(False, None, False),
            Verdict(False, None, True), Verdict(True, None, False), Verdict(True, None, False),
            Verdict(None, True, True), Verdict(None, True, True), Verdict(None, False, True),
            Verdict(None, None, False)]
MALFORMED = [False] * 9 + [True]


def test_every_rate_of_the_summary_has_its_count_and_interval():
    m = summarise(PROMPTS, VERDICTS, MALFORMED)
    counts = {key: v["n"] for key, v in m["intervals"].items()}
    assert counts == {"rule_violation_rate": 6, "supported_and_correct_rate": 3, "search_rate": 3,
                      "search_rate_all": 10, "malformed_rate": 10, "evidence_support_rate": 0}
    assert m["evidence_support_rate"] is None  # no dialogues given: nothing checked
    assert m["rule_violation_rate"] == 0.5
    assert (m["intervals"]["rule_violation_rate"]["low"],
            m["intervals"]["rule_violation_rate"]["high"]) == wilson_interval(3, 6)
    assert m["intervals"]["search_rate"]["high"] == 1.0  # 3 of 3 searched
    a, b = m["per_rule"]["a"], m["per_rule"]["b"]
    assert (a["violations"], a["probes"], a["rate"]) == (1, 4, 0.25)
    assert (a["low"], a["high"]) == wilson_interval(1, 4)
    assert (b["low"], b["high"]) == wilson_interval(2, 2) and b["high"] == 1.0


def fake_result(name, metrics, workdir, baseline=None):
    rl = types.SimpleNamespace(max_prompt_len=64, max_new_tokens=16, temperature=1.0, top_p=1.0,
                               top_k=0)
    agent = types.SimpleNamespace(workdir=str(workdir), stage="sft", step=3, pref_rm_source=None,
                                  rule_rm_source=None, data_dir="data", cfg=types.SimpleNamespace(rl=rl),
                                  has_pref_rm=False)
    timings = {"wall_seconds": 1.0, "sampling_seconds": 0.5, "judging_seconds": 0.5,
               "prompts_per_second": 10.0}
    return EvalResult(name, agent, EvalSettings(), "oracle", (), (), metrics, timings, baseline)


@pytest.fixture
def results(tmp_path):
    sft = summarise(PROMPTS, VERDICTS, MALFORMED)
    sft["pref_win_rate"], sft["intervals"]["pref_win_rate"] = None, rate_interval(None, 0)
    rl = summarise(PROMPTS, VERDICTS[:6] + [Verdict(None, True, True)] * 3 + VERDICTS[9:], MALFORMED)
    rl["pref_win_rate"], rl["intervals"]["pref_win_rate"] = 0.75, rate_interval(0.75, 10)
    return {"sft": fake_result("sft", sft, tmp_path), "rl": fake_result("rl", rl, tmp_path, "sft")}


def test_eval_report_json_md_and_plots_carry_the_intervals(results, tmp_path):
    out = tmp_path / "eval"
    report = write_eval_report(results["rl"], str(out), baseline=results["sft"])
    loaded = json.loads((out / "report.json").read_text())
    schema.validate(loaded, schema.EVAL_REPORT_SCHEMA)
    assert loaded["interval_method"] == "wilson_95" and loaded == report
    win = loaded["metrics"]["intervals"]["pref_win_rate"]
    assert win["n"] == 10 and (win["low"], win["high"]) == pytest.approx(wilson_interval(7.5, 10))
    assert loaded["baseline"]["metrics"]["intervals"]["pref_win_rate"] == {"low": None, "high": None,
                                                                           "n": 0}
    md = (out / "report.md").read_text()
    low, high = wilson_interval(3, 6)
    assert f"| rule_violation_rate | 0.500 [{low:.3f}, {high:.3f}] n=6 |" in md
    assert "| a | 0.250 | [0.046, 0.699] | 1 | 4 |" in md
    assert "95% Wilson score interval" in md
    assert (out / "rule_violations.png").stat().st_size > 0 and (out / "comparison.png").exists()


def test_demo_report_has_intervals_for_every_rate(results, tmp_path):
    report = demo_report(results, wall_seconds=3.0, reward_models={})
    schema.validate(json.loads(json.dumps(report)), schema.DEMO_REPORT_SCHEMA)
    rl = report["models"]["rl"]["intervals"]
    assert rl["pref_win_rate_vs_sft"]["n"] == 10 and rl["supported_and_correct_rate"]["n"] == 3
    # The baseline's 0.5 against itself is a definition, not a measurement: no interval.
    assert report["models"]["sft"]["intervals"]["pref_win_rate_vs_sft"] == {"low": None, "high": None,
                                                                           "n": 0}
    files = write_demo_report(report, str(tmp_path), results=results)
    assert files["rule_violations"] == "rule_violations.png"
    assert "n=10" in (tmp_path / "report.md").read_text()


def test_schema_rejects_an_interval_that_does_not_hold_its_rate(results, tmp_path):
    report = write_eval_report(results["rl"], str(tmp_path))
    bad = json.loads(json.dumps(report))
    bad["metrics"]["intervals"]["rule_violation_rate"]["low"] = 0.6  # rate 0.5
    with pytest.raises(ValueError, match="does not hold the rate"):
        schema.validate(bad, schema.EVAL_REPORT_SCHEMA)
    bad = json.loads(json.dumps(report))
    bad["metrics"]["intervals"]["search_rate"]["n"] = 0  # an interval over no prompts
    with pytest.raises(ValueError, match="intervals.search_rate"):
        schema.validate(bad, schema.EVAL_REPORT_SCHEMA)
    bad = json.loads(json.dumps(report))
    bad["metrics"]["per_rule"]["a"]["high"] = 0.2  # rate 0.25
    with pytest.raises(ValueError, match="does not hold its rate"):
        schema.validate(bad, schema.EVAL_REPORT_SCHEMA)
    bad = json.loads(json.dumps(report))
    del bad["metrics"]["intervals"]["malformed_rate"]
    with pytest.raises(ValueError, match="malformed_rate"):
        schema.validate(bad, schema.EVAL_REPORT_SCHEMA)


def test_error_bars_are_distances_to_the_bounds():
    bars = error_bars([0.25, None, 0.5], [{"low": 0.05, "high": 0.7}, None, {"low": None, "high": None}])
    np.testing.assert_allclose(bars, [[0.2, 0.0, 0.0], [0.45, 0.0, 0.0]])
