"""Per-stage losses over the hydra, batch layouts, and one builder for a stage's step.

The batches are exactly those of `sparrow_jax.data.pipelines` (docs/interfaces.md,
"Data pipelines"), restricted to the keys a stage's loss reads (`DEVICE_KEYS`);
the RL batch is made by the rollout code. Global batch B; token arrays int32,
masks bool:
  lm        tokens/positions/segment_ids/valid/loss_mask _BxL (packed documents)
  sft       tokens/positions/valid/loss_mask _BxL (loss on agent + search-query turns)
  pref_rm   tokens/positions/valid _BxKxL, last_index_BxK (the candidate's last
            token), turn_start_BxK (its final agent turn's role token), candidate_valid_BxK, chosen_B, supported/plausible (+ _mask) _BxK
  rule_rm   tokens/positions/valid _BxL (dialogue) and rule_tokens/rule_positions/
            rule_valid _BxR (the rule question suffix), rule_last_index_B, broken_B
  rl        tokens_BxL, valid_BxL, policy_mask_BxL (agent and search-query tokens),
            sampled_mask_BxL (those the policy drew itself: the policy gradient's tokens),
            rewards_BxL (reward parts known on the host, received at token t: rule term
            minus format penalty), reward_index_B (the final agent eot, where the
            preference RM's normalised Elo is added inside the step), turn_start_B
            (that turn's role token)
Logits at position t predict token t + 1; the losses are given full-length logits and
targets shifted one left (`next_token_targets`), the last position masked out.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparrow_jax import sharding as shd
from sparrow_jax.config import STAGES, ConfigError, validate
from sparrow_jax.losses.a2c import a2c_loss, combine_part_metrics
from sparrow_jax.losses.preference import preference_loss
from sparrow_jax.losses.rule import rule_loss
from sparrow_jax.losses.sft import next_token_targets, sft_loss
from sparrow_jax.model import hydra
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.rewards.pref_scoring import read_elo
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.part_step import PartSteps, make_part_steps
from sparrow_jax.train.state import sharded_state_factory
from sparrow_jax.train.step import TrainStep, make_train_step
from sparrow_jax.train.trainable import STAGE_ROLES

NUM_CANDIDATES = 4  # default K: preference comparisons, 2 with evidence, 2 without [likely]
RULE_LEN = 64  # default R: padded length of the rule question suffix

# stage -> the batch keys its loss reads (everything else stays on the host)
DEVICE_KEYS = {
    "lm": ("tokens_BxL", "positions_BxL", "segment_ids_BxL", "valid_BxL", "loss_mask_BxL"),
    "sft": ("tokens_BxL", "positions_BxL", "segment_ids_BxL", "valid_BxL", "loss_mask_BxL"),
    "pref_rm": ("tokens_BxKxL", "positions_BxKxL", "valid_BxKxL", "last_index_BxK",
                "turn_start_BxK", "candidate_valid_BxK", "chosen_B", "supported_BxK", "supported_mask_BxK",
                "plausible_BxK", "plausible_mask_BxK"),
    "rule_rm": ("tokens_BxL", "positions_BxL", "valid_BxL", "rule_tokens_BxR",
                "rule_positions_BxR", "rule_valid_BxR", "rule_last_index_B", "broken_B"),
}


def device_batch(stage: str, batch: dict) -> dict:
    """The subset of a pipeline batch that the stage's loss reads."""
    return {key: batch[key] for key in DEVICE_KEYS[stage]}


def _lm(model_cfg, **_):
    def loss_fn(params, batch, rng):
        del rng
        out = hydra.forward(params, model_cfg, batch["tokens_BxL"],
                            positions_BxL=batch["positions_BxL"], valid_BxL=batch["valid_BxL"],
                            segment_ids_BxL=batch.get("segment_ids_BxL"), roles=("policy",))
        return sft_loss(out["policy"], next_token_targets(batch["tokens_BxL"]),
                        next_token_targets(batch["loss_mask_BxL"]))
    return loss_fn


def pref_elo_BxK(params, model_cfg, batch) -> jax.Array:
    """Elo of each candidate (`pref_scoring.read_elo` of its final agent turn): float32 [B, K]."""
    b, k, length = batch["tokens_BxKxL"].shape
    flat = lambda x: x.reshape((b * k, length))
    out = hydra.forward(params, model_cfg, flat(batch["tokens_BxKxL"]),
                        positions_BxL=flat(batch["positions_BxKxL"]),
                        valid_BxL=flat(batch["valid_BxKxL"]), roles=("pref_rm",))
    elo_N = read_elo(out, batch["last_index_BxK"].reshape(b * k),
                     batch["turn_start_BxK"].reshape(b * k))
    return elo_N.reshape((b, k))


def _pref_rm(model_cfg, aux_weight=0.5, centring_coef=1e-3, **_):
    def loss_fn(params, batch, rng):
        del rng
        elo_BxK = pref_elo_BxK(params, model_cfg, batch)
        # GopherCite's auxiliary target: the candidate is supported AND plausible,
        # defined where both labels exist. The Elo doubles as its logit.
        aux_target = jnp.logical_and(batch["supported_BxK"], batch["plausible_BxK"])
        aux_mask = jnp.logical_and(batch["supported_mask_BxK"], batch["plausible_mask_BxK"])
        return preference_loss(
            elo_BxK, batch["chosen_B"], batch["candidate_valid_BxK"],
            aux_logits_BxK=elo_BxK, aux_targets_BxK=aux_target.astype(jnp.float32),
            aux_mask_BxK=aux_mask, aux_weight=aux_weight, centring_coef=centring_coef)
    return loss_fn


def rule_logits_Bx2(params, model_cfg, batch) -> jax.Array:
    """Rule RM "No"/"Yes" logits for (dialogue, rule question) pairs: float32 [B, 2].

    The dialogue (right-padded to L) and the question suffix (R) run as one
    sequence; padding between them is invalid, and causality follows slots and
    positions, so this equals scoring the unpadded concatenation.
    """
    seq_len = batch["tokens_BxL"].shape[1]
    cat = lambda a, b: jnp.concatenate([a, b], axis=1)
    out = hydra.forward(params, model_cfg, cat(batch["tokens_BxL"], batch["rule_tokens_BxR"]),
                        positions_BxL=cat(batch["positions_BxL"], batch["rule_positions_BxR"]),
                        valid_BxL=cat(batch["valid_BxL"], batch["rule_valid_BxR"]),
                        roles=("rule_rm",))
    index_Bx1x1 = (seq_len + batch["rule_last_index_B"])[:, None, None]
    return jnp.take_along_axis(out["rule_rm"], index_Bx1x1, axis=1)[:, 0]


def _rule_rm(model_cfg, **_):
    def loss_fn(params, batch, rng):
        del rng
        return rule_loss(rule_logits_Bx2(params, model_cfg, batch),
                         batch["broken_B"].astype(jnp.int32))
    return loss_fn


def loss_slot_mask(policy_mask_BxL, rewards_BxL, reward_index_B, xp=jnp):
    """bool [B, L]: the slots the RL loss reads. Every slot t whose NEXT token is a policy
    token (its logits give that token's log-prob, KL, entropy and value), every slot whose
    next token carries a reward, and `reward_index_B` (the preference RM's Elo). `xp`:
    jax.numpy in the loss, numpy for the trainer's host check of the same slots."""
    def next_nonzero(x_BxL):
        return xp.concatenate([x_BxL[:, 1:] != 0, xp.zeros((x_BxL.shape[0], 1), bool)], axis=1)
    slots_1xL = xp.arange(policy_mask_BxL.shape[1])[None, :]
    return (next_nonzero(policy_mask_BxL) | next_nonzero(rewards_BxL)
            | (slots_1xL == reward_index_B[:, None]))


def policy_read_slots(policy_mask_BxL, rewards_BxL, reward_index_B, read_len: int):
    """int32 [B, K], K = min(L, read_len): the slots the RL loss reads (`loss_slot_mask`),
    ascending, then filler.

    The returns are reverse cumulative sums of the rewards, which sit only at read slots, so
    they are the same over the read slots in order as over all L; filler slots (unread,
    mask 0, reward 0) come after them. A row with more than K such slots would lose some:
    the trainer checks (`rl_read_len`).
    """
    length = policy_mask_BxL.shape[1]
    slots_1xL = jnp.arange(length, dtype=jnp.int32)[None, :]
    needed_BxL = loss_slot_mask(policy_mask_BxL, rewards_BxL, reward_index_B)
    key_BxL = jnp.where(needed_BxL, slots_1xL, length + slots_1xL)
    return jnp.argsort(key_BxL, axis=1)[:, :min(length, read_len)].astype(jnp.int32)


def _rl(model_cfg, alpha=0.1, value_coef=1.0, entropy_coef=0.0, kl_mode="loss", kl_coef=0.1,
        elo_weight=1.0, elo_mean=0.0, elo_std=1.0, value_grad_to_policy=True, read_len=0, **_):
    """A2C on rollouts. One trunk pass feeds policy, value, teacher and the preference RM
    (the batch's `trunk_BxLxD` if it has one: `build_stage(trunk_input=True)`):
    the RM's Elo at each row's `reward_index_B` (the final agent eot), normalised by
    (elo_mean, elo_std) of the starting policy, is added to the host-computed reward
    parts (`rewards_BxL`: rule term minus format penalty) at that token. The policy
    gradient credits `sampled_mask_BxL` only (`a2c_loss`); value_grad_to_policy=False
    keeps the value loss out of the policy top (`hydra.forward`). read_len > 0: the heads
    read only the slots the loss needs (`policy_read_slots`; the LM heads' [B, K, V]
    instead of [B, L, V]); 0 = every slot. A batch that is a part of a step's batch (the RL
    trainer's length groups, `train.part_step`) carries `loss_denominators_3`: the whole
    batch's (rows, policy tokens, sampled tokens, `rl_loss_denominators`), which its means
    divide by, so that its loss and metrics are its share of the whole batch's."""
    def loss_fn(params, batch, rng):
        del rng
        roles = ("policy", "value", "teacher") + (("pref_rm",) if elo_weight else ())
        rewards_BxL = batch["rewards_BxL"].astype(jnp.float32)
        rows, token_counts = rewards_BxL.shape[0], None
        if "loss_denominators_3" in batch:
            rows, *token_counts = (batch["loss_denominators_3"][i] for i in range(3))
        read_BxK = None
        if read_len:
            read_BxK = policy_read_slots(batch["policy_mask_BxL"], rewards_BxL,
                                         batch["reward_index_B"], read_len)
        out = hydra.forward(params, model_cfg, batch["tokens_BxL"], valid_BxL=batch["valid_BxL"],
                            roles=roles, value_grad_to_policy=value_grad_to_policy,
                            read_BxK=read_BxK, trunk_BxLxD=batch.get("trunk_BxLxD"))
        extra = {}
        if elo_weight:
            index_Bx1 = batch["reward_index_B"][:, None]
            elo_B = jax.lax.stop_gradient(
                read_elo(out, batch["reward_index_B"], batch["turn_start_B"], read_BxK))
            elo_term_B = elo_weight * (elo_B - elo_mean) / elo_std
            at_index_BxL = jnp.arange(rewards_BxL.shape[1])[None, :] == index_Bx1
            rewards_BxL = rewards_BxL + jnp.where(at_index_BxL, elo_term_B[:, None], 0.0)
            extra = {"elo": jnp.sum(elo_B) / rows, "elo_term": jnp.sum(elo_term_B) / rows}

        def next_at_read(x_BxL):  # row t: x[:, t + 1], at the read slots
            x_BxL = next_token_targets(x_BxL)
            return x_BxL if read_BxK is None else hydra.read_slots(x_BxL, read_BxK)
        loss, metrics = a2c_loss(out["policy"], out["teacher"], out["value"],
                                 next_at_read(batch["tokens_BxL"]), next_at_read(rewards_BxL),
                                 next_at_read(batch["policy_mask_BxL"]),
                                 next_at_read(batch["sampled_mask_BxL"]), alpha=alpha,
                                 value_coef=value_coef, entropy_coef=entropy_coef,
                                 kl_mode=kl_mode, kl_coef=kl_coef, token_counts=token_counts)
        return loss, {**metrics, **extra, "reward": jnp.sum(rewards_BxL) / rows}
    return loss_fn


_LOSSES = {"lm": _lm, "sft": _lm, "pref_rm": _pref_rm, "rule_rm": _rule_rm, "rl": _rl}


def loss_fn_for_stage(stage: str, model_cfg, **loss_kwargs) -> Callable:
    """(params, batch, rng) -> (loss, metrics) for a stage, via hydra.forward.

    loss_kwargs are the loss knobs: pref_rm aux_weight / centring_coef; rl alpha,
    value_coef, entropy_coef, kl_mode, kl_coef, elo_weight, elo_mean, elo_std,
    value_grad_to_policy.
    """
    if stage not in _LOSSES:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    return _LOSSES[stage](model_cfg, **loss_kwargs)


def rl_loss_denominators(batch: dict) -> np.ndarray:
    """float32 [3]: what the RL loss's means over `batch` (host arrays) divide by, (rows,
    policy tokens, sampled tokens); the tokens counted as `a2c_loss` counts them, at the
    slot before each (the read slots hold every such slot: `rl_read_len`)."""
    policy_BxL = np.asarray(batch["policy_mask_BxL"], np.float32)[:, 1:]
    sampled_BxL = np.asarray(batch["sampled_mask_BxL"], np.float32)[:, 1:] * policy_BxL
    return np.asarray([len(policy_BxL), policy_BxL.sum(), sampled_BxL.sum()], np.float32)


def rl_part_shapes(shapes: dict) -> dict:
    """An rl batch layout (`batch_shapes`) as one part's of a step's batch: with the whole
    batch's `loss_denominators_3` (`rl_loss_denominators`)."""
    return {**shapes, "loss_denominators_3": jax.ShapeDtypeStruct((3,), jnp.float32)}


def rl_read_len(r) -> int:
    """The most slots an RL row's loss reads (`policy_read_slots`), from the `rl` section:
    a rollout adds at most two policy turns (a search query and the answer), each a role
    token, up to max_new_tokens sampled tokens and an eot closing an over-length turn; the
    slot before each is read, and the final eot for the Elo."""
    return 2 * (int(r.max_new_tokens) + 2) + 1


def loss_kwargs_from_config(cfg, stage: str) -> dict:
    if stage == "pref_rm":
        return {"aux_weight": cfg.loss.pref_aux_weight, "centring_coef": cfg.loss.pref_centring}
    if stage == "rl":
        r = cfg.rl
        return {"alpha": r.alpha, "value_coef": r.value_coef, "entropy_coef": r.entropy_coef,
                "kl_mode": r.kl_mode, "kl_coef": r.kl_coef, "elo_weight": r.elo_weight,
                "value_grad_to_policy": r.value_grad_to_policy, "read_len": rl_read_len(r)}
    return {}


def comparisons_per_batch(batch_size: int, num_candidates: int) -> int:
    """pref_rm: train.batch_size counts sequences, so a batch holds batch_size // K comparisons."""
    n = batch_size // num_candidates
    if n == 0:
        raise ValueError(f"pref_rm batch of {batch_size} sequences < {num_candidates} candidates")
    return n


def batch_shapes(stage: str, batch_size: int, seq_len: int, num_candidates: int = NUM_CANDIDATES,
                 rule_len: int = RULE_LEN, trunk: tuple[int, Any] | None = None
                 ) -> dict[str, jax.ShapeDtypeStruct]:
    """Global batch layout of a stage's loss inputs. For pref_rm, batch_size counts
    sequences (batch_size // num_candidates comparisons). `trunk` (rl only): (d_model,
    compute dtype) adds `trunk_BxLxD`, the trunk's output over the tokens, computed by the
    caller (`build_stage(trunk_input=True)`)."""
    S = jax.ShapeDtypeStruct
    if stage == "rl":
        shapes = {"tokens_BxL": S((batch_size, seq_len), jnp.int32),
                  "valid_BxL": S((batch_size, seq_len), jnp.bool_),
                  "policy_mask_BxL": S((batch_size, seq_len), jnp.float32),
                  "sampled_mask_BxL": S((batch_size, seq_len), jnp.float32),
                  "rewards_BxL": S((batch_size, seq_len), jnp.float32),
                  "reward_index_B": S((batch_size,), jnp.int32),
                  "turn_start_B": S((batch_size,), jnp.int32)}
        if trunk is not None:
            d_model, dtype = trunk
            shapes["trunk_BxLxD"] = S((batch_size, seq_len, d_model), dtype)
        return shapes
    if trunk is not None:
        raise ValueError(f"only the rl stage takes its trunk from the batch, not {stage!r}")
    if stage not in DEVICE_KEYS:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    from sparrow_jax.data.pipelines import batch_spec
    rows = comparisons_per_batch(batch_size, num_candidates) if stage == "pref_rm" else batch_size
    spec = batch_spec(stage, rows, seq_len, num_candidates, rule_len)
    return {key: S(spec[key][0], spec[key][1]) for key in DEVICE_KEYS[stage]}


def example_batch(stage: str, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                  num_candidates: int = NUM_CANDIDATES, rule_len: int = 8) -> dict[str, np.ndarray]:
    """A deterministic random batch with the stage's layout (tests, benchmarks)."""
    rs = np.random.RandomState(seed)
    shapes = batch_shapes(stage, batch_size, seq_len, num_candidates, rule_len)
    out = {}
    for name, s in shapes.items():
        if name.startswith(("tokens", "rule_tokens")):
            out[name] = rs.randint(0, vocab_size, s.shape).astype(np.int32)
        elif name.startswith(("positions", "rule_positions")):
            offset = seq_len if name.startswith("rule") else 0
            out[name] = np.broadcast_to(offset + np.arange(s.shape[-1], dtype=np.int32),
                                        s.shape).copy()
        elif name == "segment_ids_BxL":
            out[name] = np.ones(s.shape, np.int32)
        elif name.startswith(("valid", "candidate_valid", "rule_valid")):
            out[name] = np.ones(s.shape, bool)
        elif name in ("loss_mask_BxL", "policy_mask_BxL"):
            out[name] = (rs.rand(*s.shape) < 0.5).astype(s.dtype)
        elif name == "sampled_mask_BxL":  # no draw: the first token of each policy run is forced
            policy = out["policy_mask_BxL"]
            out[name] = policy * np.pad(policy[:, :-1], ((0, 0), (1, 0)))
        elif name == "rewards_BxL":
            rewards = np.zeros(s.shape, np.float32)
            rewards[:, -1] = rs.randn(s.shape[0])
            out[name] = rewards
        elif name in ("reward_index_B", "last_index_BxK"):
            out[name] = rs.randint(seq_len // 2, seq_len, s.shape).astype(np.int32)
        elif name in ("turn_start_B", "turn_start_BxK"):  # no draw: other fields keep their values
            out[name] = np.full(s.shape, seq_len // 4, np.int32)
        elif name == "rule_last_index_B":
            out[name] = rs.randint(0, rule_len, s.shape).astype(np.int32)
        elif name == "chosen_B":
            out[name] = rs.randint(0, num_candidates, s.shape).astype(np.int32)
        elif s.dtype == np.bool_:  # labels and label masks
            out[name] = rs.rand(*s.shape) < 0.5
        else:
            raise AssertionError(name)
    return out


@dataclasses.dataclass
class StageSetup:
    """Everything needed to run or lower one stage's update step on a mesh."""
    stage: str
    step: TrainStep
    init_fn: Callable[[jax.Array], Any]   # rng -> sharded TrainState
    abstract_state: Any                    # ShapeDtypeStructs with shardings
    state_shardings: Any
    batch_shapes: dict
    loss_fn: Callable
    schedule: Callable
    optimizer: Any
    loss_kwargs: dict

    def step_with(self, cfg, mesh, **loss_kwargs) -> TrainStep:
        """The same jitted step with some loss knobs changed (e.g. the RL stage's Elo
        normaliser, known only after the state exists)."""
        loss_fn = loss_fn_for_stage(self.stage, cfg.model, **{**self.loss_kwargs, **loss_kwargs})
        return make_train_step(cfg, loss_fn, mesh, self.state_shardings, self.batch_shapes,
                               self.optimizer, self.schedule)

    def part_steps_with(self, cfg, mesh, parts: int, **loss_kwargs) -> PartSteps:
        """The rl step as `parts` length-grouped part gradients and one apply
        (`train.part_step`), with the loss knobs of `step_with`."""
        if self.stage != "rl":
            raise ValueError(f"only the rl stage updates from parts, not {self.stage!r}")
        loss_fn = loss_fn_for_stage(self.stage, cfg.model, **{**self.loss_kwargs, **loss_kwargs})
        rows = self.batch_shapes["tokens_BxL"].shape[0] // parts
        shapes = rl_part_shapes({k: jax.ShapeDtypeStruct((rows,) + v.shape[1:], v.dtype)
                                 for k, v in self.batch_shapes.items()})
        return make_part_steps(cfg, loss_fn, combine_part_metrics, mesh, self.state_shardings,
                               self.optimizer, self.schedule, parts, shapes)


def build_stage(cfg, mesh, stage: str | None = None, total_steps: int | None = None,
                batch_size: int | None = None, seq_len: int | None = None,
                log_unsharded: bool = True, trunk_input: bool = False,
                **loss_kwargs) -> StageSetup:
    """Optimizer, sharded state factory and jitted step for `stage` (default cfg.train.stage).

    trunk_input (rl): the batch carries `trunk_BxLxD`, the frozen trunk's output over its
    tokens, and the step does not run the trunk (the RL trainer's rule scorer has run it
    on the same tokens: `rule_violation_probs(return_trunk=True)`).

    Raises ConfigError for an rl config that its A2C update cannot train (`validate`'s
    training checks: the rollouts must sample from the policy itself), and for looped
    bfloat16 layers with relative positions on XLA:CPU, whose backward it cannot run."""
    stage = stage or cfg.train.stage
    if stage == "rl":
        validate(cfg, source=f"rl stage of {cfg.name}", training=True)
    m = cfg.model
    if (jax.default_backend() == "cpu" and not m.scan_layers and m.compute_dtype == "bfloat16"
            and m.position == "relative"):
        # XLA:CPU fails at run time: "Unsupported element type for DotThunk::Execute:
        # BF16 x BF16 = F32" (the looped backward of the relative-position projection).
        raise ConfigError(f"{cfg.name}: model.compute_dtype=bfloat16 with model.scan_layers=False "
                          "and model.position=relative cannot train on XLA:CPU; set "
                          "model.scan_layers=True or compute in float32")
    rules = shd.rules_from_config(cfg.mesh)
    roles = STAGE_ROLES[stage]
    role_lr_scales = {"value": cfg.rl.value_lr_scale} if "value" in roles else None
    optimizer, schedule = make_optimizer(cfg.train, total_steps or cfg.train.steps, role_lr_scales)

    def init_params(rng):
        return hydra.init_params(cfg.model, rng, roles=roles)

    axes = hydra.param_logical_axes(cfg.model, roles=roles)
    if log_unsharded:
        shd.log_unsharded_params(axes, jax.eval_shape(init_params, jax.random.PRNGKey(0)),
                                 mesh, rules)
    init_fn, abstract_state, state_sh = sharded_state_factory(
        init_params, axes, stage, optimizer, mesh, rules)
    trunk = (m.d_model, ModelSpec.of(m).dtype) if trunk_input else None
    shapes = batch_shapes(stage, batch_size or cfg.train.batch_size, seq_len or cfg.train.seq_len,
                          cfg.data.num_candidates, cfg.data.rule_len, trunk=trunk)
    loss_kwargs = {**loss_kwargs_from_config(cfg, stage), **loss_kwargs}
    loss_fn = loss_fn_for_stage(stage, cfg.model, **loss_kwargs)
    step = make_train_step(cfg, loss_fn, mesh, state_sh, shapes, optimizer, schedule)
    return StageSetup(stage, step, init_fn, abstract_state, state_sh, shapes, loss_fn, schedule,
                      optimizer, loss_kwargs)
