"""Evaluate an agent on held-out prompts: answer each once (or @N), judge, summarise.

    agent = load_agent("runs/sft")
    prompts = load_prompts(agent.data_dir)                    # <data dir>/prompts.test.jsonl
    scorer = Scorer(agent)
    judge = make_judge(agent.data_dir, scorer)                # the oracle on a toy world
    sft = evaluate_agent(agent, prompts, judge, EvalSettings(), scorer=scorer, name="sft")
    sft8 = evaluate_agent(agent, prompts, judge, EvalSettings(n_best=8), scorer=scorer,
                          baseline=sft, name="sft@8")        # + pref_win_rate against sft's answers

Each prompt's context gets one agent step from `rl.rollout` (evidence mode `settings.evidence`, sampling
knobs from the config's `rl` section), or the best of N (`reranking.best_of_n`). Prompts go in fixed-size
batches (the last one padded with copies, dropped after), so sampling compiles once per evidence mode;
batch i uses fold_in(PRNGKey(seed), i), so a seed gives the same answers.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Sequence

import jax

from sparrow_jax.data import schemas
from sparrow_jax.data.schemas import PromptRecord
from sparrow_jax.dialogue.turns import Dialogue
from sparrow_jax.evaluation import metrics as metrics_lib
from sparrow_jax.evaluation.agent import Agent
from sparrow_jax.evaluation.reranking import RerankConfig, best_of_n
from sparrow_jax.evaluation.judge import Judge, Verdict
from sparrow_jax.rl.parallel import sampling_parallel_calls
from sparrow_jax.rl.rollout import EVIDENCE_MODES, Environment, RolloutConfig, rollout
from sparrow_jax.search.data_engine import NoSearch, data_dir_engine
from sparrow_jax.train.metrics import Progress


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """n_best: 1 = one sample per prompt in `evidence` mode; N >= 2 (even) = rerank @N.
    formula / mean_elo: the @N ranking (`reranking.RerankConfig`).  batch_size: sampled rows per call
    (@N: batch_size // (N/2) prompts per call).  max_prompts: 0 = all.  split: prompts.<split>.jsonl."""
    n_best: int = 1
    evidence: str = "free"
    formula: str = "sparrow"
    mean_elo: float | None = None
    batch_size: int = 32
    seed: int = 0
    max_prompts: int = 0
    split: str = "test"

    def __post_init__(self):
        if self.evidence not in EVIDENCE_MODES:
            raise ValueError(f"evidence must be one of {EVIDENCE_MODES}, got {self.evidence!r}")
        if self.n_best != 1:
            RerankConfig(self.n_best, self.formula, self.mean_elo)  # validates
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def rerank(self) -> RerankConfig | None:
        return RerankConfig(self.n_best, self.formula, self.mean_elo) if self.n_best > 1 else None

    @property
    def prompts_per_batch(self) -> int:
        return self.batch_size if self.n_best == 1 else max(1, self.batch_size // (self.n_best // 2))


@dataclasses.dataclass(frozen=True)
class Answer:
    """A prompt and the agent's reply: dialogue = context + new turns.  elo / candidates: for @N, the
    best candidate's Elo and how many were sampled (None / 1 otherwise)."""
    prompt: PromptRecord
    dialogue: Dialogue
    searched: bool
    malformed: str | None
    elo: float | None = None
    candidates: int = 1


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """name: a label ("sft", "rl@8").  judge: "oracle" | "reward_models".  metrics: `metrics.summarise`
    plus pref_win_rate (None without a baseline).  timings: seconds (wall, sampling, judging)."""
    name: str
    agent: Agent
    settings: EvalSettings
    judge: str
    answers: tuple[Answer, ...]
    verdicts: tuple[Verdict, ...]
    metrics: dict
    timings: dict
    baseline: str | None = None
    judge_notes: tuple = ()  # how the judge decided (e.g. its threshold) and the RM calibration used


def load_prompts(data_dir: str, split: str = "test", max_prompts: int = 0,
                 rule_ids=None) -> list[PromptRecord]:
    """The held-out prompts `<data_dir>/prompts.<split>.jsonl` (the first `max_prompts`, 0 = all).

    `rule_ids`: the rules a probe may name (an unknown `rule_id` is an error naming the line,
    not a probe silently left out of the rule figures). An empty file is an error too."""
    path = os.path.join(data_dir or "", f"prompts.{split}.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no held-out prompts at {path}: make a data dir with "
                                f"`sparrow data toyworld --out DIR` (or pass --config.data.dir=DIR)")
    prompts = list(schemas.read_jsonl(path, "prompts", rule_ids=rule_ids))
    if not prompts:
        raise ValueError(f"{path}: the prompts file is empty: nothing to evaluate")
    return prompts[:max_prompts] if max_prompts > 0 else prompts


@functools.lru_cache(maxsize=4)
def load_engine(data_dir: str):
    """The data dir's search engine: its `search_index/`, else an index of its `corpus.jsonl` built
    in memory (`search.data_engine`; nothing is written into the data dir). A dir with neither turns
    search off (`NoSearch`), saying so in one line on stderr."""
    try:
        return data_dir_engine(data_dir)
    except FileNotFoundError as err:
        print(f"search disabled: {err}", file=sys.stderr, flush=True)
        return NoSearch()


def make_environment(agent: Agent, evidence: str = "free", engine=None) -> Environment:
    """The rollout environment with the config's `rl` sampling knobs. With search off (`NoSearch`)
    the policy is not offered search (evidence "free" / "choose" become "never"). On a CPU the
    sampler calls run in parts side by side (`rl.parallel_calls`, as in training)."""
    engine = engine or load_engine(agent.data_dir)
    evidence = evidence or agent.cfg.rl.evidence
    if isinstance(engine, NoSearch) and evidence in ("free", "choose"):
        evidence = "never"
    config = RolloutConfig.from_rl_config(agent.cfg.rl, evidence)
    return Environment(agent.model_cfg, agent.tokenizer, engine, config,
                       parallel_calls=sampling_parallel_calls(agent.cfg))


def _batches(prompts: Sequence[PromptRecord], size: int):
    """(padded contexts of exactly `size`, real count) per batch."""
    for start in range(0, len(prompts), size):
        chunk = [p.context for p in prompts[start:start + size]]
        yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def answer_prompts(agent: Agent, prompts: Sequence[PromptRecord], settings: EvalSettings, *,
                   scorer=None, env: Environment | None = None, desc: str = "eval",
                   show_progress: bool = True) -> list[Answer]:
    """One Answer per prompt (in order). @N needs `scorer` (both reward models)."""
    env = env or make_environment(agent, settings.evidence)
    size = settings.prompts_per_batch
    n_batches = -(-len(prompts) // size)
    progress = Progress(n_batches, desc=desc, log_every=1, enabled=show_progress)
    rng = jax.random.PRNGKey(settings.seed)
    answers: list[Answer] = []
    for index, (contexts, real) in enumerate(_batches(prompts, size)):
        key = jax.random.fold_in(rng, index)
        if settings.rerank is None:
            steps = rollout(env, agent.params, contexts, key).rollouts[:real]
            answers += [Answer(p, s.dialogue, s.searched, s.malformed)
                        for p, s in zip(prompts[len(answers):], steps)]
        else:
            ranked = best_of_n(env, agent.params, scorer, contexts, key, settings.rerank)[:real]
            answers += [Answer(p, r.best.rollout.dialogue, r.best.rollout.searched, r.best.rollout.malformed,
                               r.best.elo, len(r.candidates))
                        for p, r in zip(prompts[len(answers):], ranked)]
        progress.update(index + 1)
    progress.close()
    return answers


def paired_count(answers: Sequence[Answer], baseline: Sequence[Answer]) -> int:
    """How many of `answers` have a baseline answer to the same prompt: the n of a win rate."""
    ids = {b.prompt.id for b in baseline}
    return sum(a.prompt.id in ids for a in answers)


def win_rate_against(scorer, answers: Sequence[Answer], baseline: Sequence[Answer]) -> float | None:
    """The preference RM's win rate of `answers` over `baseline` on the prompts both answered."""
    by_id = {a.prompt.id: a for a in baseline}
    pairs = [(a, by_id[a.prompt.id]) for a in answers if a.prompt.id in by_id]
    if not pairs:
        return None
    elo_a = scorer.pref_elo([a.dialogue for a, _ in pairs])
    elo_b = scorer.pref_elo([b.dialogue for _, b in pairs])
    return metrics_lib.preference_win_rate(elo_a, elo_b, [a.dialogue == b.dialogue for a, b in pairs])


def evaluate_agent(agent: Agent, prompts: Sequence[PromptRecord], judge: Judge,
                   settings: EvalSettings = EvalSettings(), *, scorer=None,
                   baseline: "EvalResult | Sequence[Answer] | None" = None, name: str | None = None,
                   show_progress: bool = True) -> EvalResult:
    """Answer, judge and summarise. `baseline` (another result, or its answers) adds pref_win_rate,
    decided by this agent's preference RM (`scorer`)."""
    name = name or (os.path.basename(os.path.normpath(agent.workdir))
                    + (f"@{settings.n_best}" if settings.n_best > 1 else ""))
    start = time.perf_counter()
    answers = answer_prompts(agent, prompts, settings, scorer=scorer, desc=f"eval {name}",
                             show_progress=show_progress)
    sampled = time.perf_counter()
    verdicts = judge([a.prompt for a in answers], [a.dialogue for a in answers])
    summary = metrics_lib.summarise([a.prompt for a in answers], verdicts,
                                    [a.malformed is not None for a in answers],
                                    [a.dialogue for a in answers])
    baseline_label = None
    summary["pref_win_rate"] = None
    if baseline is not None:
        base_answers = baseline.answers if isinstance(baseline, EvalResult) else baseline
        baseline_label = baseline.name if isinstance(baseline, EvalResult) else "baseline"
        if scorer is None:
            raise ValueError("a baseline win rate needs a scorer with the preference reward model")
        summary["pref_win_rate"] = win_rate_against(scorer, answers, base_answers)
    summary["intervals"]["pref_win_rate"] = metrics_lib.rate_interval(
        summary["pref_win_rate"], paired_count(answers, base_answers if baseline is not None else ()))
    end = time.perf_counter()
    timings = {"wall_seconds": end - start, "sampling_seconds": sampled - start,
               "judging_seconds": end - sampled,
               "prompts_per_second": len(answers) / max(end - start, 1e-9)}
    used_scorer = settings.n_best > 1 or judge.name == "reward_models" or baseline is not None
    notes = tuple(getattr(judge, "notes", ())) + (tuple(getattr(scorer, "notes", ())) if used_scorer else ())
    return EvalResult(name, agent, settings, judge.name, tuple(answers), tuple(verdicts), summary,
                      timings, baseline_label, notes)
