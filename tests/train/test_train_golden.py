"""Golden loss numbers for a fixed tiny config, seed and batch.

The values were recorded from this code at the commit that added this test
(1 device, float32 compute, params from hydra.init_params with PRNGKey(0), the
deterministic `stages.example_batch(..., seed=0)`). They catch silent changes to
the losses, the batch layout or the step plumbing. A deliberate change to the model
initialisation, the losses or `example_batch` changes them: re-record the numbers
in the same commit and say why. The SFT value is close to log(64) = 4.16 because
a freshly initialised model is near-uniform over its 64-token vocabulary; the
pref_rm value is near log(4) = 1.39 for the same reason over 4 candidates (plus
the 50/50 auxiliary term, near log 2: 0.5 * 1.39 + 0.5 * 0.69 = 1.04).
"""
import jax
import numpy as np
import pytest

from sparrow_jax import sharding as shd
from tiny_models import tiny_config
from sparrow_jax.model import hydra
from sparrow_jax.train import stages
from sparrow_jax.train.trainable import STAGE_ROLES

GOLDEN = {
    "sft": 4.138768196105957,
    # Re-recorded when the pref_rm batch took the data pipeline's layout (the aux
    # target became supported AND plausible, drawn from new label arrays).
    "pref_rm": 1.0283043384552002,
    "rule_rm": 0.7088981866836548,  # near log 2: an untrained Yes/No classifier
}


def tiny_cfg():
    return tiny_config()


def golden_loss(stage):
    cfg = tiny_cfg()
    params = hydra.init_params(cfg.model, jax.random.PRNGKey(0), roles=STAGE_ROLES[stage])
    batch = stages.example_batch(stage, 8, 16, cfg.model.vocab_size, seed=0)
    loss_fn = stages.loss_fn_for_stage(stage, cfg.model)
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    with shd.activation_sharding(mesh, shd.rules_from_config(cfg.mesh)):
        loss, _ = jax.jit(loss_fn)(params, batch, jax.random.PRNGKey(0))
    return float(loss)


@pytest.mark.parametrize("stage", sorted(GOLDEN))
def test_golden_loss(stage):
    np.testing.assert_allclose(golden_loss(stage), GOLDEN[stage], rtol=1e-5)
