"""README's report schemas ("Evaluation report") name every key evaluation/schema.py checks, and no other."""
import os
import re

import pytest

from sparrow_jax.evaluation import schema

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "README.md")


def schema_keys(node) -> set[str]:
    if isinstance(node, tuple):
        return set().union(*(schema_keys(n) for n in node))
    if isinstance(node, list):
        return schema_keys(node[0])
    if isinstance(node, dict):
        return {k for k in node if k != "*"} | set().union(*(schema_keys(v) for v in node.values()))
    return set()


def readme_section() -> str:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return text.split("## Evaluation report", 1)[1].split("\n## ", 1)[0]


def readme_blocks() -> list[str]:
    """The JSON-like schema blocks, each with the `interval` definition (given once, in prose)."""
    section = readme_section()
    interval = re.search(r"`interval` = (\{[^}]*\})", section).group(1)
    return [block + interval for block in re.findall(r"```\n(\{.*?)```", section, flags=re.S)]


@pytest.mark.parametrize("index,spec", [(0, schema.EVAL_REPORT_SCHEMA), (1, schema.DEMO_REPORT_SCHEMA)])
def test_readme_schema_has_the_checked_keys(index, spec):
    block = readme_blocks()[index]
    documented = set(re.findall(r'"([a-z_@0-9]+)":', block))
    documented -= {"sft", "sft@8", "rl", "rl@8", "rule_violations", "training_curves", "comparison"}
    assert documented == schema_keys(spec)
    assert '"schema_version": 2' in block if index == 0 else True
