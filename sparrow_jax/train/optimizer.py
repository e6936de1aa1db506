"""Optimizer and learning-rate schedule from `cfg.train`."""
from __future__ import annotations

from typing import Mapping

import jax
import optax


def make_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then cosine decay to 0 or constant."""
    peak = float(train_cfg.learning_rate)
    warmup = int(min(train_cfg.warmup_steps, max(total_steps - 1, 0)))
    if train_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=0.0)
    if train_cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    raise ValueError(f"train.schedule={train_cfg.schedule!r} is not cosine or constant")


def scale_role_updates(scales: Mapping[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of some top-level roles (e.g. {'value': 10.0}): a per-role step size.

    Adam and Adafactor steps are about `learning_rate` per parameter whatever the gradient's
    size, so a role that must move far in few steps needs a larger rate, not a larger loss weight.
    """
    def update_fn(updates, state, params=None):
        del params
        return {role: jax.tree.map(lambda u, s=scales[role]: u * s, subtree) if role in scales
                else subtree for role, subtree in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(train_cfg, total_steps: int, role_lr_scales: Mapping[str, float] | None = None):
    """(GradientTransformation, schedule): global-norm clipping, AdamW or Adafactor, role scales.

    Adafactor runs without momentum, without its own update clipping (the global
    norm clip replaces it) and without parameter-scale multiplication, so the
    configured learning rate is the step size (as in Sparrow's 2e-6).
    `role_lr_scales` multiplies the step size of some roles (`scale_role_updates`).
    """
    schedule = make_schedule(train_cfg, total_steps)
    if train_cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8,
                          weight_decay=float(train_cfg.weight_decay))
    elif train_cfg.optimizer == "adafactor":
        opt = optax.adafactor(learning_rate=schedule, multiply_by_parameter_scale=False,
                              clipping_threshold=None, momentum=None,
                              weight_decay_rate=float(train_cfg.weight_decay) or None)
    else:
        raise ValueError(f"train.optimizer={train_cfg.optimizer!r} is not adamw or adafactor")
    parts = []
    if train_cfg.grad_clip_norm and train_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)))
    parts.append(opt)
    scaled = {role: float(s) for role, s in (role_lr_scales or {}).items() if float(s) != 1.0}
    if scaled:
        parts.append(scale_role_updates(scaled))
    return optax.chain(*parts), schedule
