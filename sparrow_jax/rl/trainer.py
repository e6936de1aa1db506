"""The RL stage: self-play rollouts, rewards from both reward models, A2C with a KL anchor.

    summary = train_rl(cfg, workdir)

Before the first step: the policy, value head and teacher start from the SFT workdir
(`train.init_from`: the teacher is a frozen copy of the policy), the reward models' tops
are read from `rl.pref_rm_from` / `rl.rule_rm_from` (their trunk must be the policy's),
and the preference RM's Elo normaliser is fitted on `rl.normaliser_batches` batches of the
starting policy's rollouts. Then each step:
  1. self-play (`selfplay.play`): a batch of episodes, fresh from the prompt mixture or
     continued from the context buffer, extended by one agent step (search if chosen);
  2. host reward parts: rule RM P(broken) for every rule (dialogue prefix shared,
     `rule_scoring`), aggregated; minus the format penalty for malformed turns;
  3. the jitted update (`stages._rl`): one trunk pass feeds policy, value, teacher and the
     preference RM, whose normalised Elo completes the reward at the final agent eot.
A rerun resumes from the newest checkpoint: what RL trains (policy + value, optimizer state;
the frozen trunk, teacher and both RMs are re-read from their sources, named with their
fingerprints in the meta: rl/checkpoint.py), and in its meta the self-play state (prompt
draws, buffer), the Elo normaliser and the config. Rollout RNG is fold_in(seed, step), so a
resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np

from sparrow_jax import distributed
from sparrow_jax import sharding as shd
from sparrow_jax.config import ConfigError
from sparrow_jax.data import schemas
from sparrow_jax.dialogue.turns import ROLE_INDEX, Role
from sparrow_jax.rewards.pref_scoring import EloNormaliser, pref_elo
from sparrow_jax.rewards.reward import aggregate_rules
from sparrow_jax.rewards.rule_scoring import (group_rules_by_length, prepare_rule_suffixes,
                                              rule_violation_probs)
from sparrow_jax.rl.lengths import sequence_length
from sparrow_jax.rl import checkpoint as rl_checkpoint
from sparrow_jax.rl.rollout import Environment, RolloutConfig, rollout
from sparrow_jax.rl.selfplay import ContextBuffer, EpisodeSource, play
from sparrow_jax.search import make_engine
from sparrow_jax.train import init_from, stage_data, stages, storage
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.fingerprint import fingerprint
from sparrow_jax.train.metrics import MetricsWriter, Progress, to_floats
from sparrow_jax.train.run_control import NonfiniteGuard, Preempted, write_summary
from sparrow_jax.train.step import batch_shardings
from sparrow_jax.train.trainable import merge_params

log = logging.getLogger(__name__)

REWARD_MODEL_ROLES = ("pref_rm", "rule_rm")
_NORMALISER_SEED_OFFSET = 1000  # the normaliser's prompt draws are not the training draws


def load_reward_models(cfg, mesh, policy_trunk) -> dict[str, init_from.Source]:
    """{'pref_rm': Source, 'rule_rm': Source} from `rl.pref_rm_from` / `rl.rule_rm_from`: each
    the workdir, the step read and params {role: its top} (the RM's own trunk is dropped).

    Raises ConfigError if a workdir is not set or holds another stage, or if its trunk is
    not the policy's (the hydra shares one frozen trunk: train the reward models with
    `train.init_from` pointing at the same SFT workdir as this run). Trunks are compared by
    fingerprint, computed on their devices.
    """
    policy_fingerprint = fingerprint(policy_trunk)
    sources = {}
    for role in REWARD_MODEL_ROLES:
        workdir = cfg.rl[f"{role}_from"]
        if not workdir:
            raise ConfigError(f"rl.{role}_from is empty: set it to the workdir of the {role} "
                              f"stage (`sparrow train --config ...:{role}`)")
        source = init_from.load_source(workdir, cfg, mesh, via=f"rl.{role}_from")
        stage = source.config["train"]["stage"]
        if stage != role:
            raise ConfigError(f"rl.{role}_from={workdir!r} holds a {stage!r} checkpoint, not {role!r}")
        if fingerprint(source.params["trunk"]) != policy_fingerprint:
            raise ConfigError(
                f"rl.{role}_from={workdir!r}: its trunk differs from the policy's "
                f"(train.init_from={cfg.train.init_from!r}); the reward models must be trained "
                f"with train.init_from set to the same SFT workdir")
        sources[role] = dataclasses.replace(source, params={role: source.params[role]})
    return sources


class RewardScorer:
    """Jitted reward-model calls for rollout batches (params: {trunk, pref_rm, rule_rm, ...})."""

    def __init__(self, cfg, tokenizer, mesh, rules):
        self.cfg = cfg
        scored = stage_data.rules_by_id(cfg, cfg.rl.rule_scope)
        self.rule_ids = tuple(scored)
        rule_texts = list(scored.values())
        self.rule_tokens_RxQ, self.rule_valid_RxQ = prepare_rule_suffixes(rule_texts, tokenizer)
        model_cfg = cfg.model
        self._elo = jax.jit(lambda p, t, v, i, s: pref_elo(p, model_cfg, t, v, i, s))
        rule_chunk = int(cfg.rl.rule_chunk) or None
        rule_groups = group_rules_by_length(self.rule_valid_RxQ)
        self._rules = jax.jit(lambda p, t, v, rt, rv: rule_violation_probs(
            p, model_cfg, t, v, rt, rv, rule_chunk=rule_chunk, rule_groups=rule_groups,
            mesh=mesh, rules=rules))

    def elo_B(self, params, arrays) -> np.ndarray:
        rm = {k: params[k] for k in ("trunk", "pref_rm")}
        return np.asarray(self._elo(rm, arrays["tokens_BxL"], arrays["valid_BxL"],
                                    arrays["reward_index_B"], arrays["turn_start_B"]))

    def p_broken_BxR(self, params, arrays) -> np.ndarray:
        rm = {k: params[k] for k in ("trunk", "rule_rm")}
        return np.asarray(self._rules(rm, arrays["tokens_BxL"], arrays["valid_BxL"],
                                      self.rule_tokens_RxQ, self.rule_valid_RxQ))

    def host_rewards(self, params, arrays) -> tuple[np.ndarray, dict]:
        """(rewards_BxL: rule term - format penalty at each reward index, metrics)."""
        r = self.cfg.rl
        p_broken = self.p_broken_BxR(params, arrays)
        compliance_B = np.asarray(aggregate_rules(p_broken, r.rule_aggregation))
        malformed_B = arrays["malformed_B"]
        host_B = r.rule_weight * compliance_B - r.format_penalty * malformed_B
        rewards_BxL = np.zeros(arrays["tokens_BxL"].shape, np.float32)
        rewards_BxL[np.arange(len(host_B)), arrays["reward_index_B"]] = host_B
        return rewards_BxL, {"rule_compliance": float(compliance_B.mean()),
                             "p_broken_max": float(p_broken.max(axis=1).mean()),
                             "format_penalty_rate": float(malformed_B.mean())}


def fit_normaliser(cfg, env, params, prompts, scorer, length: int) -> EloNormaliser:
    """Mean/std of the preference RM's Elo on the starting policy's rollouts of fresh prompts."""
    r = cfg.rl
    source = EpisodeSource(prompts, dict(r.prompt_mix), ContextBuffer(capacity=0),
                           seed=cfg.train.seed + _NORMALISER_SEED_OFFSET)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), _NORMALISER_SEED_OFFSET)
    normaliser = EloNormaliser()
    for i in range(r.normaliser_batches):
        episodes = source.next_batch(cfg.train.batch_size)
        batch = rollout(env, params, [e.turns for e in episodes], jax.random.fold_in(key, i))
        normaliser = normaliser.update(scorer.elo_B(params, batch.training_arrays(length)))
    log.info("Elo normaliser from %d starting-policy turns: mean %.4g std %.4g",
             normaliser.count, normaliser.mean, normaliser.std)
    return normaliser


def _rollout_metrics(step_play, arrays) -> dict:
    agent = (arrays["role_ids_BxL"] == ROLE_INDEX[Role.AGENT]) & arrays["policy_mask_BxL"]
    return {"search_rate": float(arrays["searched_B"].mean()),
            "agent_turn_tokens": float(agent.sum(axis=1).mean()),
            "truncated_rate": float(arrays["truncated_B"].mean()),
            "continued_rate": float(np.mean([e.continued for e in step_play.episodes]))}


def train_rl(cfg, workdir: str, max_steps_this_run: int = 0) -> dict:
    """Run the RL stage to `cfg.train.steps`, resuming if `workdir` has checkpoints.

    Returns the summary also written to `workdir/summary.json` (when finished). Raises
    Preempted after SIGTERM (checkpoint saved first), TrainingError after
    `train.max_nonfinite_in_row` non-finite steps, ConfigError / CheckpointError for a
    bad config or checkpoint.
    """
    start_time = time.perf_counter()
    if cfg.train.stage != "rl":
        raise ConfigError(f"train_rl runs train.stage='rl', not {cfg.train.stage!r}")
    if not cfg.train.init_from:
        raise ConfigError("train.init_from is empty: set it to the SFT workdir (the starting policy)")
    distributed.initialize(cfg.distributed)
    storage.makedirs(workdir)
    mesh = shd.make_mesh(cfg.mesh)
    rules = shd.rules_from_config(cfg.mesh)
    tokenizer = stage_data.load_tokenizer(cfg)
    data_dir = stage_data.data_dir(cfg)
    engine = make_engine("bm25", index_dir=os.path.join(data_dir, "search_index"))
    prompts = schemas.read_all(os.path.join(data_dir, "prompts.train.jsonl"))
    env = Environment(cfg.model, tokenizer, engine, RolloutConfig.from_rl_config(cfg.rl),
                      mesh=mesh, rules=rules)
    length = sequence_length(cfg)
    scorer = RewardScorer(cfg, tokenizer, mesh, rules)
    log.info("rl: the rule term scores %d rules (rl.rule_scope=%s): %s", len(scorer.rule_ids),
             cfg.rl.rule_scope, ", ".join(scorer.rule_ids))

    setup = stages.build_stage(cfg, mesh, "rl", seq_len=length)
    ckpt = Checkpointer(init_from.checkpoint_dir(workdir), cfg.train.checkpoint_every,
                        cfg.train.keep_checkpoints, cfg.train.async_checkpoint)
    restored = rl_checkpoint.restore(ckpt, setup.abstract_state, json.dumps(cfg.to_dict()), cfg)
    guard = NonfiniteGuard(cfg.train.max_nonfinite_in_row, ckpt.directory)
    source = EpisodeSource(prompts, dict(cfg.rl.prompt_mix),
                           ContextBuffer(cfg.rl.buffer_size, cfg.rl.max_turns, cfg.rl.continue_prob,
                                         seed=cfg.train.seed),
                           seed=cfg.train.seed)
    if restored is not None:
        restored, frozen_references = restored
        state = restored.state
        source.set_state(restored.meta["selfplay"])
        normaliser = EloNormaliser.from_state(restored.meta["normaliser"])
        guard.total = int(restored.meta.get("nonfinite_total", 0))
        log.info("resuming rl from step %d", restored.step)
    else:
        sft = init_from.load_source(cfg.train.init_from, cfg, mesh)
        state = init_from.grafted_state(cfg, setup, sft)
        reward_models = load_reward_models(cfg, mesh, state.frozen["trunk"])
        tops = {role: rm.params[role] for role, rm in reward_models.items()}
        state = state.replace(frozen={**state.frozen, **tops})
        frozen_references = rl_checkpoint.frozen_references(state.frozen, sft, reward_models)
        normaliser = fit_normaliser(cfg, env, merge_params(state.params, state.frozen), prompts,
                                    scorer, length)
    # The update step closes over the normaliser (fixed for the run).
    std = max(normaliser.std, normaliser.min_std)
    step_fn = setup.step_with(cfg, mesh, elo_mean=normaliser.mean, elo_std=std)
    in_shardings = batch_shardings(setup.batch_shapes, mesh, rules)

    def save(step: int) -> None:
        # What rl trains; the frozen parts by reference to their sources (rl/checkpoint.py).
        rl_checkpoint.save(ckpt, step, state, frozen_references,
                           meta={"selfplay": source.get_state(), "normaliser": normaliser.state(),
                                 "config": cfg.to_dict(), "stage": "rl", "nonfinite_total": guard.total},
                           assets={"tokenizer.model": tokenizer.serialized_model})

    writer = MetricsWriter(storage.join(workdir, "logs"))
    step, total = int(state.step), cfg.train.steps
    progress = Progress(total, initial=step, desc="rl", log_every=cfg.train.log_every)
    restore_sigterm = ckpt.install_sigterm_handler()
    base_key = jax.random.PRNGKey(cfg.train.seed)
    steps_this_run, episodes_done, rollout_seconds, recent = 0, 0, 0.0, []
    try:
        while step < total:
            tick = time.perf_counter()
            params = merge_params(state.params, state.frozen)
            step_play = play(env, params, source, cfg.train.batch_size, jax.random.fold_in(base_key, step))
            arrays = step_play.batch.training_arrays(length, tokenizer.pad_id)
            rewards_BxL, host_metrics = scorer.host_rewards(params, arrays)
            rollout_seconds += time.perf_counter() - tick
            batch = {"tokens_BxL": arrays["tokens_BxL"], "valid_BxL": arrays["valid_BxL"],
                     "policy_mask_BxL": arrays["policy_mask_BxL"].astype(np.float32),
                     "sampled_mask_BxL": arrays["sampled_mask_BxL"].astype(np.float32),
                     "rewards_BxL": rewards_BxL, "reward_index_B": arrays["reward_index_B"],
                     "turn_start_B": arrays["turn_start_B"]}
            state, metrics = step_fn(state, distributed.host_local_to_global(batch, mesh, in_shardings))
            step, steps_this_run = step + 1, steps_this_run + 1
            episodes_done += cfg.train.batch_size
            metrics = {**to_floats(metrics), **host_metrics, **_rollout_metrics(step_play, arrays)}
            guard.check(step, metrics)
            recent = (recent + [metrics])[-cfg.train.log_every:]
            elapsed = time.perf_counter() - start_time
            metrics.update(episodes_per_second=episodes_done / elapsed,
                           rollout_fraction=rollout_seconds / elapsed, buffer_size=float(len(source.buffer)))
            if step % cfg.train.log_every == 0 or step == total:
                writer.write(step, metrics)
            progress.update(step, {"reward": metrics["reward"], "kl": metrics["kl"]})
            stopping = ckpt.preempted or (max_steps_this_run and steps_this_run >= max_steps_this_run)
            if step == total or stopping or ckpt.should_save(step):
                save(step)
            if ckpt.preempted:
                raise Preempted(step)
            if stopping:
                return {"stage": "rl", "step": step, "finished": False}
    finally:
        restore_sigterm()
        progress.close()
        writer.close()
        ckpt.close()
    # "eval": the run's last log_every steps (RL has no held-out split; `sparrow eval` judges).
    last = {k: float(np.mean([m[k] for m in recent])) for k in ("reward", "kl", "search_rate")
            if recent}
    summary = {"stage": "rl", "step": step, "finished": True, "eval": last,
               "normaliser": normaliser.state(), "nonfinite_total": guard.total,
               "wall_seconds_this_run": time.perf_counter() - start_time}
    write_summary(workdir, summary)
    return summary
