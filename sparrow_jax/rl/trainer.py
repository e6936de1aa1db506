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
     `rule_scoring`), aggregated; minus the format penalty for malformed turns; from here
     the batch is as wide as the narrowest of `rl.length_buckets`' widths that holds its
     longest episode (`rl.lengths.bucket_widths`: every width compiled before step 1); with
     `rl.parallel_calls` parts, its rows are sorted by length and each part is as wide as
     its own rows need (`rl.update.length_groups`);
  3. the jitted update (`stages._rl`): the frozen trunk's output over the dialogues, kept
     from step 2's prefill, feeds policy, value, teacher and the preference RM, whose
     normalised Elo completes the reward at the final agent eot; with parts, a gradient
     program per part and one optimizer update (`rl.update`, `train.part_step`).
A rerun resumes from the newest checkpoint: what RL trains (policy + value, optimizer state;
the frozen trunk, teacher and both RMs are re-read from their sources, named with their
fingerprints in the meta: rl/checkpoint.py), and in its meta the self-play state (prompt
draws, buffer), the Elo normaliser and the config. Rollout RNG is fold_in(seed, step), so a
resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

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
from sparrow_jax.rewards.pref_scoring import EloNormaliser
from sparrow_jax.rl.lengths import bucket_for, bucket_widths, sequence_length
from sparrow_jax.rl.parallel import parallel_calls
from sparrow_jax.rl import checkpoint as rl_checkpoint
from sparrow_jax.rl import phases
from sparrow_jax.rl.reward_models import RewardScorer, load_reward_models
from sparrow_jax.rl.projection import inference_spec, resolve_projection_dtype
from sparrow_jax.rl.rollout import Environment, RolloutConfig, rollout
from sparrow_jax.rl.sampler_calls import compile_prompt_widths
from sparrow_jax.rl.selfplay import ContextBuffer, EpisodeSource, ShardedSource, play
from sparrow_jax.rl.update import compile_updates, length_groups, part_batches
from sparrow_jax.sampling import layout
from sparrow_jax.search.data_engine import data_dir_engine
from sparrow_jax.train import init_from, stage_data, stages, storage
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.metrics import MetricsWriter, Progress, to_floats
from sparrow_jax.train.run_control import NonfiniteGuard, Preempted, write_summary
from sparrow_jax.train.step import batch_shardings
from sparrow_jax.train.trainable import merge_params

log = logging.getLogger(__name__)

_NORMALISER_SEED_OFFSET = 1000  # the normaliser's prompt draws are not the training draws
_SHARD_SEED_STRIDE = 7919  # batch shard s of a run draws from seed + 7919 s


def selfplay_source(cfg, prompts, shard_sharding, seed_offset: int = 0, buffer: bool = True
                    ) -> ShardedSource:
    """This process's self-play: one seeded EpisodeSource per batch shard it holds
    (`ShardedSource`); shard 0 draws from seed train.seed + seed_offset, as a one-shard run
    always did. Buffers share rl.buffer_size."""
    r, batch = cfg.rl, cfg.train.batch_size
    blocks = distributed.row_blocks(shard_sharding, batch)
    rows = distributed.process_batch_slice(batch, shard_sharding)
    mine = [s for s, b in enumerate(blocks) if rows.start <= b.start and b.stop <= rows.stop]
    capacity = -(-r.buffer_size // len(blocks)) if buffer else 0

    def make_shard(s: int) -> EpisodeSource:
        seed = cfg.train.seed + seed_offset + _SHARD_SEED_STRIDE * s
        return EpisodeSource(prompts, dict(r.prompt_mix),
                             ContextBuffer(capacity, r.max_turns, r.continue_prob, seed=seed),
                             seed=seed)
    return ShardedSource(make_shard, mine, batch // len(blocks))


def fit_normaliser(cfg, env, params, prompts, scorer, length: int, shard_sharding,
                   decode_shardings) -> EloNormaliser:
    """Mean/std of the preference RM's Elo on the starting policy's rollouts of fresh prompts
    (each process plays its rows, sampling in the decode layout; the Elos of every process go
    into the fit)."""
    r = cfg.rl
    source = selfplay_source(cfg, prompts, shard_sharding, _NORMALISER_SEED_OFFSET, buffer=False)
    local_rows = source.rows_per_shard * len(source.shard_ids)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), _NORMALISER_SEED_OFFSET)
    normaliser = EloNormaliser()
    for i in range(r.normaliser_batches):
        episodes = source.next_batch(local_rows)
        decode_params = layout.to_decode_layout(params, decode_shardings)
        batch = rollout(env, decode_params, [e.turns for e in episodes], jax.random.fold_in(key, i))
        del decode_params
        elo_B = scorer.elo_B(params, batch.training_arrays(length))
        normaliser = normaliser.update(distributed.allgather_rows(elo_B))
    log.info("Elo normaliser from %d starting-policy turns: mean %.4g std %.4g",
             normaliser.count, normaliser.mean, normaliser.std)
    return normaliser


ROW_FIGURES = ("rule_compliance", "p_broken_max", "format_penalty_rate", "search_rate",
               "agent_turn_tokens", "truncated_rate", "continued_rate")


def _row_sums(step_play, arrays, reward_rows: dict, buffered: int) -> np.ndarray:
    """float64 [2 + len(ROW_FIGURES)]: this process's (rows, buffered dialogues, then the sum
    over its rows of each ROW_FIGURES figure); summed over processes, then divided by rows."""
    agent = (arrays["role_ids_BxL"] == ROLE_INDEX[Role.AGENT]) & arrays["policy_mask_BxL"]
    per_row = {**reward_rows, "search_rate": arrays["searched_B"],
               "agent_turn_tokens": agent.sum(axis=1), "truncated_rate": arrays["truncated_B"],
               "continued_rate": np.asarray([e.continued for e in step_play.episodes])}
    sums = [float(np.sum(per_row[name], dtype=np.float64)) for name in ROW_FIGURES]
    return np.asarray([len(arrays["searched_B"]), buffered, *sums], np.float64)


def _row_means(sums_SxF: np.ndarray) -> list[dict]:
    """Every process's `_row_sums` of S steps [S, F] -> per step {figure: global mean,
    buffer_size}. A collective: every process calls it alike."""
    total = distributed.allgather_rows(np.asarray(sums_SxF)[None]).sum(axis=0)
    return [{"buffer_size": float(row[1]),
             **{name: float(value / row[0]) for name, value in zip(ROW_FIGURES, row[2:])}}
            for row in total]


def _check_read_slots(batch: dict, read_len: int) -> None:
    """The update's heads read at most `read_len` slots a row (`stages.policy_read_slots`):
    a row needing more would lose part of its loss, so it is an error, never a truncation."""
    most = int(stages.loss_slot_mask(batch["policy_mask_BxL"], batch["rewards_BxL"],
                                     batch["reward_index_B"], xp=np).sum(axis=1).max())
    if most > read_len:
        raise RuntimeError(f"an RL row needs {most} loss slots, more than the {read_len} the "
                           f"update reads (stages.rl_read_len): a rollout made more policy "
                           f"tokens than two turns of rl.max_new_tokens")


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
    # The data dir's index, else one built from its corpus into the workdir (never the data dir).
    engine = data_dir_engine(data_dir, cache_dir=None if storage.is_url(workdir)
                             else os.path.join(workdir, "search_index"))
    prompts = schemas.read_all(os.path.join(data_dir, "prompts.train.jsonl"))
    # The sampler decodes in its own layout (mesh.decode_logical_axis_rules; the training rules
    # if unset): a copy of trunk + policy top resharded once per step; rows come in by the
    # training rules' batch placement.
    decode_shardings = layout.decode_param_shardings(cfg, mesh)
    parts = parallel_calls(cfg, mesh)  # part-batch programs side by side (rl.parallel_calls)
    length = sequence_length(cfg)
    # The update reads the trunk's output from the rule scorer, which runs the frozen trunk
    # over the same dialogues first (`RewardScorer.p_broken_BxR`).
    setup = stages.build_stage(cfg, mesh, "rl", seq_len=length, trunk_input=True)
    read_len = stages.rl_read_len(cfg.rl)
    in_shardings = batch_shardings(setup.batch_shapes, mesh, rules)
    # This process plays, scores and rewards its own rows of each global batch.
    rows_sharding = in_shardings["tokens_BxL"]
    local_rows = distributed.process_batch_slice(cfg.train.batch_size, rows_sharding)
    local_batch = local_rows.stop - local_rows.start
    widths = bucket_widths(cfg)  # the batch widths a step may run at (rl.length_buckets)
    ckpt = Checkpointer(init_from.checkpoint_dir(workdir), cfg.train.checkpoint_every,
                        cfg.train.keep_checkpoints, cfg.train.async_checkpoint)
    restored = rl_checkpoint.restore(ckpt, setup.abstract_state, json.dumps(cfg.to_dict()), cfg)
    # Rollouts and reward scoring (forward only) in the run's projection dtype (rl/projection.py).
    projection = resolve_projection_dtype(cfg, None if restored is None else restored[0].meta)
    forward_spec = inference_spec(cfg, projection)
    env = Environment(forward_spec, tokenizer, engine, RolloutConfig.from_rl_config(cfg.rl),
                      mesh=mesh, rules=layout.decode_rules(cfg.mesh), row_rules=rules,
                      parallel_calls=parts)
    scorer = RewardScorer(cfg, tokenizer, mesh, rules, in_shardings, widths, parts, forward_spec)
    log.info("rl: the rule term scores %d rules (rl.rule_scope=%s): %s", len(scorer.rule_ids),
             cfg.rl.rule_scope, ", ".join(scorer.rule_ids))
    guard = NonfiniteGuard(cfg.train.max_nonfinite_in_row, ckpt.directory)
    source = selfplay_source(cfg, prompts, rows_sharding)
    if restored is not None:
        restored, frozen_references = restored
        state = restored.state
        source.set_state(restored.meta["selfplay"])
        normaliser = EloNormaliser.from_state(restored.meta["normaliser"])
        # The chunking measured when the run began: its scores, bit for bit.
        scorer.rule_chunk = int(restored.meta.get("rule_chunk", scorer.rule_chunk))
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
                                    scorer, length, rows_sharding, decode_shardings)
    if len(env.config.widths) > 1:  # rl.prompt_buckets: every width compiled before step 1
        tick = time.perf_counter()
        decode_params = layout.to_decode_layout(merge_params(state.params, state.frozen),
                                                decode_shardings)
        compile_prompt_widths(env, decode_params, local_batch)
        del decode_params
        log.info("rl: the sampler programs at prompt widths %s (rl.prompt_buckets) took %.1f s",
                 ", ".join(map(str, env.config.widths)), time.perf_counter() - tick)
    # The update step closes over the normaliser (fixed for the run).
    std = max(normaliser.std, normaliser.min_std)
    update = compile_updates(cfg, mesh, setup, widths, state, scorer.parallel_calls,
                             elo_mean=normaliser.mean, elo_std=std)

    def save(step: int) -> None:
        # What rl trains; the frozen parts by reference to their sources (rl/checkpoint.py).
        rl_checkpoint.save(ckpt, step, state, frozen_references,
                           meta={"selfplay": source.get_state(), "normaliser": normaliser.state(),
                                 "config": cfg.to_dict(), "stage": "rl", "nonfinite_total": guard.total,
                                 "rule_chunk": scorer.rule_chunk, "projection_dtype": projection},
                           assets={"tokenizer.model": tokenizer.serialized_model})

    writer = MetricsWriter(storage.join(workdir, "logs"))
    step, total = int(state.step), cfg.train.steps
    progress = Progress(total, initial=step, desc="rl", log_every=cfg.train.log_every)
    restore_sigterm = ckpt.install_sigterm_handler()
    base_key = jax.random.PRNGKey(cfg.train.seed)
    steps_this_run, episodes_done, rollout_seconds = 0, 0, 0.0
    # The last log_every steps' (device metrics, this process's row sums): nothing is read
    # back from the device or gathered from the other processes but at log intervals.
    recent: list[tuple[dict, np.ndarray]] = []
    try:
        while step < total:
            tick = time.perf_counter()
            with phases.phase("step"):
                params = merge_params(state.params, state.frozen)
                decode_params = layout.to_decode_layout(params, decode_shardings)
                with phases.phase("play"):
                    step_play = play(env, decode_params, source, local_batch,
                                     jax.random.fold_in(base_key, step))
                del decode_params  # a copy when the layouts differ: free it before the update
                longest = max(len(r.sequence) for r in step_play.batch.rollouts)
                width = bucket_for(max(distributed.allgather_objects(longest)), widths)
                # Rows by length in the update's parts (`rl.parallel_calls`), each as wide as
                # its rows need (`train.part_step`).
                arrays, part_widths = length_groups(
                    step_play.batch.training_arrays(width, tokenizer.pad_id), scorer.parallel_calls,
                    widths)
                with phases.phase("rule_scoring"):
                    rewards_BxL, reward_rows, trunks = scorer.host_rewards(params, arrays,
                                                                           part_widths)
                rollout_seconds += time.perf_counter() - tick
                batch = {"tokens_BxL": arrays["tokens_BxL"], "valid_BxL": arrays["valid_BxL"],
                         "policy_mask_BxL": arrays["policy_mask_BxL"].astype(np.float32),
                         "sampled_mask_BxL": arrays["sampled_mask_BxL"].astype(np.float32),
                         "rewards_BxL": rewards_BxL, "reward_index_B": arrays["reward_index_B"],
                         "turn_start_B": arrays["turn_start_B"]}
                _check_read_slots(batch, read_len)
                with phases.phase("update"):
                    state, metrics = phases.done(update(state, part_batches(
                        batch, trunks, part_widths, mesh, in_shardings)))
            phases.step_done()
            step, steps_this_run = step + 1, steps_this_run + 1
            episodes_done += cfg.train.batch_size
            guard.observe(metrics)
            recent = (recent + [(metrics, _row_sums(step_play, arrays, reward_rows,
                                                    source.buffered))])[-cfg.train.log_every:]
            logging_now = step % cfg.train.log_every == 0 or step == total
            if logging_now or step % guard.check_every == 0 or ckpt.should_save(step):
                counts = guard.check(step)
            if logging_now:
                elapsed = time.perf_counter() - start_time
                host = {**to_floats(metrics), **counts, **_row_means(recent[-1][1][None])[0],
                        "batch_width": width,
                        "episodes_per_second": episodes_done / elapsed,
                        "rollout_fraction": rollout_seconds / elapsed}
                writer.write(step, host)
                progress.update(step, {"reward": host["reward"], "kl": host["kl"]})
            else:
                progress.update(step)
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
    last = {}
    if recent:
        window = [{**to_floats(m), **rows} for (m, _), rows in
                  zip(recent, _row_means(np.stack([sums for _, sums in recent])))]
        last = {k: float(np.mean([m[k] for m in window])) for k in ("reward", "kl", "search_rate")}
    summary = {"stage": "rl", "step": step, "finished": True, "eval": last,
               "normaliser": normaliser.state(), "nonfinite_total": guard.total,
               "wall_seconds_this_run": time.perf_counter() - start_time}
    write_summary(workdir, summary)
    return summary
