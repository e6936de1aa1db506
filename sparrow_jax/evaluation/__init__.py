"""Evaluation: load an agent, answer held-out prompts (optionally reranked @N), judge, report.

    from sparrow_jax import evaluation as ev
    agent = ev.load_agent("runs/sft")                   # policy + reward models (agent.py)
    prompts = ev.load_prompts(agent.data_dir)           # <data dir>/prompts.test.jsonl
    scorer = ev.Scorer(agent)                           # batched pref Elo / rule P(broken) (scoring.py)
    judge = ev.make_judge(agent.data_dir, scorer)       # oracle on a toy world, else the RMs (judge.py)
    sft = ev.evaluate_agent(agent, prompts, judge, ev.EvalSettings(), scorer=scorer, name="sft")
    sft8 = ev.evaluate_agent(agent, prompts, judge, ev.EvalSettings(n_best=8), scorer=scorer,
                             baseline=sft, name="sft@8")
    ev.write_eval_report(sft8, "out/", baseline=sft)    # report.json / report.md / plots (report.py)
    from sparrow_jax.evaluation.demo_report import demo_report
    report = demo_report({"sft": sft, "sft@8": sft8}, wall_seconds=..., reward_models=
                         ev.reward_model_figures("runs/pref_rm", "runs/rule_rm"))
    ev.write_demo_report(report, "runs/")               # (demo_report.py)

Modules: checkpoint_params (params-only restore), agent, scoring, reranking (@N), judge, metrics,
evaluator, respond (one chat reply), schema, report, demo_report, plots. No function is re-exported under
its module's name (`ev.demo_report` is the module), so `import sparrow_jax.evaluation.X as m` is unambiguous.
"""
from sparrow_jax.evaluation.agent import Agent, load_agent
from sparrow_jax.evaluation.reranking import RerankConfig, best_of_n, rank_candidates
from sparrow_jax.evaluation.checkpoint_params import WorkdirError
from sparrow_jax.evaluation.demo_report import reward_model_figures, write_demo_report
from sparrow_jax.evaluation.evaluator import (EvalResult, EvalSettings, evaluate_agent, load_prompts,
                                              make_environment)
from sparrow_jax.evaluation.judge import make_judge
from sparrow_jax.evaluation.report import write_eval_report
from sparrow_jax.evaluation.scoring import MissingRewardModel, Scorer

__all__ = ["Agent", "load_agent", "RerankConfig", "best_of_n", "rank_candidates", "WorkdirError",
           "reward_model_figures", "write_demo_report", "EvalResult", "EvalSettings",
           "evaluate_agent", "load_prompts", "make_environment", "make_judge", "write_eval_report",
           "MissingRewardModel", "Scorer"]
