"""The RL stage's reward models: their tops read from their workdirs, and their jitted
calls on rollout batches (the preference RM's Elo, the rule RM's P(broken) for every rule of
`rl.rule_scope` at the batch's width, with the frozen trunk's output the update reads).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from sparrow_jax import distributed
from sparrow_jax.config import ConfigError
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.rl import parallel
from sparrow_jax.rewards.pref_scoring import pref_elo
from sparrow_jax.rewards.reward import aggregate_rules
from sparrow_jax.rewards.rule_scoring import (group_rules_by_length, prepare_rule_suffixes,
                                              rule_violation_probs)
from sparrow_jax.train import init_from, stage_data
from sparrow_jax.train.fingerprint import fingerprint

log = logging.getLogger(__name__)

REWARD_MODEL_ROLES = ("pref_rm", "rule_rm")


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
    """Jitted reward-model calls for rollout batches (params: {trunk, pref_rm, rule_rm, ...}).

    `arrays` are this process's rows of the batch (`RolloutBatch.training_arrays`); they are
    assembled into global arrays laid out by `batch_shardings` (the RL update's) and the
    scores come back as this process's rows. `widths`: the batch widths a step may have
    (`rl.lengths.bucket_widths`); the rule scorer compiles at all of them on its first call.
    `parallel_calls` P > 1 (`rl.parallel`): the rule scorer runs as P calls of B/P rows side by
    side, each at its own width, and the trunk's output comes back per part (the update's
    length groups, `train.part_step`). `model_spec`: the spec both
    reward models run under (the RL stage's `rl.projection.inference_spec`; default cfg.model's).
    """

    def __init__(self, cfg, tokenizer, mesh, rules, batch_shardings: dict,
                 widths: tuple[int, ...] = (), parallel_calls: int = 1, model_spec=None):
        self.cfg = cfg
        self.mesh, self.shardings = mesh, batch_shardings
        tokens = batch_shardings["tokens_BxL"]
        self.rows = distributed.process_batch_slice(cfg.train.batch_size, tokens)
        scored = stage_data.rules_by_id(cfg, cfg.rl.rule_scope)
        self.rule_ids = tuple(scored)
        rule_texts = list(scored.values())
        self.rule_tokens_RxQ, self.rule_valid_RxQ = prepare_rule_suffixes(rule_texts, tokenizer)
        self._rule_suffixes = distributed.host_local_to_global(
            (self.rule_tokens_RxQ, self.rule_valid_RxQ), mesh, PartitionSpec())
        model_cfg = self.model_spec = model_spec or ModelSpec.of(cfg.model)
        self._elo = jax.jit(lambda p, t, v, i, s: pref_elo(p, model_cfg, t, v, i, s))
        self._rule_groups = group_rules_by_length(self.rule_valid_RxQ)
        self._mesh_rules = rules
        self._rule_fns: dict[int, Any] = {}
        # -1: measured on the first batch (`measure_rule_chunk`), or set from a checkpoint.
        self.rule_chunk = int(cfg.rl.rule_chunk)
        self.rule_chunk_seconds: dict[int, float] = {}
        self.widths = tuple(widths)  # the rule scorer compiles at each on its first call
        self._compiled_widths = False
        # Each part's rows must still split over the devices the batch is sharded over.
        local_rows = self.rows.stop - self.rows.start
        shard_rows = tokens.shard_shape((cfg.train.batch_size, 1))[0]
        shards = cfg.train.batch_size // shard_rows
        self.parallel_calls = parallel_calls if local_rows % (parallel_calls * shards) == 0 else 1
        if self.parallel_calls != parallel_calls:
            log.info("rl.parallel_calls: the rule scorer runs in one call (%d rows do not split "
                     "into %d parts over %d devices)", local_rows, parallel_calls, shards)

    def _rules_fn(self, chunk: int):
        """The jitted rule scorer at `chunk` rules per step (0 = all at once)."""
        if chunk not in self._rule_fns:
            model_cfg, mesh, rules, groups = (self.model_spec, self.mesh, self._mesh_rules,
                                              self._rule_groups)
            # P(broken) by rows as the tokens; the trunk laid out as the update reads it.
            out_shardings = (self.shardings["tokens_BxL"], self.shardings["trunk_BxLxD"])
            self._rule_fns[chunk] = jax.jit(lambda p, t, v, rt, rv: rule_violation_probs(
                p, model_cfg, t, v, rt, rv, rule_chunk=chunk or None, rule_groups=groups,
                mesh=mesh, rules=rules, return_trunk=True), out_shardings=out_shardings)
        return self._rule_fns[chunk]

    def rule_chunk_candidates(self) -> list[int]:
        """1, 2, 4, ... below the largest rule group, then 0 (all at once)."""
        largest = max(len(indices) for indices, _ in self._rule_groups)
        chunks, c = [], 1
        while c < largest:
            chunks.append(c)
            c *= 2
        return chunks + [0]

    def measure_rule_chunk(self, rm, tokens, valid, repeats: int = 2) -> int:
        """Time every candidate on this batch (one part of it, with parallel calls; after a
        compiling call), keep the fastest; every process takes process 0's choice (one program
        for all)."""
        seconds = {}
        for chunk in self.rule_chunk_candidates():
            fn = self._rules_fn(chunk)
            try:
                jax.block_until_ready(fn(rm, tokens, valid, *self._rule_suffixes))
                best = float("inf")
                for _ in range(repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(fn(rm, tokens, valid, *self._rule_suffixes))
                    best = min(best, time.perf_counter() - start)
                seconds[chunk] = best
            except jax.errors.JaxRuntimeError as error:  # e.g. out of memory: not a candidate
                log.warning("rl.rule_chunk=%d cannot run here (%s): skipped", chunk,
                            str(error).splitlines()[0][:200])
        if not seconds:
            raise RuntimeError("no rl.rule_chunk candidate could score the rules")
        mine = min(seconds, key=seconds.get)
        self.rule_chunk = int(distributed.allgather_objects(mine)[0])
        self.rule_chunk_seconds = seconds
        self._rule_fns = {self.rule_chunk: self._rules_fn(self.rule_chunk)}
        log.info("rl.rule_chunk=-1: rules per step measured on the first batch (seconds: %s); "
                 "using %d (0 = all %d at once)",
                 ", ".join(f"{c}: {t:.3g}" for c, t in seconds.items()), self.rule_chunk,
                 len(self.rule_ids))
        return self.rule_chunk

    def _compile_widths(self, rm) -> None:
        """Compile the scorer at every batch width (`rl.length_buckets`) now, by scoring empty
        dialogues: no width compiles in the middle of the run."""
        rows = (self.rows.stop - self.rows.start) // self.parallel_calls
        for width in self.widths:
            empty = {"tokens_BxL": np.zeros((rows, width), np.int32),
                     "valid_BxL": np.zeros((rows, width), bool)}
            batch = self._global(empty, tuple(empty))
            jax.block_until_ready(self._rules_fn(self.rule_chunk)(
                rm, batch["tokens_BxL"], batch["valid_BxL"], *self._rule_suffixes))
        self._compiled_widths = True

    def _part_batches(self, arrays, part_widths) -> list[dict]:
        """This process's rows as `parallel_calls` global batches of tokens and valid, part p
        cut to `part_widths[p]` (right padding only: each part's rows fit its width)."""
        keys, parts = ("tokens_BxL", "valid_BxL"), self.parallel_calls
        rows = len(arrays["tokens_BxL"]) // parts
        return [self._global({k: arrays[k][i * rows:(i + 1) * rows, :width] for k in keys}, keys)
                for i, width in enumerate(part_widths)]

    def _global(self, arrays, keys):
        local = {k: arrays[k] for k in keys}
        return distributed.host_local_to_global(local, self.mesh,
                                                {k: self.shardings[k] for k in keys})

    def elo_B(self, params, arrays) -> np.ndarray:
        rm = {k: params[k] for k in ("trunk", "pref_rm")}
        keys = ("tokens_BxL", "valid_BxL", "reward_index_B", "turn_start_B")
        batch = self._global(arrays, keys)
        return distributed.host_rows(self._elo(rm, *(batch[k] for k in keys)), self.rows)

    def p_broken_BxR(self, params, arrays, part_widths=None) -> tuple[np.ndarray, list]:
        """(this process's rows of P(broken) [B, R], the trunk's output over each part's
        dialogues [B/P, L_p, D] for the P = `parallel_calls` parts of the batch's rows, part p
        at width L_p = `part_widths[p]` (default: every part at the batch's width), as global
        arrays laid out as the update's batch)."""
        rm = {k: params[k] for k in ("trunk", "rule_rm")}
        width = arrays["tokens_BxL"].shape[1]
        part_widths = tuple(part_widths or (width,) * self.parallel_calls)
        if len(part_widths) != self.parallel_calls or max(part_widths) > width:
            raise ValueError(f"part widths {part_widths}: {self.parallel_calls} parts of a batch "
                             f"{width} wide")
        batches = self._part_batches(arrays, part_widths)
        if self.rule_chunk < 0:
            self.measure_rule_chunk(rm, batches[0]["tokens_BxL"], batches[0]["valid_BxL"])
        if not self._compiled_widths:
            self._compile_widths(rm)
        fn = self._rules_fn(self.rule_chunk)

        def score(batch):  # ready before its thread returns (`parallel.run`)
            return jax.block_until_ready(fn(rm, batch["tokens_BxL"], batch["valid_BxL"],
                                            *self._rule_suffixes))

        scored = parallel.run([functools.partial(score, b) for b in batches], self.parallel_calls)
        if len(scored) == 1:
            p_broken, trunk = scored[0]
            return distributed.host_rows(p_broken, self.rows), [trunk]
        # One process (`rl.parallel.parallel_calls`): every part's rows are this process's.
        return np.concatenate([np.asarray(p) for p, _ in scored]), [t for _, t in scored]

    def host_rewards(self, params, arrays, part_widths=None) -> tuple[np.ndarray, dict, list]:
        """(rewards_BxL: rule term - format penalty at each reward index, per-row figures
        {rule_compliance, p_broken_max, format_penalty}: float [B], the trunk's output over
        each part `p_broken_BxR` returns: the update reads it instead of running the trunk
        again)."""
        r = self.cfg.rl
        p_broken, trunks = self.p_broken_BxR(params, arrays, part_widths)
        compliance_B = np.asarray(aggregate_rules(p_broken, r.rule_aggregation))
        malformed_B = arrays["malformed_B"]
        host_B = r.rule_weight * compliance_B - r.format_penalty * malformed_B
        rewards_BxL = np.zeros(arrays["tokens_BxL"].shape, np.float32)
        rewards_BxL[np.arange(len(host_B)), arrays["reward_index_B"]] = host_B
        return rewards_BxL, {"rule_compliance": compliance_B, "p_broken_max": p_broken.max(axis=1),
                             "format_penalty_rate": malformed_B.astype(np.float64)}, trunks
