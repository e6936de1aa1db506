"""Sample the next speaker's turn: prefill a KV cache, then one token per `lax.while_loop` step.

Prompt layout (what `render(..., open_role=role)` and the `prompts` pipeline give): int32 tokens [B, P],
LEFT-padded, with a bool `valid` mask, so each row's real tokens are contiguous and end in the last column
with the open role token of the speaker. Positions are cumsum(valid) - 1 (padding at 0); the i-th sampled
token of a row with n prompt tokens sits at position n + i.

RNG scheme (shared by the cached sampler and the uncached reference): row r's token of step i (0-based)
is drawn with key `fold_in(fold_in(rng, r), i)`, r the row's id (`row_ids_B`: by default its index in the
global batch), so both draw the same tokens from the same logits, and a row draws the same tokens
whichever batch it is sampled in (a caller may sample a subset of rows, passing their ids).

Sampling distribution at each step, from the policy logits of the last token:
  1. ids that may never be sampled (`TokenIds`: control ids other than eot, ids past the tokenizer's
     vocabulary) get -inf;
  2. temperature 0 is greedy (argmax); else logits / temperature,
  3. then top-k (k largest), then top-p (smallest prefix of the sorted tokens whose mass reaches p).
`logprobs_BxN` are NOT taken from that distribution: they are log_softmax of the raw policy logits
(temperature 1, no masking, no top-k/top-p), i.e. the log-prob a training forward of the same sequence
assigns to the token (what RL's policy-gradient and KL terms read).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sparrow_jax import distributed
from sparrow_jax import sharding as shd
from sparrow_jax.model import hydra
from sparrow_jax.model.spec import ModelSpec

_POLICY = ("policy",)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling knobs (hashable: a jit static argument).

    max_new_tokens: N, the most tokens a turn may have, eot included.
    temperature: 0 = greedy; > 0 divides the logits.
    top_p: nucleus mass in (0, 1]; 1 = off.
    top_k: keep the k most likely tokens; 0 = off.
    """
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """The special ids the sampler needs (hashable).

    eot_id: ends a turn (sampled like text; the row stops after it).
    pad_id: written after a row's eot.
    banned_ids: never sampled (a turn's text never holds role/bos/eos/pad/rule tokens).
    vocab_limit: ids >= this are never sampled (a model vocabulary padded past the tokenizer's).
    """
    eot_id: int
    pad_id: int
    banned_ids: tuple[int, ...] = ()
    vocab_limit: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenIds":
        """Ban every control id but eot, and every id the tokenizer cannot decode."""
        banned = tuple(sorted(set(tokenizer.control_ids) - {tokenizer.eot_id}))
        return cls(tokenizer.eot_id, tokenizer.pad_id, banned, tokenizer.vocab_size)

    def allowed_mask(self, vocab_size: int) -> np.ndarray:
        """bool [V]: True for ids that may be sampled."""
        allowed = np.ones(vocab_size, bool)
        allowed[[i for i in self.banned_ids if 0 <= i < vocab_size]] = False
        if self.vocab_limit is not None:
            allowed[self.vocab_limit:] = False
        return allowed


@flax.struct.dataclass
class SampleOutput:
    """One sampled turn per row (N = max_new_tokens).

    tokens_BxN: int32, the turn's tokens up to and including eot, then pad_id.
    token_valid_BxN: bool, True up to and including eot (or all N if no eot).
    logprobs_BxN: float32, log_softmax of the raw policy logits (temperature 1) at each sampled token,
      0 where not valid.
    lengths_B: int32, number of valid tokens (eot included).
    finished_B: bool, the row emitted eot (False = over length).
    """
    tokens_BxN: jax.Array
    token_valid_BxN: jax.Array
    logprobs_BxN: jax.Array
    lengths_B: jax.Array
    finished_B: jax.Array


# ---------------------------------------------------------------------------- one sampling step

def sample_token(logits_BxV: jax.Array, key: jax.Array, config: SamplingConfig,
                 ids: TokenIds) -> jax.Array:
    """int32 [B]: one token per row from float logits [B, V] (see the module docstring)."""
    vocab = logits_BxV.shape[-1]
    logits = jnp.where(jnp.asarray(ids.allowed_mask(vocab)), logits_BxV.astype(jnp.float32),
                       -jnp.inf)
    if config.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / config.temperature
    if config.top_k == 0 and config.top_p >= 1:
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    k = min(config.top_k, vocab) if config.top_k else vocab
    top_BxK, index_BxK = jax.lax.top_k(logits, k)  # sorted, largest first
    if config.top_p < 1:
        probs = jax.nn.softmax(top_BxK, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        top_BxK = jnp.where(mass_before < config.top_p, top_BxK, -jnp.inf)  # keeps the first
    choice_B = jax.random.categorical(key, top_BxK, axis=-1)
    return jnp.take_along_axis(index_BxK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _token_logprob(logits_BxV, token_B):
    logprobs = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logprobs, token_B[:, None], axis=-1)[:, 0]


def prompt_positions(valid_BxP: jax.Array) -> jax.Array:
    """int32 [B, P]: cumsum(valid) - 1, padding at 0."""
    return jnp.maximum(jnp.cumsum(valid_BxP.astype(jnp.int32), axis=1) - 1, 0)


# ---------------------------------------------------------------------------- the decode loop

Advance = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def _batch_constrain(x):
    return shd.constrain(x, ("batch",) + (None,) * (x.ndim - 1))


def _generate(first_logits_BxV, model_state, advance: Advance, draw, n: int, ids: TokenIds,
              done_B=None) -> SampleOutput:
    """The loop every sampler shares: `draw(logits_BxV, step) -> token_B` picks token `step`,
    `advance(state, step, token_B, live_B) -> (logits_BxV, state)` feeds it to the model and
    returns the logits for token `step + 1`. At most n steps; rows in `done_B` (default none)
    never start."""
    batch = first_logits_BxV.shape[0]
    carry = {
        "step": jnp.zeros((), jnp.int32),
        "logits": first_logits_BxV,
        "state": model_state,
        "tokens": jnp.full((batch, n), ids.pad_id, jnp.int32),
        "valid": jnp.zeros((batch, n), bool),
        "logprobs": jnp.zeros((batch, n), jnp.float32),
        "done": jnp.zeros((batch,), bool) if done_B is None else done_B.astype(bool),
    }

    def cond(c):
        return (c["step"] < n) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]
        live = ~c["done"]
        token = jnp.where(live, draw(c["logits"], step), ids.pad_id)
        logprob = jnp.where(live, _token_logprob(c["logits"], token), 0.0)
        logits, state = advance(c["state"], step, token, live)
        return {
            "step": step + 1,
            "logits": _batch_constrain(logits),
            "state": state,
            "tokens": _batch_constrain(c["tokens"].at[:, step].set(token)),
            "valid": _batch_constrain(c["valid"].at[:, step].set(live)),
            "logprobs": _batch_constrain(c["logprobs"].at[:, step].set(logprob)),
            "done": c["done"] | (live & (token == ids.eot_id)),
        }

    c = jax.lax.while_loop(cond, body, carry)
    return SampleOutput(tokens_BxN=c["tokens"], token_valid_BxN=c["valid"],
                        logprobs_BxN=c["logprobs"], lengths_B=c["valid"].sum(1).astype(jnp.int32),
                        finished_B=c["done"])


def _constrain_cache(spec: ModelSpec, cache):
    axes = hydra.cache_logical_axes(spec, tops=_POLICY)
    return jax.tree.map(lambda x, a: shd.constrain(x, tuple(a)), cache, axes,
                        is_leaf=lambda a: isinstance(a, P))


def _row_keys(rng, row_ids_B):
    """[B] keys: fold_in(rng, row id) for each row."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids_B)


def _draw_with_keys(keys_B, config: SamplingConfig, ids: TokenIds):
    """draw(logits_BxV, step) -> token_B, row b's drawn with key fold_in(keys_B[b], step)."""
    def draw(logits_BxV, step):
        step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
        return jax.vmap(lambda key, logits_V: sample_token(logits_V[None], key, config, ids)[0])(
            step_keys_B, logits_BxV)
    return draw


def _draw_with(rng, config: SamplingConfig, ids: TokenIds, row_ids_B):
    """draw(logits_BxV, step) -> token_B, row b's with key fold_in(fold_in(rng, row_ids_B[b]), step)."""
    return _draw_with_keys(_row_keys(rng, row_ids_B), config, ids)


def _prefill(params, spec: ModelSpec, tokens_BxP, valid_BxP, cache_len: int):
    """(last prompt token's policy logits_BxV, cache) for left-padded prompts."""
    cache = _constrain_cache(spec, hydra.init_cache(spec, tokens_BxP.shape[0], cache_len,
                                                    tops=_POLICY))
    out, cache = hydra.extend(params, spec, tokens_BxP, prompt_positions(valid_BxP), valid_BxP,
                              cache, roles=_POLICY, last_only=True, empty_cache=True,
                              consecutive_positions=True)
    return out["policy"][:, -1], _constrain_cache(spec, cache)


def _cached_advance(params, spec: ModelSpec, first_position_B):
    """`advance` for the cached loop: token `step` sits at first_position_B + step."""
    params = hydra.per_layer_params(params, spec)  # sliced once, outside the loop

    def advance(cache, step, token_B, live_B):
        out, cache = hydra.extend(params, spec, token_B[:, None], (first_position_B + step)[:, None],
                                  live_B[:, None], cache, roles=_POLICY)
        return out["policy"][:, 0], _constrain_cache(spec, cache)
    return advance


@functools.partial(jax.jit, static_argnames=("spec", "config", "ids", "sharding_key"))
def _sample_cached(params, tokens_BxP, valid_BxP, rng, live_B, row_ids_B, *, spec, config, ids,
                   sharding_key):
    del sharding_key  # only keys the jit cache (the logical rules are not part of jax's)
    logits_BxV, cache = _prefill(params, spec, tokens_BxP, valid_BxP,
                                 tokens_BxP.shape[1] + config.max_new_tokens)
    advance = _cached_advance(params, spec, valid_BxP.sum(1).astype(jnp.int32))
    return _generate(logits_BxV, cache, advance, _draw_with(rng, config, ids, row_ids_B),
                     config.max_new_tokens, ids, ~live_B)


@functools.partial(jax.jit, static_argnames=("spec", "config", "ids", "sharding_key"))
def _sample_uncached(params, tokens_BxP, valid_BxP, rng, row_ids_B, *, spec, config, ids,
                     sharding_key):
    del sharding_key
    batch, prompt_len = tokens_BxP.shape
    n = config.max_new_tokens
    next_position_B = valid_BxP.sum(1).astype(jnp.int32)
    buffer = {
        "tokens": jnp.concatenate([tokens_BxP, jnp.full((batch, n), ids.pad_id, jnp.int32)], 1),
        "valid": jnp.concatenate([valid_BxP, jnp.zeros((batch, n), bool)], 1),
        "positions": jnp.concatenate([prompt_positions(valid_BxP),
                                      next_position_B[:, None] + jnp.arange(n, dtype=jnp.int32)], 1),
    }

    def logits_at(buffer, column):
        logits = hydra.forward(params, spec, buffer["tokens"], buffer["positions"],
                               buffer["valid"], roles=_POLICY)["policy"]
        return jax.lax.dynamic_index_in_dim(logits, column, axis=1, keepdims=False)

    def advance(buffer, step, token_B, live_B):
        column = prompt_len + step
        buffer = dict(buffer, tokens=buffer["tokens"].at[:, column].set(token_B),
                      valid=buffer["valid"].at[:, column].set(live_B))
        return logits_at(buffer, column), buffer

    return _generate(logits_at(buffer, prompt_len - 1), buffer, advance,
                     _draw_with(rng, config, ids, row_ids_B), n, ids)


# ---------------------------------------------------------------------------- speaker and turn

ROLE_CHOICES = ("first", "second", "choose", "free")


@flax.struct.dataclass
class StepSample:
    """A speaker chosen between two roles, and its turn, from one prefill (`sample_step`).

    role_index_B: int32, 0 = the first role, 1 = the second.
    role_logprobs_Bx2: float32 full-vocabulary log-probs (temperature 1) of both role tokens
      as the next token after the prompt.
    turn: the chosen speaker's turn (SampleOutput).
    """
    role_index_B: jax.Array
    role_logprobs_Bx2: jax.Array
    turn: SampleOutput


@functools.partial(jax.jit, static_argnames=("spec", "role_ids", "choice", "temperature",
                                             "configs", "ids", "sharding_key"))
def _sample_step(params, tokens_BxP, valid_BxP, role_rng, first_rng, second_rng, row_ids_B, *,
                 spec, role_ids, choice, temperature, configs, ids, sharding_key):
    del sharding_key
    n = configs[0].max_new_tokens
    logits_BxV, cache = _prefill(params, spec, tokens_BxP, valid_BxP, tokens_BxP.shape[1] + 1 + n)
    logprob_Bx2 = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)[:, jnp.asarray(role_ids)]
    batch = tokens_BxP.shape[0]
    if choice == "choose":  # ties go to the second role
        index_B = jnp.where(logprob_Bx2[:, 0] > logprob_Bx2[:, 1], 0, 1)
    elif choice == "free" and temperature == 0:
        index_B = jnp.argmax(logprob_Bx2, axis=-1)
    elif choice == "free":
        index_B = jax.vmap(lambda key, lp_2: jax.random.categorical(key, lp_2 / temperature))(
            _row_keys(role_rng, row_ids_B), logprob_Bx2)
    else:
        index_B = jnp.full((batch,), ROLE_CHOICES.index(choice))
    index_B = index_B.astype(jnp.int32)
    role_position_B = valid_BxP.sum(1).astype(jnp.int32)
    out, cache = hydra.extend(params, spec, jnp.asarray(role_ids, jnp.int32)[index_B][:, None],
                              role_position_B[:, None], jnp.ones((batch, 1), bool), cache,
                              roles=_POLICY)
    keys = (_row_keys(first_rng, row_ids_B), _row_keys(second_rng, row_ids_B))
    if configs[0] == configs[1]:  # one draw a step, each row with its own role's key
        first_B = (index_B == 0).reshape((batch,) + (1,) * (keys[0].ndim - 1))
        draw = _draw_with_keys(jnp.where(first_B, keys[0], keys[1]), configs[0], ids)
    else:
        draws = tuple(_draw_with_keys(k, c, ids) for k, c in zip(keys, configs))
        draw = lambda logits_BxV, step: jnp.where(  # noqa: E731
            index_B == 0, draws[0](logits_BxV, step), draws[1](logits_BxV, step))
    turn = _generate(out["policy"][:, 0], _constrain_cache(spec, cache),
                     _cached_advance(params, spec, role_position_B + 1), draw, n, ids)
    return StepSample(role_index_B=index_B, role_logprobs_Bx2=logprob_Bx2, turn=turn)


# ---------------------------------------------------------------------------- public API

def _check_prompt(tokens_BxP, valid_BxP):
    if tokens_BxP.ndim != 2 or tokens_BxP.shape != valid_BxP.shape:
        raise ValueError(f"prompt tokens {tokens_BxP.shape} and valid {valid_BxP.shape} must be "
                         "the same [B, P]")
    if isinstance(valid_BxP, jax.core.Tracer):
        return
    valid = np.asarray(valid_BxP, bool)
    if not valid[:, -1].all() or (valid[:, :-1] & ~valid[:, 1:]).any():
        raise ValueError("prompts must be left-padded: every row's valid tokens contiguous and "
                         "ending in the last column")


def _call(fn, params, model_cfg, tokens_BxP, valid_BxP, *extra, live_B=None, row_ids_B=None,
          mesh=None, rules=None, row_rules=None, **static):
    """Run a jitted sampler; on `mesh` (traced under `rules`) the prompts are THIS PROCESS's
    rows of the global batch, placed by the 'batch' rule of `row_rules` (default `rules`; the
    training rules when the sampler decodes in its own layout), and so are the outputs, as host
    numpy (one process: all rows). Every process must call it alike (same shapes and static
    arguments). `row_ids_B` (default `global_row_ids`) and `live_B` (if given) are per-row
    arrays of this process's rows, passed on as the sampler's keyword arguments."""
    spec = ModelSpec.of(model_cfg)
    local_rows = np.shape(tokens_BxP)[0]
    if mesh is not None:
        if rules is None:
            raise ValueError("a mesh needs its logical axis rules")
        rules = _hashable(rules)
        row_rules = rules if row_rules is None else _hashable(row_rules)
        placement, rows = _process_rows(mesh, row_rules, np.shape(tokens_BxP))
    if row_ids_B is None:
        row_ids_B = np.arange(local_rows) if mesh is None else np.arange(rows.start, rows.stop)
    per_row = {"row_ids_B": np.asarray(row_ids_B, np.int32)}
    if live_B is not None:
        per_row["live_B"] = np.asarray(live_B, bool)
    if any(a.shape != (local_rows,) for a in per_row.values()):
        raise ValueError(f"row_ids_B / live_B must have one entry per prompt row ({local_rows})")
    if mesh is None:
        tokens_BxP = jnp.asarray(tokens_BxP, jnp.int32)
        valid_BxP = jnp.asarray(valid_BxP, bool)
        _check_prompt(tokens_BxP, valid_BxP)
        per_row = {k: jnp.asarray(v) for k, v in per_row.items()}
        return fn(params, tokens_BxP, valid_BxP, *extra, spec=spec, sharding_key=None,
                  **per_row, **static)
    arrays = {"tokens": np.asarray(tokens_BxP, np.int32), "valid": np.asarray(valid_BxP, bool)}
    _check_prompt(arrays["tokens"], arrays["valid"])
    placements = {"tokens": placement, "valid": placement,
                  **{k: _rows_like(placement, 1) for k in per_row}}
    arrays = distributed.host_local_to_global({**arrays, **per_row}, mesh, placements)
    per_row = {k: arrays.pop(k) for k in per_row}
    with shd.activation_sharding(mesh, rules):
        out = fn(params, arrays["tokens"], arrays["valid"], *extra, spec=spec,
                 sharding_key=(mesh, rules), **per_row, **static)
    if row_rules != rules:  # back to the rows each process holds, whatever the decode layout did
        out = jax.tree.map(lambda x: jax.device_put(x, _rows_like(placement, x.ndim)), out)
    return distributed.tree_host_rows(out, rows)


def _process_rows(mesh, row_rules, local_shape: tuple[int, ...]) -> tuple[Any, slice]:
    """(the sampler's batch placement for `local_shape` prompts per process, the slice of the
    global batch's rows this process holds)."""
    placement = batch_sharding(mesh, row_rules, local_shape)
    return placement, distributed.process_batch_slice(local_shape[0] * jax.process_count(),
                                                      placement)


def global_row_ids(local_rows: int, mesh=None, row_rules=None) -> np.ndarray:
    """int32 [local_rows]: the indices in the global batch of this process's rows (the
    sampler's default row ids), as the 'batch' rule of `row_rules` places a batch of
    `local_rows` rows per process on `mesh` (no mesh: 0 .. local_rows - 1)."""
    if mesh is None:
        return np.arange(local_rows, dtype=np.int32)
    _, rows = _process_rows(mesh, _hashable(row_rules), (local_rows, 1))
    return np.arange(rows.start, rows.stop, dtype=np.int32)


def _hashable(rules):
    return tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in rules)


def _rows_like(placement, ndim: int):
    return jax.sharding.NamedSharding(placement.mesh, P(placement.spec[0], *([None] * (ndim - 1))))


def batch_sharding(mesh, rules, local_shape: tuple[int, int]):
    """The sampler's batch layout on `mesh` for prompts of `local_shape` per process: rows
    by the 'batch' rule (replicated if the batch axes do not divide the global rows)."""
    global_shape = (local_shape[0] * jax.process_count(),) + tuple(local_shape[1:])
    return shd.shardings_for(P("batch", None), mesh, rules,
                             jax.ShapeDtypeStruct(global_shape, jnp.int32))


def sample(params, model_cfg, prompt_tokens_BxP, prompt_valid_BxP, rng: jax.Array,
           config: SamplingConfig, ids: TokenIds, *, live_B=None, row_ids_B=None, mesh=None,
           rules=None, row_rules=None) -> SampleOutput:
    """Sample one turn per row with a KV cache (prefill + while_loop decode).

    Args:
      params: hydra params with 'trunk' and 'policy' (others are ignored); may be sharded on `mesh`.
      model_cfg: cfg.model or a ModelSpec.
      prompt_tokens_BxP / prompt_valid_BxP: left-padded prompts ending with the open role token.
      rng: PRNG key; row r's step i uses fold_in(fold_in(rng, r), i), r its row id.
      config, ids: sampling knobs and special ids (static: a new value recompiles).
      live_B: optional bool per row (default all True); rows that are False sample nothing (all
        tokens invalid) and cost no decode steps of their own: the loop ends when the live rows
        are done. Given or not, it is one program: the RL User turn (every row) and the answer
        after evidence (the searching rows) share one compile.
      row_ids_B: optional int per row, the ids that key its draws (default: each row's index
        in the global batch, `global_row_ids`). A row sampled in a smaller batch with its id
        draws what it would in the whole batch.
      mesh, rules: optional; activations are constrained by `rules`, and the prompts are this
        process's rows, placed by `row_rules`' 'batch' rule (default `rules`), returned as numpy.
    Compiled once per (B, P, config, ids, mesh, rules).
    """
    if live_B is None:
        live_B = np.ones(np.shape(prompt_tokens_BxP)[0], bool)
    return _call(_sample_cached, params, model_cfg, prompt_tokens_BxP, prompt_valid_BxP, rng,
                 live_B=live_B, row_ids_B=row_ids_B, mesh=mesh, rules=rules, row_rules=row_rules,
                 config=config, ids=ids)


def sample_step(params, model_cfg, prompt_tokens_BxP, prompt_valid_BxP, role_ids: Sequence[int],
                choice: str, rngs: Sequence[jax.Array], configs: Sequence[SamplingConfig],
                ids: TokenIds, temperature: float = 1.0, *, row_ids_B=None, mesh=None,
                rules=None, row_rules=None) -> StepSample:
    """Choose each row's next speaker between two roles and sample its turn, with ONE prefill.

    The prompt is a left-padded dialogue ending with eot (no open role). `choice` (ROLE_CHOICES):
    'first' / 'second' = that role for every row; 'choose' = the likelier role token (ties: the
    second); 'free' = drawn from the two role tokens' probabilities renormalised, at
    `temperature` (0 = the likelier). The chosen role token is appended and the turn decoded
    on the same cache. rngs = (role draw key, first role's turn key, second role's turn key);
    configs = (first role's SamplingConfig, second's), with the same max_new_tokens. A row's
    tokens are those `sample` would draw with its role's key and config on the prompt plus
    that role token (equal up to float rounding: the prompt and role token are encoded in two
    calls), so a row pays for its own turn only. row_ids_B, mesh, rules, row_rules: as `sample`'s
    (a row's role draw is keyed by its row id too).
    """
    if choice not in ROLE_CHOICES:
        raise ValueError(f"choice must be one of {ROLE_CHOICES}, got {choice!r}")
    configs = tuple(configs)
    if len(configs) != 2 or configs[0].max_new_tokens != configs[1].max_new_tokens:
        raise ValueError("sample_step needs two SamplingConfigs with the same max_new_tokens")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return _call(_sample_step, params, model_cfg, prompt_tokens_BxP, prompt_valid_BxP, *rngs,
                 row_ids_B=row_ids_B, mesh=mesh, rules=rules, row_rules=row_rules,
                 role_ids=tuple(int(i) for i in role_ids), choice=choice,
                 temperature=float(temperature) if choice == "free" else 1.0,
                 configs=configs, ids=ids)


def sample_uncached(params, model_cfg, prompt_tokens_BxP, prompt_valid_BxP, rng: jax.Array,
                    config: SamplingConfig, ids: TokenIds, *, mesh=None, rules=None
                    ) -> SampleOutput:
    """Reference for `sample`: a full `hydra.forward` over [B, P + N] at every step, no cache.

    Same RNG scheme and outputs; O(N) times the work. For tests and benchmarks only.
    """
    return _call(_sample_uncached, params, model_cfg, prompt_tokens_BxP, prompt_valid_BxP, rng,
                 mesh=mesh, rules=rules, config=config, ids=ids)
