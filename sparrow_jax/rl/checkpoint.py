"""What an rl checkpoint holds: what rl trains, and its frozen parts by reference.

The TrainState of the rl stage trains `params` = {policy, value} and carries `frozen` =
{trunk, teacher, pref_rm, rule_rm}, which never change during the run. A checkpoint stores
step, params, opt_state and rng (`state.without_frozen`) and, in its meta, where each frozen
part came from (`train/frozen_sources.py`):

    trunk, teacher   train.init_from (the SFT workdir) at the step the run started from;
                     the teacher is its `policy` (its `teacher` if it is itself an rl run)
    pref_rm, rule_rm rl.pref_rm_from / rl.rule_rm_from at their steps

each with its fingerprint. Resuming re-reads them from there and checks the fingerprints.
"""
from __future__ import annotations

import dataclasses
import logging

from sparrow_jax.train import frozen_sources
from sparrow_jax.train.checkpoints import Checkpointer, CheckpointError, Restored
from sparrow_jax.train.frozen_sources import FrozenSource
from sparrow_jax.train.init_from import Source
from sparrow_jax.train.state import TrainState, with_frozen, without_frozen

log = logging.getLogger(__name__)


def frozen_references(frozen: dict, init: Source,
                      reward_models: dict[str, Source]) -> dict[str, FrozenSource]:
    """{part: FrozenSource} for every frozen part of a fresh rl state.

    Args:
      frozen: the state's frozen subtree {trunk, teacher, pref_rm, rule_rm} (sharded arrays).
      init: the train.init_from source the trunk and teacher were grafted from.
      reward_models: {role: Source} the reward model tops were read from.
    """
    teacher_role = "teacher" if "teacher" in init.params else "policy"
    refs = {"trunk": frozen_sources.record(frozen["trunk"], init.workdir, init.step, "trunk",
                                           "train.init_from"),
            "teacher": frozen_sources.record(frozen["teacher"], init.workdir, init.step, teacher_role,
                                             "train.init_from")}
    for role, source in reward_models.items():
        refs[role] = frozen_sources.record(frozen[role], source.workdir, source.step, role,
                                           f"rl.{role}_from")
    missing = sorted(set(frozen) - set(refs))
    if missing:
        raise ValueError(f"frozen parts without a source: {missing}")
    return refs


def save(ckpt: Checkpointer, step: int, state: TrainState, references: dict[str, FrozenSource],
         meta: dict, assets: dict[str, bytes]) -> None:
    """Start saving `state` without its frozen parts, `references` in its meta."""
    ckpt.save(step, without_frozen(state), meta={**meta, frozen_sources.META_KEY:
                                                 frozen_sources.to_meta(references)},
              assets=assets, force=True)


def restore(ckpt: Checkpointer, abstract_state: TrainState, config_json: str,
            cfg=None) -> tuple[Restored, dict[str, FrozenSource]] | None:
    """The newest usable rl checkpoint as a whole TrainState (frozen parts re-read), or None.

    Raises CheckpointError when a frozen source is missing or changed (naming it), or when the
    checkpoint stores its frozen parts itself (written before they were kept by reference).
    `cfg`, if given, is the run's config: a source it names differently is logged (the
    checkpoint's sources win: they are what the run was trained against).
    """
    steps = ckpt.steps()
    if not steps:
        return None
    tree = ckpt.stored_tree(steps[-1])
    if tree is not None and tree.get("frozen"):
        raise CheckpointError(
            f"{ckpt.directory}/{steps[-1]} stores the frozen trunk, teacher and reward models: an rl "
            f"checkpoint written before they were kept by reference, which this version cannot "
            f"resume; evaluate it with `sparrow eval`, or start the rl run again in a new workdir")
    restored = ckpt.restore_latest(without_frozen(abstract_state), config_json=config_json)
    if restored is None:
        return None
    user = f"the rl checkpoint {ckpt.directory}/{restored.step}"
    references = frozen_sources.from_meta(restored.meta)
    missing = sorted(set(abstract_state.frozen) - set(references))
    if missing:
        raise CheckpointError(f"{user} names no source for its frozen {', '.join(missing)}: "
                              f"start the rl run again in a new workdir")
    if cfg is not None:
        _log_config_differences(cfg, references)
    frozen = frozen_sources.read_parts(references, user, targets=abstract_state.frozen)
    return dataclasses.replace(restored, state=with_frozen(restored.state, frozen)), references


def _log_config_differences(cfg, references: dict[str, FrozenSource]) -> None:
    for part, ref in references.items():
        named = cfg.train.init_from if ref.via == "train.init_from" else cfg.rl.get(f"{part}_from", "")
        if named and frozen_sources.workdir_ref(named) != ref.workdir:
            log.warning("%s=%s, but the checkpoint's %s comes from %s: resuming with the latter",
                        ref.via, named, part, ref.label)
