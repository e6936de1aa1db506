"""The hydra: one shared trunk, one top (layers + head) per role, as pure functions.

Params (unboxed, no flax metadata):
  {'trunk':   {'embedding': [V, D], 'layers': stack of n_frozen_layers (absent if 0)},
   'policy':  {'layers': stack, 'final_norm': {'scale'}, 'unembed': [D, V] (absent if tied)},
   'teacher': same as policy,
   'pref_rm': {'layers', 'final_norm', 'head': [D, 1]
               (+ 'unembed': [D, V] unless tied, 'likelihood_scale': [] with pref_rm_likelihood)},
   'rule_rm': {'layers', 'final_norm', 'head': [D, 2]},
   'value':   {'hidden_0': [D, Hv], 'hidden_1': [Hv, Hv], ..., 'out': [Hv, 1]}}
A stack is `{'attn', 'attn_norm', 'mlp', 'mlp_norm'}` with a leading layers axis.
`value` has no layers of its own: it reads the policy top's final-normed output,
so asking for `value` always brings in (and runs) the policy top.
"""
from __future__ import annotations

import functools
from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparrow_jax.config import ROLES
from sparrow_jax.model import cache as kv_cache
from sparrow_jax.losses.sft import next_token_targets, token_log_probs
from sparrow_jax.model.cache import broadcast_cache, cache_logical_axes, init_cache, tops_for
from sparrow_jax.model.heads import Embed, RoleHead, ValueHead
from sparrow_jax.model.layers import take_rows
from sparrow_jax.model.spec import ModelSpec
from sparrow_jax.model.stack import (apply_stack, attention_context,
                                     cached_attention_context, init_stack, split_layers)

__all__ = ["init_params", "param_logical_axes", "forward", "extend", "read_slots", "count_params",
           "per_layer_params",
           "init_cache", "broadcast_cache", "cache_logical_axes", "head_kind", "lm_head_tops"]

_HEAD_OF_TOP = {"policy": "lm", "teacher": "lm", "pref_rm": "elo", "rule_rm": "yes_no"}
# The teacher shares the policy's seed: it starts as a copy of the policy top.
_SEED_OF = {"trunk": 0, "policy": 1, "teacher": 1, "pref_rm": 2, "rule_rm": 3, "value": 4}


def head_kind(spec: ModelSpec, top: str) -> str:
    """The `RoleHead` kind of a top: the preference RM's is 'elo_lm' with pref_rm_likelihood."""
    if top == "pref_rm" and spec.pref_rm_likelihood:
        return "elo_lm"
    return _HEAD_OF_TOP[top]


def lm_head_tops(model_cfg) -> tuple[str, ...]:
    """The tops that own an LM head (an unembedding, or the tied embedding)."""
    spec = ModelSpec.of(model_cfg)
    return tuple(t for t in _HEAD_OF_TOP if head_kind(spec, t) in ("lm", "elo_lm"))


def _param_roles(roles: Iterable[str]) -> tuple[tuple[str, ...], bool]:
    """(tops to build, whether to build the value head) for the requested roles."""
    roles = tuple(roles)
    return tops_for(roles), "value" in roles


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_module(module: nn.Module, input_shapes, rng: jax.Array):
    """Boxed params of a small module, from zero inputs of the given (shape, dtype)s."""
    inputs = [jnp.zeros(shape, dtype) for shape, dtype in input_shapes]
    return module.init(rng, *inputs)["params"]


def _boxed_params(spec: ModelSpec, rng: jax.Array, roles: Iterable[str]):
    """The param tree with nn.Partitioned leaves (logical axis metadata)."""
    tops, with_value = _param_roles(roles)
    embed_key, layers_key = jax.random.split(jax.random.fold_in(rng, _SEED_OF["trunk"]))
    x_shape = ((1, 1, spec.d_model), spec.compute_dtype)
    tree = {"trunk": _init_module(Embed(spec), (((1, 1), "int32"),), embed_key)}
    if spec.n_frozen_layers:
        tree["trunk"]["layers"] = init_stack(spec, spec.n_frozen_layers, layers_key)
    for top in tops:
        layers_key, head_key = jax.random.split(jax.random.fold_in(rng, _SEED_OF[top]))
        embedding_shape = ((1, spec.d_model), spec.param_dtype)
        head = _init_module(RoleHead(spec, head_kind(spec, top)), (x_shape, embedding_shape), head_key)
        tree[top] = {"layers": init_stack(spec, spec.n_top_layers, layers_key), **head}
    if with_value:
        tree["value"] = _init_module(ValueHead(spec), (x_shape,),
                                     jax.random.fold_in(rng, _SEED_OF["value"]))
    return tree


def init_params(model_cfg, rng: jax.Array, roles: Iterable[str] = ROLES):
    """Fresh params for the trunk and the requested roles (value implies policy).

    The pieces are compiled separately (eager flax init would dispatch op by
    op); the tops share one compiled stack init. May also be called under an
    outer jax.jit(..., out_shardings=...) to initialise straight into shards.
    """
    return nn.meta.unbox(_boxed_params(ModelSpec.of(model_cfg), rng, tuple(roles)))


def param_logical_axes(model_cfg, roles: Iterable[str] = ROLES):
    """Same tree as init_params, leaves = PartitionSpec of logical axis names. No allocation."""
    spec = ModelSpec.of(model_cfg)
    boxed = jax.eval_shape(lambda r: _boxed_params(spec, r, roles), jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)


def count_params(tree) -> int:
    """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def per_layer_params(params, model_cfg):
    """params with every looped stack ('layers') split into a tuple of per-layer trees
    (`stack.split_layers`): for a decode loop, which then runs on the slices instead of
    slicing the stacks at every step. Scanned stacks (spec.scan_layers) are kept."""
    if ModelSpec.of(model_cfg).scan_layers:
        return params
    return {name: ({**part, "layers": split_layers(part["layers"])}
                   if isinstance(part, dict) and "layers" in part else part)
            for name, part in params.items()}


def _split_top(top_params):
    return top_params["layers"], {k: v for k, v in top_params.items() if k != "layers"}


def _run_head(params, spec: ModelSpec, top: str, x_BxLxD, roles, outputs: dict,
              next_BxL=None, value_grad_to_policy: bool = True):
    """Apply `top`'s head (and the value head on the policy) into outputs.

    value_grad_to_policy=False: the value head reads the policy top's activations through
    a stop_gradient, so value-loss gradients reach the value head only.

    An 'elo_lm' head (the preference RM with pref_rm_likelihood) gives `top` its Elo and,
    when the next tokens are known (`forward`, not `extend`: next_BxL = (targets, has_next)
    at the same slots as x), `<top>_next_logp`: its likelihood scale times the log-prob of
    each next token (0 where there is none).
    """
    _, head_params = _split_top(params[top])
    out, h_BxLxD = RoleHead(spec, head_kind(spec, top)).apply(
        {"params": head_params}, x_BxLxD, params["trunk"]["embedding"])
    if top in roles:
        if isinstance(out, dict):
            outputs[top] = out["elo"]
            if next_BxL is not None:
                targets_BxL, has_next_BxL = next_BxL
                logp_BxL = token_log_probs(out["logits"], targets_BxL)
                outputs[f"{top}_next_logp"] = jnp.where(
                    has_next_BxL, out["likelihood_scale"] * logp_BxL, 0.0)
        else:
            outputs[top] = out
    if top == "policy" and "value" in roles:
        if not value_grad_to_policy:
            h_BxLxD = jax.lax.stop_gradient(h_BxLxD)
        outputs["value"] = ValueHead(spec).apply({"params": params["value"]}, h_BxLxD)


# x at each row's read slots: [B, K, ...] from [B, L, ...] (`forward`'s read_BxK).
read_slots = take_rows


def _check_params_have(params, tops, roles):
    missing = [t for t in tops if t not in params]
    if "value" in roles and "value" not in params:
        missing.append("value")
    if missing:
        raise ValueError(f"params have no {missing}; they hold {sorted(params)}")


def forward(params, model_cfg, tokens_BxL, positions_BxL=None, valid_BxL=None,
            segment_ids_BxL=None, roles: Iterable[str] = ("policy", "value"),
            value_grad_to_policy: bool = True, read_BxK=None, trunk_BxLxD=None):
    """Run the trunk once and the tops of `roles`.

    Args:
      tokens_BxL: int token ids.
      positions_BxL: int positions (default arange(L) in every row).
      valid_BxL: bool, False for padding (default all True); padding is never attended to.
      segment_ids_BxL: int, attention stays within a segment (packing); default one segment.
      value_grad_to_policy: False puts a stop_gradient between the policy top and the value
        head (`rl.value_grad_to_policy`); the forward values are the same either way.
      read_BxK: int slots; if given, the heads read only these K slots of each row and
        every output has K in place of L (`read_slots`): a loss that needs logits at a few
        positions pays for [B, K, V], not [B, L, V]. Each top's last layer computes only
        those K tokens' outputs (from every token's keys and values); the rest run over L.
      trunk_BxLxD: the trunk's output for these tokens, positions and mask, computed
        elsewhere (`extend(..., return_trunk=True)`: the RL trainer's rule scorer has it):
        the embedding and the frozen layers are then skipped. The trunk is frozen, so no
        gradient is lost.
    Returns:
      {'policy'|'teacher': logits_BxLxV, 'value': value_BxL, 'pref_rm': elo_BxL,
       'rule_rm': yes_no_logits_BxLx2 (0 = "No", 1 = "Yes")}, float32, for the roles asked;
      with `pref_rm_likelihood` also 'pref_rm_next_logp': BxL, the RM's likelihood scale
      times log p(tokens[:, t + 1]) at t (`rewards.pref_scoring.read_elo` combines them).
    """
    spec = ModelSpec.of(model_cfg)
    roles = tuple(roles)
    tops = tops_for(roles)
    _check_params_have(params, tops, roles)
    batch, length = tokens_BxL.shape
    slot_gap_distances = positions_BxL is None and length <= spec.max_len
    if positions_BxL is None:
        positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if valid_BxL is None:
        valid_BxL = jnp.ones((batch, length), bool)
    positions_BxL = positions_BxL.astype(jnp.int32)
    slots_L = jnp.arange(length, dtype=jnp.int32)
    ctx = attention_context(spec, positions_BxL, positions_BxL, valid_BxL.astype(bool),
                            slots_L, slots_L, segment_ids_BxL, segment_ids_BxL,
                            causal_slots=True, slot_gap_distances=slot_gap_distances)

    if trunk_BxLxD is None:
        x = Embed(spec).apply({"params": {"embedding": params["trunk"]["embedding"]}}, tokens_BxL)
        if "layers" in params["trunk"]:
            x, _ = apply_stack(params["trunk"]["layers"], spec, x, ctx)
    elif trunk_BxLxD.shape != (batch, length, spec.d_model):
        raise ValueError(f"trunk_BxLxD has shape {trunk_BxLxD.shape}; the tokens need "
                         f"{(batch, length, spec.d_model)}")
    else:
        x = trunk_BxLxD.astype(spec.dtype)
    has_next_BxL = jnp.broadcast_to(slots_L < length - 1, (batch, length))
    next_BxL = (next_token_targets(tokens_BxL), has_next_BxL)
    if read_BxK is not None:
        next_BxL = tuple(read_slots(n, read_BxK) for n in next_BxL)
    outputs = {}
    for top in tops:
        layers, _ = _split_top(params[top])
        top_x, _ = apply_stack(layers, spec, x, ctx, query_BxQ=read_BxK)
        _run_head(params, spec, top, top_x, roles, outputs, next_BxL, value_grad_to_policy)
    return outputs


def extend(params, model_cfg, tokens_BxT, positions_BxT, valid_BxT, cache,
           roles: Iterable[str] = ("policy",), last_only: bool = False,
           empty_cache: bool = False, read_BxK=None, keep_cache: bool = True,
           consecutive_positions: bool = False, return_trunk: bool = False):
    """Append T tokens per row to the cache and return the roles' outputs for them.

    The new keys/values are written at slots [index, index + T); each new token
    attends to every valid slot that is causally earlier (by slot and position),
    including the new block itself. Prefill (T = prompt length) and decode
    (T = 1) are the same call. Every top in the cache is run (its slots must
    stay in step); outputs are returned only for `roles`, whose tops must be in
    the cache. The caller keeps index + T <= cache_len (not checked under jit).

    Returns (outputs as in `forward` with L = T, but no 'pref_rm_next_logp': the token after
    the last is not known here; new cache). `last_only`: the heads read only the last column
    (outputs with L = 1: a prefill that samples after the prompt needs no more).
    `empty_cache`: the caller promises nothing was written to the cache yet (a prefill at
    index 0): attention then skips the cache's empty slots and runs in causal blocks.
    `read_BxK`: int slots of the T; the outputs are for those K tokens only (L = K), and
    each top's last layer computes only theirs (`last_only` is read_BxK = the last column).
    `keep_cache` False: the new cache is not wanted (returned as None), so the cache needs no
    room for the T tokens and is never copied: many calls can read one shared cache (the rule
    scorer's suffixes after one dialogue prefill).
    `consecutive_positions` (a prefill): the caller promises each row's valid tokens have
    consecutive positions in slot order (a left-padded prompt, a right-padded dialogue), so
    the relative term is shifted into place instead of gathered (`layers.relative_scores`).
    `return_trunk`: outputs also hold 'trunk', the trunk's output [B, T, D] (compute dtype),
    which `forward(trunk_BxLxD=...)` takes in place of running the trunk again.
    """
    spec = ModelSpec.of(model_cfg)
    roles = tuple(roles)
    run_tops = kv_cache.cache_tops(cache)
    missing = [t for t in tops_for(roles) if t not in run_tops]
    if missing:
        raise ValueError(f"the cache has no stack for tops {missing} (it has {run_tops})")
    _check_params_have(params, run_tops, roles)
    batch, length = tokens_BxT.shape
    if valid_BxT is None:
        valid_BxT = jnp.ones((batch, length), bool)
    index = jnp.asarray(cache["index"], jnp.int32)
    positions_BxT = positions_BxT.astype(jnp.int32)
    valid_BxT = valid_BxT.astype(bool)
    ctx = cached_attention_context(spec, positions_BxT, valid_BxT, cache["positions"],
                                   cache["valid"], index, empty=empty_cache, keep_cache=keep_cache,
                                   consecutive_positions=consecutive_positions)

    if last_only and length > 1:
        read_BxK = jnp.full((batch, 1), length - 1, jnp.int32)
    new_layers = {}

    def run_stack(name, layers, x, query_BxQ=None):
        stack_kv = cache["layers"][name]
        x, new_kv = apply_stack(layers, spec, x, ctx, stack_kv, query_BxQ)
        if keep_cache:
            new_layers[name] = kv_cache.write_kv(stack_kv, new_kv, index)
        return x

    x = Embed(spec).apply({"params": {"embedding": params["trunk"]["embedding"]}}, tokens_BxT)
    if "layers" in params["trunk"]:
        x = run_stack("trunk", params["trunk"]["layers"], x)
    outputs = {"trunk": x} if return_trunk else {}
    for top in run_tops:
        layers, _ = _split_top(params[top])
        top_x = run_stack(top, layers, x, read_BxK)
        _run_head(params, spec, top, top_x, roles, outputs)
    if not keep_cache:
        return outputs, None
    new_cache = {"index": index + length,
                 "positions": kv_cache.write_slots(cache["positions"], positions_BxT, index),
                 "valid": kv_cache.write_slots(cache["valid"], valid_BxT, index),
                 "layers": new_layers}
    return outputs, new_cache
