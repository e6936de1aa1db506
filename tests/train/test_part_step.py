"""The RL update from length-grouped parts (`train.part_step`): parts of rows, each at its own
width, must give the one-program step's params, optimizer state and metrics."""
import jax
import numpy as np

from sparrow_jax import sharding as shd
from sparrow_jax.config import default_config
from sparrow_jax.train import stages
from sparrow_jax.train.step import loss_and_grads
from tiny_models import tiny_config

LENGTHS = (9, 11, 12, 16, 20, 25, 30, 32)  # sorted: the trainer's order
WIDTH, PART_WIDTHS = 32, (16, 32)
ELO = {"elo_mean": 0.2, "elo_std": 1.5}  # the normaliser's fit


def _rl_batch(d_model: int, vocab: int) -> dict:
    """Right-padded rows of LENGTHS tokens: a policy turn in each row's second half, its reward
    at the final token, and a trunk output over the tokens (`build_stage(trunk_input=True)`)."""
    rs = np.random.RandomState(0)
    rows = len(LENGTHS)
    batch = {"tokens_BxL": np.zeros((rows, WIDTH), np.int32),
             "valid_BxL": np.zeros((rows, WIDTH), bool),
             "policy_mask_BxL": np.zeros((rows, WIDTH), np.float32),
             "rewards_BxL": np.zeros((rows, WIDTH), np.float32),
             "reward_index_B": np.asarray(LENGTHS, np.int32) - 1,
             "turn_start_B": np.asarray(LENGTHS, np.int32) // 2 - 1,
             "trunk_BxLxD": rs.randn(rows, WIDTH, d_model).astype(np.float32)}
    for row, n in enumerate(LENGTHS):
        batch["tokens_BxL"][row, :n] = rs.randint(4, vocab, n)
        batch["valid_BxL"][row, :n] = True
        batch["policy_mask_BxL"][row, n // 2:n] = 1.0
        batch["rewards_BxL"][row, n - 1] = rs.randn()
    policy = batch["policy_mask_BxL"]
    batch["sampled_mask_BxL"] = policy * np.pad(policy[:, :-1], ((0, 0), (1, 0)))
    return batch


def _parts(batch: dict) -> list[dict]:
    """The batch as two parts of 4 rows, each cut to its PART_WIDTHS width, with the whole
    batch's loss denominators."""
    denominators = stages.rl_loss_denominators(batch)
    parts = []
    for part, width in enumerate(PART_WIDTHS):
        rows = slice(part * 4, part * 4 + 4)
        assert max(LENGTHS[rows]) <= width
        parts.append({**{k: v[rows, :width] if v.ndim > 1 else v[rows] for k, v in batch.items()},
                      "loss_denominators_3": denominators})
    return parts


def test_the_update_from_length_grouped_parts_equals_the_one_program_update():
    """On a 2-device data axis: each part's rows split over the devices (one device, the
    trainer's default, runs in the RL loop tests)."""
    cfg = tiny_config()
    cfg.train.stage, cfg.train.batch_size, cfg.train.warmup_steps = "rl", len(LENGTHS), 0
    cfg.rl.max_new_tokens = 8  # the read slots (`rl_read_len`) hold every policy token here
    mesh = shd.make_mesh(default_config().mesh, jax.devices()[:2])
    setup = stages.build_stage(cfg, mesh, "rl", seq_len=WIDTH, trunk_input=True,
                               log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    batch = _rl_batch(cfg.model.d_model, cfg.model.vocab_size)
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731 (steps donate)

    whole_state, whole = setup.step_with(cfg, mesh, **ELO)(copy(state), batch)
    steps = setup.part_steps_with(cfg, mesh, 2, **ELO)
    results = tuple(steps.gradients(state, part) for part in _parts(batch))
    part_state, parts = steps.apply(copy(state), results)

    assert sorted(parts) == sorted(whole)
    for key in whole:
        np.testing.assert_allclose(float(parts[key]), float(whole[key]), rtol=2e-5, atol=1e-6,
                                   err_msg=key)
    assert float(whole["grad_norm"]) > 0
    # The gradients, summed over the parts, against the whole batch's.
    loss_fn = stages.loss_fn_for_stage("rl", cfg.model, **{**setup.loss_kwargs, **ELO})
    whole_grads = jax.jit(lambda b: loss_and_grads(loss_fn, state.params, state.frozen, b,
                                                   jax.random.PRNGKey(0))[2])(batch)
    summed = jax.tree.map(lambda a, b: a + b, results[0][2], results[1][2])
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(whole_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # Adam's first step moves a parameter by about the learning rate whatever its gradient's
    # size, so a gradient near eps shows its rounding: compare at a fraction of that step.
    atol = 0.02 * cfg.train.learning_rate
    for a, b in zip(jax.tree.leaves(part_state.params), jax.tree.leaves(whole_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=atol)
    for a, b in zip(jax.tree.leaves(part_state.opt_state), jax.tree.leaves(whole_state.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)
    assert int(part_state.step) == int(whole_state.step) == 1
    np.testing.assert_array_equal(np.asarray(part_state.rng), np.asarray(whole_state.rng))

def test_the_loss_denominators_count_what_the_loss_averages_over():
    batch = _rl_batch(8, 64)
    rows, policy, sampled = stages.rl_loss_denominators(batch)
    assert rows == len(LENGTHS)
    assert policy == sum(n - n // 2 for n in LENGTHS)
    assert sampled == policy - len(LENGTHS)  # each turn's first token is forced


def test_length_groups_sort_rows_and_give_each_part_the_narrowest_width_holding_it():
    from sparrow_jax.rl.update import length_groups, part_batches
    shuffled = np.random.RandomState(1).permutation(len(LENGTHS))
    batch = {k: v[shuffled] for k, v in _rl_batch(8, 64).items()}
    arrays, widths = length_groups(batch, 2, (8, 16, 24, 32))
    assert widths == (16, 32)  # the 4 shortest rows are at most 16 tokens
    assert arrays["valid_BxL"].sum(axis=1).tolist() == list(LENGTHS)
    for key in batch:  # every per-row array moved with its row
        np.testing.assert_array_equal(arrays[key], _rl_batch(8, 64)[key])
    whole, one_width = length_groups(batch, 1, (8, 16, 24, 32))
    assert whole is batch and one_width == (WIDTH,)

    mesh = shd.make_mesh(default_config().mesh, jax.devices()[:1])
    rows = {k: v for k, v in arrays.items() if k != "trunk_BxLxD"}
    shardings = {k: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) for k in rows}
    trunks = ["short trunk", "long trunk"]
    parts = part_batches(rows, trunks, widths, mesh, shardings)
    assert [(w, p["tokens_BxL"].shape, p["trunk_BxLxD"]) for w, p in parts] == \
        [(16, (4, 16), "short trunk"), (32, (4, 32), "long trunk")]
    for _, part in parts:
        np.testing.assert_array_equal(part["loss_denominators_3"],
                                      stages.rl_loss_denominators(rows))
    np.testing.assert_array_equal(parts[0][1]["tokens_BxL"], rows["tokens_BxL"][:4, :16])
    np.testing.assert_array_equal(parts[1][1]["reward_index_B"], rows["reward_index_B"][4:])
