"""An agent to evaluate or chat with: a policy and its two reward models, loaded from workdirs.

    agent = load_agent("runs/sft")                      # RMs from runs/pref_rm and runs/rule_rm if present
    agent = load_agent("runs/rl", step=200)             # RMs the rl checkpoint names (its sources)
    agent = load_agent("runs/sft", pref_rm="a", rule_rm="b")

Where each reward model comes from, first match wins:
  1. the explicit `pref_rm` / `rule_rm` workdir;
  2. the policy checkpoint itself: an `rl` checkpoint names the RM workdirs and steps it was trained with
     (with fingerprints, checked on load; an older one holds both RMs in its frozen subtree);
  3. the policy config's `rl.pref_rm_from` / `rl.rule_rm_from` (an `rl` run's sources);
  4. the sibling workdir `<workdir>/../pref_rm` / `<workdir>/../rule_rm` when it has checkpoints.
A missing RM is None: what needs it (reranking, the reward-model judge, win rates) says so.
Each RM comes with the temperature its training fitted for that checkpoint (`train/calibration.py`,
read from the RM workdir's summary.json or eval log); `evaluation.scoring.Scorer` applies it. An RM
without one (trained before calibration, or held inside an older rl checkpoint) has None: scored at 1.0.

Every model shares one frozen trunk (the hydra): an RM whose trunk differs from the policy's (compared by
fingerprint) is an error.
The config (model shape, data dir, sampling knobs) is the policy checkpoint's own, or `config` when
given (then the checkpoint must have that model's shape), with `overrides` applied.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import ml_collections

from sparrow_jax.config import apply_overrides, default_config, validate
from sparrow_jax.dialogue.rules import Rule, load_rules
from sparrow_jax.dialogue.tokenizer import Tokenizer
from sparrow_jax.evaluation.checkpoint_params import (FrozenSourceError, StoredParams, WorkdirError,
                                                      checkpoint_steps, read_config, read_params,
                                                      shape_differences)
from sparrow_jax.train import calibration
from sparrow_jax.train.fingerprint import fingerprint
from sparrow_jax.train.stage_data import select_rules
from sparrow_jax.model import hydra

POLICY_STAGES = ("lm", "sft", "rl")
RM_ROLES = ("pref_rm", "rule_rm")
_KEEP = ("trunk", "policy")  # + the RMs: what inference needs; value / teacher are dropped


def train_hint(stage: str, workdir: str) -> str:
    """The command that makes a `stage` workdir (for error messages)."""
    source = {"sft": " --config.train.init_from=<lm workdir>",
              "pref_rm": " --config.train.init_from=<sft workdir>",
              "rule_rm": " --config.train.init_from=<sft workdir>",
              "rl": " --config.train.init_from=<sft workdir>"}.get(stage, "")
    return (f"`sparrow train --config experiments/tiny_cpu.py:{stage} --workdir {workdir} "
            f"--config.data.dir=<world>{source}`")


@dataclasses.dataclass(frozen=True, eq=False)
class Agent:
    """A policy with (optionally) its reward models, on one device.

    params: {trunk, policy, pref_rm?, rule_rm?} hydra params.  cfg: the policy run's config.
    pref_rm_source / rule_rm_source: where each RM came from ("<workdir>@<step>"), None if absent.
    pref_seq_len / rule_seq_len: dialogue width (tokens) each RM was trained at, used to score.
    pref_rm_temperature / rule_rm_temperature: the calibration temperature fitted for each RM
    checkpoint, None when there is none (or no RM); *_temperature_source: where it was read, or why not.
    rules: the rules the rule RM scores, in index order (`select_rules`).
    """
    workdir: str
    step: int
    stage: str
    cfg: ml_collections.ConfigDict
    params: dict
    tokenizer: Tokenizer
    rules: tuple[Rule, ...]
    pref_rm_source: str | None = None
    rule_rm_source: str | None = None
    pref_seq_len: int = 0
    rule_seq_len: int = 0
    pref_rm_temperature: float | None = None
    rule_rm_temperature: float | None = None
    pref_rm_temperature_source: str = ""
    rule_rm_temperature_source: str = ""

    @property
    def model_cfg(self):
        return self.cfg.model

    @property
    def data_dir(self) -> str:
        return self.cfg.data.dir

    @property
    def has_pref_rm(self) -> bool:
        return "pref_rm" in self.params

    @property
    def has_rule_rm(self) -> bool:
        return "rule_rm" in self.params

    @property
    def label(self) -> str:
        return f"{self.workdir}@{self.step}"


def _fill(schema: dict, stored: dict) -> dict:
    """`stored` over `schema` (nested dicts): keys the schema lacks are dropped, missing ones defaulted.
    A checkpoint written before a config section existed (e.g. `rl`) gets that section's defaults."""
    out = dict(schema)
    for key, value in stored.items():
        if key in schema and isinstance(schema[key], dict) and isinstance(value, dict) \
                and key != "shape":
            out[key] = _fill(schema[key], value)
        elif key in schema:
            out[key] = value
    return out


def _config(stored: StoredParams, config, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    if config is None:
        cfg = ml_collections.ConfigDict(_fill(default_config().to_dict(), stored.config))
    else:  # a given config without a data dir keeps the checkpoint's
        cfg = ml_collections.ConfigDict(config.to_dict())
        cfg.data.dir = cfg.data.dir or stored.config.get("data", {}).get("dir", "")
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    validate(cfg, source=f"config of {stored.workdir}")
    return cfg


def _check_shapes(stored: StoredParams, model_cfg, what: str) -> None:
    roles = tuple(r for r in stored.params if r != "trunk")
    expected = jax.eval_shape(lambda: hydra.init_params(model_cfg, jax.random.PRNGKey(0), roles=roles))
    differ = shape_differences(stored.params, expected)
    if differ:
        raise WorkdirError(
            f"{what} {stored.workdir}@{stored.step} holds a model of another shape than the config: "
            + "; ".join(differ) + ". Evaluate it with the config it was trained with (drop --config and "
            "model overrides), or retrain it with this config.")


def _tokenizer(stored: StoredParams, cfg) -> Tokenizer:
    if stored.tokenizer_model:
        return Tokenizer(stored.tokenizer_model)
    from sparrow_jax.train.stage_data import load_tokenizer
    return load_tokenizer(cfg)


def _rm_candidates(role: str, explicit: str | None, stored: StoredParams, cfg) -> list[str]:
    if explicit:
        return [explicit]
    from_cfg = cfg.rl.get(f"{role}_from", "") if stored.stage == "rl" else ""
    sibling = os.path.join(os.path.dirname(os.path.abspath(stored.workdir)), role)
    return [d for d in (from_cfg, sibling) if d and checkpoint_steps(d)]


@dataclasses.dataclass(frozen=True)
class _RewardModel:
    params: dict
    source: str       # "<workdir>@<step>", + " (rl.pref_rm_from of <rl workdir>@<step>)" when the policy's
                      # rl checkpoint names it; "<rl workdir>@<step> (rl checkpoint)" when stored inside
    cfg: ml_collections.ConfigDict  # the run that trained it (its seq_len, data dir, rules file)
    temperature: float | None = None  # fitted for this checkpoint (`calibration.read_temperature`)
    temperature_source: str = ""      # where it was read, or why there is none


def _load_rm(role: str, explicit: str | None, policy: StoredParams, cfg, device) -> _RewardModel | None:
    """The `role` reward model by the module docstring's order of sources, checked against the policy."""
    if not explicit and role in policy.params:
        named, policy_label = policy.sources.get(role), f"{policy.workdir}@{policy.step}"
        if named is None:  # an older rl checkpoint, holding its reward models
            return _RewardModel(policy.params[role], f"{policy_label} ({policy.stage} checkpoint)", cfg,
                                None, f"held inside the {policy.stage} checkpoint {policy_label}, "
                                "which names no RM workdir to read a fitted temperature from")
        rm_cfg = read_config(named.workdir, named.step)
        rm_cfg = ml_collections.ConfigDict(_fill(default_config().to_dict(), rm_cfg)) if rm_cfg else cfg
        return _RewardModel(policy.params[role], f"{named.label} ({named.via} of {policy_label})", rm_cfg,
                            *calibration.read_temperature(named.workdir, named.step))
    for workdir in _rm_candidates(role, explicit, policy, cfg):
        try:
            stored = read_params(workdir, device=device, roles=("trunk", role))
        except WorkdirError as err:
            raise WorkdirError(f"{err}: run {train_hint(role, workdir)} first") from None
        if role not in stored.params:
            raise WorkdirError(f"{workdir} is a {stored.stage} workdir with no {role}: pass a workdir "
                               f"of the {role} stage (made by {train_hint(role, workdir)})")
        _check_shapes(stored, cfg.model, f"the {role} checkpoint")
        if fingerprint(stored.params["trunk"]) != fingerprint(policy.params["trunk"]):
            raise WorkdirError(
                f"the {role} in {workdir}@{stored.step} has another trunk than the policy in "
                f"{policy.workdir}@{policy.step}: the hydra shares one frozen trunk, so train the reward "
                f"model from this policy's lineage (--config.train.init_from=<its sft workdir>)")
        if stored.tokenizer_model and policy.tokenizer_model and \
                stored.tokenizer_model != policy.tokenizer_model:
            raise WorkdirError(f"the {role} in {workdir} was trained with another tokenizer than the "
                               f"policy in {policy.workdir}")
        rm_cfg = ml_collections.ConfigDict(_fill(default_config().to_dict(), stored.config))
        return _RewardModel(stored.params[role], f"{workdir}@{stored.step}", rm_cfg,
                            *calibration.read_temperature(workdir, stored.step))
    return None


def load_agent(workdir: str, *, step: int | None = None, pref_rm: str | None = None,
               rule_rm: str | None = None, config: ml_collections.ConfigDict | None = None,
               overrides: Sequence[str] = (), rule_scope: str = "rated", device=None) -> Agent:
    """The policy of `workdir` (latest checkpoint, or `step`) and its reward models (module docstring).

    rule_scope: which rules the rule RM scores (`select_rules`): "rated" (default) keeps the rules its
    training data rated (the toy world rates the 8 its oracle can check; scores for rules an RM never
    saw are noise and cost time), "all" every rule of `data.rules`.

    Raises WorkdirError (a ValueError) saying what is wrong and what to run first; ConfigError for a bad
    config or override.
    """
    device = device or jax.local_devices()[0]
    # The value head and teacher are never read; an explicit RM replaces the checkpoint's own.
    roles = _KEEP + tuple(role for role, explicit in (("pref_rm", pref_rm), ("rule_rm", rule_rm))
                          if not explicit)
    try:
        policy = read_params(workdir, step, device=device, roles=roles)
    except FrozenSourceError:
        raise
    except WorkdirError as err:
        raise WorkdirError(f"{err}: run {train_hint('sft', workdir)} first") from None
    if policy.stage not in POLICY_STAGES or "policy" not in policy.params:
        raise WorkdirError(f"{workdir} is a {policy.stage} workdir, not a policy: pass a workdir of the "
                           f"{', '.join(POLICY_STAGES)} stages (reward models go in --pref-rm / --rule-rm)")
    cfg = _config(policy, config, overrides)
    _check_shapes(policy, cfg.model, "the checkpoint")
    params = {k: v for k, v in policy.params.items() if k in _KEEP}
    rms = {role: _load_rm(role, explicit, policy, cfg, device)
           for role, explicit in (("pref_rm", pref_rm), ("rule_rm", rule_rm))}
    params.update({role: rm.params for role, rm in rms.items() if rm is not None})
    rule_cfg = rms["rule_rm"].cfg if rms["rule_rm"] else cfg
    seq_len = {role: int(rm.cfg.train.seq_len if rm else cfg.train.seq_len) for role, rm in rms.items()}
    return Agent(workdir=workdir, step=policy.step, stage=policy.stage, cfg=cfg, params=params,
                 tokenizer=_tokenizer(policy, cfg),
                 rules=select_rules(load_rules(rule_cfg.data.rules or None), rule_cfg.data.dir, rule_scope),
                 pref_rm_source=rms["pref_rm"] and rms["pref_rm"].source,
                 rule_rm_source=rms["rule_rm"] and rms["rule_rm"].source,
                 pref_seq_len=seq_len["pref_rm"], rule_seq_len=seq_len["rule_rm"],
                 **{f"{role}_{key}": getattr(rm, key) for role, rm in rms.items() if rm is not None
                    for key in ("temperature", "temperature_source")})
