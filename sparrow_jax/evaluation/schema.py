"""The report schemas (README.md, "Evaluation report") as data, and a checker for them.

A schema is a type (`float`, `int`, `str`, `bool`), a tuple of alternatives (`(float, None)` = a float or
null), a dict of required keys (`{"*": s}` = any keys, each value of schema s), or a one-element list
(`[s]` = a list of s). Types are strict: an int is not a float, a bool is not an int.
"""
from __future__ import annotations

from typing import Any

RATE = (float, None)  # a share in [0, 1]; null when no prompt of that kind was judged
# A rate's 95% Wilson score interval and the number of prompts it is over (low/high null when n is 0).
INTERVAL = {"low": RATE, "high": RATE, "n": int}
RATE_KEYS = ("rule_violation_rate", "supported_and_correct_rate", "search_rate", "search_rate_all",
             "malformed_rate", "pref_win_rate", "evidence_support_rate")

METRICS_SCHEMA = {
    "rule_violation_rate": RATE,
    "rule_probes": int,
    "per_rule": {"*": {"rate": float, "violations": int, "probes": int, "low": float, "high": float}},
    "supported_and_correct_rate": RATE,
    "factual_prompts": int,
    "search_rate": RATE,
    "search_rate_all": RATE,
    "malformed_rate": RATE,
    "pref_win_rate": RATE,
    "evidence_support_rate": RATE,
    "intervals": {key: INTERVAL for key in RATE_KEYS},
}

EVAL_REPORT_SCHEMA = {
    "schema_version": int,
    "judge": str,
    "interval_method": str,  # "wilson_95": every interval is a 95% Wilson score interval
    "model": {"name": str, "workdir": str, "stage": str, "step": int, "n_best": int, "evidence": str,
              "rerank_formula": (str, None), "pref_rm": (str, None), "rule_rm": (str, None)},
    "data": {"dir": str, "split": str, "prompts": int, "by_source": {"*": int}},
    "sampling": {"max_prompt_len": int, "max_new_tokens": int, "temperature": float, "top_p": float,
                 "top_k": int, "seed": int, "batch_size": int},
    "metrics": METRICS_SCHEMA,
    "baseline": (None, {"name": str, "workdir": str, "step": int, "metrics": METRICS_SCHEMA}),
    "timings": {"wall_seconds": float, "sampling_seconds": float, "judging_seconds": float,
                "prompts_per_second": float},
    "plots": {"*": (str, None)},
    "notes": [str],
}

DEMO_RATE_KEYS = ("rule_violation_rate", "supported_and_correct_rate", "search_rate",
                  "pref_win_rate_vs_sft")
DEMO_MODEL_SCHEMA = {**{key: RATE for key in DEMO_RATE_KEYS},
                     "intervals": {key: INTERVAL for key in DEMO_RATE_KEYS}}

DEMO_REPORT_SCHEMA = {
    "judge": str,
    "interval_method": str,
    "wall_seconds": float,
    "reward_models": {"pref_rm_accuracy": (float, None), "rule_rm_auc": (float, None)},
    "models": {"*": DEMO_MODEL_SCHEMA},
}

JUDGE_NAMES = ("oracle", "reward_models")


def _type_name(schema) -> str:
    if schema is None:
        return "null"
    if isinstance(schema, type):
        return schema.__name__
    if isinstance(schema, tuple):
        return " or ".join(_type_name(s) for s in schema)
    return "object" if isinstance(schema, dict) else "list"


def _matches_type(value: Any, schema: type) -> bool:
    if schema is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, schema)


def schema_errors(value: Any, schema: Any, path: str = "report") -> list[str]:
    """Every place `value` departs from `schema`, as "path: expected X, got Y" ([] = valid)."""
    if isinstance(schema, tuple):
        options = [schema_errors(value, s, path) for s in schema]
        if any(not errs for errs in options):
            return []
        shallow = [s for s in schema if isinstance(s, dict) and isinstance(value, dict)]
        if shallow:  # report inside the object it is meant to be
            return schema_errors(value, shallow[0], path)
        return [f"{path}: expected {_type_name(schema)}, got {type(value).__name__}"]
    if schema is None:
        return [] if value is None else [f"{path}: expected null, got {type(value).__name__}"]
    if isinstance(schema, type):
        ok = _matches_type(value, schema)
        return [] if ok else [f"{path}: expected {schema.__name__}, got {type(value).__name__}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in schema_errors(item, schema[0], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {type(value).__name__}"]
    if "*" in schema:
        return [e for key, item in value.items()
                for e in ([f"{path}: key {key!r} is not a string"] if not isinstance(key, str) else [])
                + schema_errors(item, schema["*"], f"{path}.{key}")]
    errors = [f"{path}: missing key {key!r}" for key in schema if key not in value]
    errors += [f"{path}: unexpected key {key!r}" for key in value if key not in schema]
    for key in schema:
        if key in value:
            errors += schema_errors(value[key], schema[key], f"{path}.{key}")
    return errors


def _check_rates(value: Any, path: str) -> list[str]:
    """Shares (keys `rate`, `low`, `high`, `*_rate*`, `*_accuracy`, `*_auc`) lie in [0, 1], and an
    interval (`low`, `high` beside a rate or an `n`) holds its rate: low <= rate <= high."""
    if not isinstance(value, dict):
        return []
    errors = [e for k, v in value.items() for e in _check_rates(v, f"{path}.{k}")]
    errors += [f"{path}: {k}={v} is not in [0, 1]" for k, v in value.items()
               if isinstance(v, float) and (k in ("rate", "low", "high") or "_rate" in k
                                            or k.endswith(("_accuracy", "_auc")))
               and not 0.0 <= v <= 1.0]
    rate = value.get("rate")
    low, high = value.get("low"), value.get("high")
    if isinstance(low, float) and isinstance(high, float) and not (
            low <= high and (not isinstance(rate, float) or low - 1e-12 <= rate <= high + 1e-12)):
        errors.append(f"{path}: interval [{low}, {high}] does not hold its rate {rate}")
    intervals = value.get("intervals")
    if isinstance(intervals, dict):
        for key, interval in intervals.items():
            rate = value.get(key)
            if not isinstance(interval, dict):
                continue
            lo, hi, n = interval.get("low"), interval.get("high"), interval.get("n")
            # n = 0: no interval (no prompt judged, or a value fixed by definition such as the
            # baseline's win rate against itself); n > 0: a rate and its interval.
            if (n == 0) != (lo is None) or (lo is None) != (hi is None) or (
                    rate is None and n != 0):
                errors.append(f"{path}.intervals.{key}: rate {rate} with interval [{lo}, {hi}] "
                              f"over n={n}")
            elif isinstance(rate, float) and isinstance(lo, float) and isinstance(hi, float) and not (
                    lo - 1e-12 <= rate <= hi + 1e-12):
                errors.append(f"{path}.intervals.{key}: [{lo}, {hi}] does not hold the rate {rate}")
    return errors


def validate(report: dict, schema: dict) -> None:
    """Raise ValueError listing every departure from `schema` (types, keys, rates in [0, 1], judge)."""
    errors = schema_errors(report, schema)
    if not errors:
        errors = _check_rates(report, "report")
        if report.get("judge") not in JUDGE_NAMES:
            errors.append(f"report.judge: expected one of {JUDGE_NAMES}, got {report.get('judge')!r}")
    if errors:
        raise ValueError("report does not match its schema:\n  " + "\n  ".join(errors))
