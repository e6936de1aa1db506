"""The RL update reads its heads at the few slots its loss needs (`stages.policy_read_slots`):
loss, metrics and gradients must equal reading every slot."""
import jax
import numpy as np
import pytest

from tiny_models import tiny_model_config
from sparrow_jax.model import hydra
from sparrow_jax.rl.trainer import _check_read_slots
from sparrow_jax.train import stages

MAX_NEW = 4  # sampled tokens per turn in these rows: read_len = 2 * (4 + 2) + 1 = 13
LENGTH = 32


def rollout_like_batch(vocab: int, seed: int) -> dict:
    """Rows shaped like rollouts: a prompt, then a query turn, a search result and an answer
    (policy turns: role token, text, eot) or just an answer; the host reward at the final eot,
    right padding."""
    rs = np.random.RandomState(seed)
    rows = 6
    batch = {"tokens_BxL": rs.randint(8, vocab, (rows, LENGTH)).astype(np.int32),
             "valid_BxL": np.zeros((rows, LENGTH), bool),
             "policy_mask_BxL": np.zeros((rows, LENGTH), np.float32),
             "sampled_mask_BxL": np.zeros((rows, LENGTH), np.float32),
             "rewards_BxL": np.zeros((rows, LENGTH), np.float32),
             "reward_index_B": np.zeros(rows, np.int32), "turn_start_B": np.zeros(rows, np.int32)}
    for row in range(rows):
        at = rs.randint(4, 10)  # prompt length
        turns = [("policy", rs.randint(1, MAX_NEW + 1)), ("result", rs.randint(2, 6))] \
            if row % 2 else []
        turns.append(("policy", rs.randint(1, MAX_NEW + 1)))
        for kind, text in turns:
            span = 1 + text + 1  # role token, text, eot
            if kind == "policy":
                batch["policy_mask_BxL"][row, at:at + span] = 1
                batch["sampled_mask_BxL"][row, at + 1:at + span] = 1
                batch["turn_start_B"][row] = at
            at += span
        batch["valid_BxL"][row, :at] = True
        batch["reward_index_B"][row] = at - 1
        batch["rewards_BxL"][row, at - 1] = rs.randn()
    return batch


@pytest.mark.parametrize("likelihood,kl_mode", [(False, "loss"), (True, "loss"), (True, "reward")])
def test_reading_the_needed_slots_equals_reading_all(likelihood, kl_mode):
    model_cfg = tiny_model_config()
    model_cfg.pref_rm_likelihood = likelihood
    params = hydra.init_params(model_cfg, jax.random.PRNGKey(0),
                               ("policy", "value", "teacher", "pref_rm"))
    batch = rollout_like_batch(model_cfg.vocab_size, seed=5)
    read_len = 2 * (MAX_NEW + 2) + 1
    knobs = dict(elo_mean=0.2, elo_std=1.5, kl_mode=kl_mode, entropy_coef=0.01)

    def run(read):
        loss_fn = stages.loss_fn_for_stage("rl", model_cfg, read_len=read, **knobs)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, jax.random.PRNGKey(1))
        return loss, metrics, grads

    loss, metrics, grads = run(read_len)
    ref_loss, ref_metrics, ref_grads = run(0)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-6)
    for name in ref_metrics:
        np.testing.assert_allclose(float(metrics[name]), float(ref_metrics[name]), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat) and any(np.abs(np.asarray(g)).max() > 0 for g in flat)
    for g, ref in zip(flat, ref_flat):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-4, atol=1e-7)


def test_read_slots_put_the_needed_ones_first_in_order():
    batch = rollout_like_batch(64, seed=2)
    read = np.asarray(stages.policy_read_slots(batch["policy_mask_BxL"], batch["rewards_BxL"],
                                               batch["reward_index_B"], 2 * (MAX_NEW + 2) + 1))
    for row in range(len(read)):
        policy_next = np.flatnonzero(batch["policy_mask_BxL"][row, 1:]).tolist()
        needed = sorted(set(policy_next) | {int(batch["reward_index_B"][row])})
        assert read[row, :len(needed)].tolist() == needed
        assert not set(read[row, len(needed):]) & set(needed)


def test_a_row_needing_more_slots_than_read_is_an_error():
    batch = rollout_like_batch(64, seed=2)
    _check_read_slots(batch, 2 * (MAX_NEW + 2) + 1)
    batch["policy_mask_BxL"][0, :] = 1
    with pytest.raises(RuntimeError, match="loss slots"):
        _check_read_slots(batch, 2 * (MAX_NEW + 2) + 1)
