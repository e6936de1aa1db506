"""Where the rating app's agent turns come from: live samples of a loaded agent (`AgentSource`), or a
scripted stand-in for tests and load benchmarks (`ScriptedSource`).

A source answers two calls, both returning turns as JSON dicts ({"role", "text"}):
  compare(context, n, seed) -> (n candidates, has_evidence per candidate): the first n // 2 sampled with
      evidence mode "always" (Search Query, Search Result, Sparrow), the rest with "never" (Sparrow);
  reply(dialogue, seed) -> the agent's next turns (evidence mode "free": the policy chooses).
and carries `checkpoint` ("<workdir>@<step>" label), `step`, `sampling` (the settings, stored with every
judgement) and `contexts` (prompt dialogues the comparisons start from).

Sampling goes through `sparrow_jax.rl.rollout.rollout` with one Environment per evidence mode sharing one
search engine, as `sparrow chat` does (`make_environment`). JAX calls are serialised by a lock: the web
server runs requests on several threads.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import threading
from typing import Sequence

from sparrow_jax.dialogue.turns import Role, Turn

# Used when the data directory holds no prompts file.
FALLBACK_CONTEXTS = ([{"role": "user", "text": "Hello! What can you tell me about yourself?"}],)


def to_turns(turns_json: Sequence[dict]) -> tuple[Turn, ...]:
    return tuple(Turn(Role(t["role"]), t["text"]) for t in turns_json)


def to_json(turns: Sequence[Turn]) -> list[dict]:
    return [{"role": t.role.value, "text": t.text} for t in turns]


def load_contexts(data_dir: str, limit: int = 1000) -> tuple[list[dict], ...]:
    """Prompt contexts of `<data_dir>/prompts.*.jsonl` (test split first), at most `limit`."""
    paths = sorted(glob.glob(os.path.join(data_dir or "", "prompts.*.jsonl")),
                   key=lambda p: (".test." not in p, p))
    contexts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip() and len(contexts) < limit:
                    contexts.append(json.loads(line)["context"])
    return tuple(contexts) or FALLBACK_CONTEXTS


def _settings(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class AgentSource:
    """Live samples of a loaded `Agent` (evaluation/agent.py `load_agent`)."""

    def __init__(self, agent, contexts: Sequence[list[dict]] | None = None):
        import dataclasses as dc
        from sparrow_jax.evaluation.evaluator import make_environment
        self.agent = agent
        self.envs = {"free": make_environment(agent, "free")}
        for mode in ("always", "never"):
            self.envs[mode] = dc.replace(self.envs["free"],
                                         config=dc.replace(self.envs["free"].config, evidence=mode))
        self.checkpoint, self.step = agent.label, int(agent.step)
        self.sampling = {"rollout": _settings(self.envs["free"].config), "stage": agent.stage}
        self.contexts = tuple(contexts) if contexts else load_contexts(agent.data_dir)
        self._lock = threading.Lock()

    def _step(self, mode: str, contexts: list, seed: int) -> list[list[dict]]:
        import jax
        from sparrow_jax.rl.rollout import rollout
        with self._lock:
            batch = rollout(self.envs[mode], self.agent.params, contexts, jax.random.PRNGKey(seed))
        return [to_json(r.new_turns) for r in batch.rollouts]

    def compare(self, context: list[dict], n: int, seed: int) -> tuple[list[list[dict]], list[bool]]:
        with_evidence = n // 2
        turns = to_turns(context)
        out = []
        if with_evidence:
            out += self._step("always", [turns] * with_evidence, seed)
        if n - with_evidence:
            out += self._step("never", [turns] * (n - with_evidence), seed + 1)
        return out, [any(t["role"] == "search_result" for t in c) for c in out]

    def reply(self, dialogue: list[dict], seed: int) -> list[dict]:
        return self._step("free", [to_turns(dialogue)], seed)[0]


class ScriptedSource:
    """Deterministic candidates without a model: for HTTP tests and the load benchmark."""

    checkpoint, step = "scripted@0", 0
    sampling = {"scripted": True}

    def __init__(self, contexts: Sequence[list[dict]] = FALLBACK_CONTEXTS):
        self.contexts = tuple(contexts)

    def compare(self, context, n, seed):
        out = []
        for i in range(n):
            reply = {"role": "agent", "text": f"Candidate {i} (seed {seed})."}
            if i < n // 2:
                out.append([{"role": "search_query", "text": f"query {i}"},
                            {"role": "search_result",
                             "text": f"Doc {i}\nSource: https://toywiki.org/{i}\nFact {i}."},
                            reply])
            else:
                out.append([reply])
        return out, [i < n // 2 for i in range(n)]

    def reply(self, dialogue, seed):
        return [{"role": "agent", "text": f"Reply {len(dialogue)} (seed {seed})."}]
