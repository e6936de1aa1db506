"""The one training loop every supervised stage uses (lm, sft, pref_rm, rule_rm).

    summary = train_stage(cfg, workdir)

A rerun of the same command resumes from the newest usable checkpoint: params,
optimizer state, step, RNG and the data iterator's position, so a resumed run
computes what the uninterrupted run would have. Layout of a workdir:
  checkpoints/<step>/   orbax checkpoints (state, meta with config + data position,
                        assets with the tokenizer)
  logs/                 metrics.jsonl and TensorBoard event files
  summary.json          final step, eval metrics and wall time (written at the end)
"""
from __future__ import annotations

import json
import logging
import time

from sparrow_jax import distributed
from sparrow_jax import sharding as shd
from sparrow_jax.train import init_from, stage_data, stages, storage
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.metrics import MetricsWriter, Progress, to_floats
from sparrow_jax.train.run_control import NonfiniteGuard, Preempted, write_summary
from sparrow_jax.train.stage_eval import StageEvaluator
from sparrow_jax.train.step import batch_shardings

log = logging.getLogger(__name__)


def train_stage(cfg, workdir: str, max_steps_this_run: int = 0) -> dict:
    """Train `cfg.train.stage` to `cfg.train.steps`, resuming if `workdir` has checkpoints.

    Args:
      max_steps_this_run: stop (with a checkpoint) after this many steps of this
        process; 0 = run to the end. For tests of resumption.
    Returns:
      the summary dict also written to `workdir/summary.json` (when finished).
    Raises:
      Preempted after SIGTERM (a checkpoint was saved first); TrainingError after
      `train.max_nonfinite_in_row` non-finite steps in a row; ConfigError /
      CheckpointError for a bad config, data or checkpoint.
    """
    start_time = time.perf_counter()
    stage = cfg.train.stage
    if stage not in stages.DEVICE_KEYS:
        raise ValueError(f"train_stage runs lm, sft, pref_rm and rule_rm; {stage!r} has its own loop")
    distributed.initialize(cfg.distributed)
    storage.makedirs(workdir)
    mesh = shd.make_mesh(cfg.mesh)
    rules = shd.rules_from_config(cfg.mesh)
    tokenizer = stage_data.load_tokenizer(cfg)
    rule_texts = stage_data.rules_by_id(cfg)
    setup = stages.build_stage(cfg, mesh, stage)
    in_batch_shardings = batch_shardings(setup.batch_shapes, mesh, rules)
    key = next(iter(in_batch_shardings))  # every key has the same rows
    rows = distributed.process_batch_slice(setup.batch_shapes[key].shape[0], in_batch_shardings[key])
    train_batches = stage_data.train_iterator(cfg, stage, tokenizer, rows=rows)

    ckpt = Checkpointer(init_from.checkpoint_dir(workdir), cfg.train.checkpoint_every,
                        cfg.train.keep_checkpoints, cfg.train.async_checkpoint)
    config_json = json.dumps(cfg.to_dict())
    restored = ckpt.restore_latest(setup.abstract_state, config_json=config_json)
    guard = NonfiniteGuard(cfg.train.max_nonfinite_in_row, ckpt.directory)
    if restored is not None:
        state = restored.state
        train_batches.set_state(restored.meta["data"])
        guard.total = int(restored.meta.get("nonfinite_total", 0))
        log.info("resuming %s from step %d", stage, restored.step)
    else:
        state = init_from.initial_state(cfg, setup, mesh)

    def save(step: int, force: bool = False) -> None:
        ckpt.save(step, state, meta={"data": train_batches.get_state(), "config": cfg.to_dict(),
                                     "stage": stage, "nonfinite_total": guard.total},
                  assets={"tokenizer.model": tokenizer.serialized_model}, force=force)

    evaluator = StageEvaluator(stage, cfg.model, list(rule_texts), mesh=mesh,
                               batch_shardings=in_batch_shardings)

    def evaluate() -> dict:
        # No save may be in flight while evaluation runs: its first read of the test split
        # imports tensorflow_datasets, whose etils lazy-import hook is process-wide and
        # turned orbax's background `from math import log` into a LazyModule (the final
        # save of an lm run failed about one time in four).
        ckpt.wait()
        with shd.activation_sharding(mesh, rules):
            return evaluator(state, stage_data.eval_batches(cfg, stage, tokenizer,
                                                           cfg.train.eval_batches))

    writer = MetricsWriter(storage.join(workdir, "logs"))
    step = int(state.step)
    total = cfg.train.steps
    progress = Progress(total, initial=step, desc=stage, log_every=cfg.train.log_every)
    restore_sigterm = ckpt.install_sigterm_handler()
    steps_this_run, eval_metrics = 0, {}
    try:
        while step < total:
            batch = stages.device_batch(stage, next(train_batches))
            global_batch = distributed.host_local_to_global(batch, mesh, in_batch_shardings)
            state, metrics = setup.step(state, global_batch)
            step, steps_this_run = step + 1, steps_this_run + 1
            guard.observe(metrics)  # no host sync: metrics are read at log intervals
            logging_now = step % cfg.train.log_every == 0 or step == total
            if logging_now or step % guard.check_every == 0 or ckpt.should_save(step):
                counts = guard.check(step)
            if logging_now:
                host_metrics = {**to_floats(metrics), **counts}
                writer.write(step, host_metrics)
                progress.update(step, {"loss": host_metrics["loss"]})
            else:
                progress.update(step)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                writer.write(step, evaluate(), split="eval")
            stopping = ckpt.preempted or (max_steps_this_run and steps_this_run >= max_steps_this_run)
            if step == total or stopping or ckpt.should_save(step):
                save(step, force=True)
            if ckpt.preempted:
                raise Preempted(step)
            if stopping:
                return {"stage": stage, "step": step, "finished": False}
        eval_metrics = evaluate()
        writer.write(step, eval_metrics, split="eval")
    finally:
        restore_sigterm()
        progress.close()
        writer.close()
        ckpt.close()
    summary = {"stage": stage, "step": step, "finished": True, "eval": eval_metrics,
               "nonfinite_total": guard.total,
               "wall_seconds_this_run": time.perf_counter() - start_time}
    write_summary(workdir, summary)
    return summary
