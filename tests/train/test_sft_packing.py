"""A packed sft row (several dialogues, segment ids, positions restarting) trains exactly like
the same dialogues one per row: same loss, same gradients."""
import jax
import numpy as np
import pytest

from sparrow_jax.model import hydra
from sparrow_jax.train import stages
from tiny_models import tiny_model_config

LENGTHS = (9, 6, 11)  # three dialogues: two share a packed row, the third has its own
ROW = 16


def _dialogues(vocab, seed=0):
    rs = np.random.RandomState(seed)
    out = []
    for n in LENGTHS:
        tokens = rs.randint(1, vocab, n).astype(np.int32)
        loss_mask = rs.rand(n) < 0.6
        loss_mask[0] = False  # bos
        out.append((tokens, loss_mask))
    return out


def _rows(dialogues_per_row):
    """sft batch (device keys) with each inner list of dialogues packed into one row."""
    b = len(dialogues_per_row)
    batch = {"tokens_BxL": np.zeros((b, ROW), np.int32), "positions_BxL": np.zeros((b, ROW), np.int32),
             "segment_ids_BxL": np.zeros((b, ROW), np.int32), "valid_BxL": np.zeros((b, ROW), bool),
             "loss_mask_BxL": np.zeros((b, ROW), bool)}
    for row, dialogues in enumerate(dialogues_per_row):
        at = 0
        for segment, (tokens, loss_mask) in enumerate(dialogues, start=1):
            span = slice(at, at + len(tokens))
            batch["tokens_BxL"][row, span] = tokens
            batch["positions_BxL"][row, span] = np.arange(len(tokens))
            batch["segment_ids_BxL"][row, span] = segment
            batch["valid_BxL"][row, span] = True
            batch["loss_mask_BxL"][row, span] = loss_mask
            at += len(tokens)
    return batch


@pytest.mark.parametrize("smeared_keys", [False, True])
def test_packed_rows_equal_one_dialogue_per_row(smeared_keys):
    cfg = tiny_model_config(smeared_keys=smeared_keys)
    params = hydra.init_params(cfg, jax.random.PRNGKey(0), roles=("policy",))
    loss_fn = stages.loss_fn_for_stage("sft", cfg)
    a, b, c = _dialogues(cfg.vocab_size)
    packed = _rows([[a, b], [c]])
    unpacked = _rows([[a], [b], [c]])
    grad_fn = jax.jit(jax.value_and_grad(lambda p, batch: loss_fn(p, batch, None)[0]))
    (loss_packed, grads_packed) = grad_fn(params, packed)
    (loss_unpacked, grads_unpacked) = grad_fn(params, unpacked)
    np.testing.assert_allclose(loss_packed, loss_unpacked, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-4),
                 grads_packed, grads_unpacked)
    # Not vacuous: without segment ids the second dialogue would read the first.
    leaky = dict(packed, segment_ids_BxL=packed["valid_BxL"].astype(np.int32))
    assert abs(float(grad_fn(params, leaky)[0]) - float(loss_unpacked)) > 1e-4
