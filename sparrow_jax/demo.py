"""The whole recipe at toy scale: `sparrow demo --workdir ROOT`.

    world -> lm -> sft -> pref_rm, rule_rm -> rl -> evaluate sft, sft@N, rl, rl@N -> report

Layout of ROOT: world/ (the generated toy world, its tokenizer and TFDS datasets), one
workdir per stage (lm/, sft/, pref_rm/, rule_rm/, rl/: checkpoints, logs, summary.json),
and report.json, report.md and PNG plots. A rerun skips what is finished (a stage whose
summary.json says finished at its configured step count) and resumes what is not, so an
interrupted demo picks up where it stopped. Every stage's config is the experiment file's
variant for it (default experiments/tiny_cpu.py) plus the demo's wiring (data dir,
init_from, reward model dirs) plus the user's `--config.a.b=v` overrides, applied to
every stage (e.g. `--config.train.steps=3` for a smoke run).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time

from sparrow_jax.config import apply_overrides, load_experiment

log = logging.getLogger(__name__)

STAGES = ("lm", "sft", "pref_rm", "rule_rm", "rl")
SOURCE_STAGE = {"sft": "lm", "pref_rm": "sft", "rule_rm": "sft", "rl": "sft"}
MODELS = ("sft", "rl")  # evaluated alone and reranked @N


def default_experiment() -> str:
    """experiments/tiny_cpu.py of the source checkout this package runs from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(root, "experiments", "tiny_cpu.py")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """experiment: the experiment file (variants named after the stages).  overrides:
    `--config.a.b=v` strings for every stage.  world_seed / world_settings: the toy world
    (`sparrow data toyworld --seed --set`).  n_best: N of the reranked models.
    max_prompts: held-out prompts per model (0 = all).  parallel_reward_models: train rule_rm in
    a second process while pref_rm trains (both start from sft)."""
    experiment: str = ""
    overrides: tuple[str, ...] = ()
    world_seed: int = 0
    world_settings: tuple[str, ...] = ()
    n_best: int = 8
    max_prompts: int = 0
    parallel_reward_models: bool = True


def stage_dir(root: str, stage: str) -> str:
    return os.path.join(root, stage)


def world_dir(root: str) -> str:
    return os.path.join(root, "world")


def stage_overrides(root: str, stage: str, settings: DemoSettings) -> list[str]:
    """`--config.a.b=v` strings of `stage`: the demo's wiring, then the user's overrides."""
    wiring = [f"--config.data.dir={world_dir(root)}"]
    if stage in SOURCE_STAGE:
        wiring.append(f"--config.train.init_from={stage_dir(root, SOURCE_STAGE[stage])}")
    if stage == "rl":
        wiring += [f"--config.rl.pref_rm_from={stage_dir(root, 'pref_rm')}",
                   f"--config.rl.rule_rm_from={stage_dir(root, 'rule_rm')}"]
    return wiring + list(settings.overrides)


def stage_config(root: str, stage: str, settings: DemoSettings):
    """The validated config of `stage` in the demo rooted at `root`."""
    experiment = settings.experiment or default_experiment()
    return apply_overrides(load_experiment(f"{experiment}:{stage}"),
                           stage_overrides(root, stage, settings))


def finished(workdir: str, steps: int) -> dict | None:
    """The stage's summary if it finished at `steps`, else None."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    return summary if summary.get("finished") and summary.get("step") == steps else None


def make_world(root: str, settings: DemoSettings) -> str:
    """Generate and build the toy world once (a finished world has its TFDS datasets)."""
    out = world_dir(root)
    if os.path.exists(os.path.join(out, "tfds")) and os.path.exists(os.path.join(out, "world.json")):
        return out
    from sparrow_jax.commands.data import make_toyworld
    make_toyworld(out, settings.world_seed, list(settings.world_settings))
    return out


def _print_done(stage: str, summary: dict, seconds: float) -> None:
    figures = " ".join(f"{k}={v:.4g}" for k, v in summary.get("eval", {}).items()
                       if not k.startswith("auc/"))
    print(f"== {stage} done in {seconds:.0f} s: {figures}", flush=True)


class _ChildStage:
    """A stage trained by `sparrow train` in a second process, its output in <workdir>/train.log.

    The two reward models both start from sft and do not read each other, so rule_rm trains
    beside pref_rm: one process of this tiny model keeps ~1.4 of the 2 cores busy, two keep both
    (on the 2-core host: both stages in 280 s, ~310 s one after the other).
    """

    def __init__(self, root: str, stage: str, settings: DemoSettings, steps: int):
        self.stage, self.steps, self.workdir = stage, steps, stage_dir(root, stage)
        os.makedirs(self.workdir, exist_ok=True)
        self.log_path = os.path.join(self.workdir, "train.log")
        experiment = settings.experiment or default_experiment()
        command = [sys.executable, "-m", "sparrow_jax", "train", "--config", f"{experiment}:{stage}",
                   "--workdir", self.workdir, *stage_overrides(root, stage, settings)]
        self.start = time.perf_counter()
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)

    def wait(self) -> dict:
        code = self.process.wait()
        summary = finished(self.workdir, self.steps)
        if code != 0 or summary is None:
            from sparrow_jax.train.run_control import TrainingError
            raise TrainingError(f"{self.stage} (a second process) stopped with exit code {code}; "
                                f"see {self.log_path}; rerun the demo to resume it")
        _print_done(self.stage, summary, time.perf_counter() - self.start)
        return summary

    def stop(self) -> None:
        """SIGTERM: the child saves a checkpoint and exits, so a rerun resumes it."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


def train_stages(root: str, settings: DemoSettings) -> dict[str, dict]:
    """Run (or skip) every stage in order; {stage: summary}. With `settings.parallel_reward_models`,
    rule_rm trains in a second process while pref_rm trains in this one."""
    from sparrow_jax.rl.trainer import train_rl
    from sparrow_jax.train.loop import train_stage
    summaries, child = {}, None
    try:
        for stage in STAGES:
            cfg = stage_config(root, stage, settings)
            workdir = stage_dir(root, stage)
            if child is not None and stage == child.stage:
                summaries[stage] = child.wait()
                child = None
                continue
            done = finished(workdir, cfg.train.steps)
            if done:
                log.info("%s: finished earlier (%s), skipped", stage, workdir)
                summaries[stage] = done
                continue
            if stage == "pref_rm" and settings.parallel_reward_models:
                rule_steps = stage_config(root, "rule_rm", settings).train.steps
                if not finished(stage_dir(root, "rule_rm"), rule_steps):
                    child = _ChildStage(root, "rule_rm", settings, rule_steps)
                    print(f"== rule_rm: {rule_steps} steps -> {child.workdir} (a second process "
                          f"beside pref_rm; log: {child.log_path})", flush=True)
            print(f"== {stage}: {cfg.train.steps} steps -> {workdir}", flush=True)
            start = time.perf_counter()
            train = train_rl if stage == "rl" else train_stage
            summaries[stage] = train(cfg, workdir)
            _print_done(stage, summaries[stage], time.perf_counter() - start)
    finally:
        if child is not None:
            child.stop()
    return summaries


def run_demo(root: str, settings: DemoSettings = DemoSettings()) -> dict:
    """The whole demo; returns the report written to ROOT/report.json."""
    start = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    make_world(root, settings)
    train_stages(root, settings)
    return evaluate_models(root, settings, start)


def evaluate_models(root: str, settings: DemoSettings, start: float) -> dict:
    """Evaluate sft, sft@N, rl and rl@N on the held-out prompts with the oracle; write the
    report (report.json, report.md, plots) in ROOT and return it."""
    from sparrow_jax.evaluation.demo_report import (demo_report, reward_model_figures,
                                                    write_demo_report)
    from sparrow_jax.evaluation.agent import load_agent
    from sparrow_jax.evaluation.evaluator import EvalSettings, evaluate_agent, load_prompts
    from sparrow_jax.evaluation.judge import make_judge
    from sparrow_jax.evaluation.scoring import Scorer
    prompts = load_prompts(world_dir(root), "test", settings.max_prompts)
    rm_dirs = {"pref_rm": stage_dir(root, "pref_rm"), "rule_rm": stage_dir(root, "rule_rm")}
    results = {}
    for model in MODELS:
        agent = load_agent(stage_dir(root, model), **rm_dirs)
        scorer = Scorer(agent)
        judge = make_judge(world_dir(root), scorer)
        for n_best in (1, settings.n_best):
            name = model if n_best == 1 else f"{model}@{n_best}"
            results[name] = evaluate_agent(agent, prompts, judge, EvalSettings(n_best=n_best),
                                           scorer=scorer, baseline=results.get("sft"), name=name)
    report = demo_report(results, wall_seconds=time.perf_counter() - start,
                         reward_models=reward_model_figures(rm_dirs["pref_rm"], rm_dirs["rule_rm"]))
    write_demo_report(report, root, results=results, rl_workdir=stage_dir(root, "rl"))
    return report


def results_table(report: dict) -> str:
    """The console table of a demo report."""
    header = ("model", "rule violation", "supported&correct", "search rate", "win vs sft")
    rows = [header]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, m in report["models"].items():
        rows.append((name, fmt(m["rule_violation_rate"]), fmt(m["supported_and_correct_rate"]),
                     fmt(m["search_rate"]), fmt(m["pref_win_rate_vs_sft"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
