"""init_from.graft: what a reward model's top takes from the SFT policy it starts from."""
import jax
import numpy as np

from tiny_models import tiny_model_config
from sparrow_jax.model import hydra
from sparrow_jax.train.init_from import graft


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_reward_model_tops_start_from_the_policy_top_and_keep_their_own_heads():
    cfg = tiny_model_config()
    cfg.pref_rm_likelihood = True
    sft = hydra.init_params(cfg, jax.random.PRNGKey(1), roles=("policy",))
    fresh = hydra.init_params(cfg, jax.random.PRNGKey(2), roles=("pref_rm", "rule_rm"))
    out = graft(fresh, sft)
    assert _equal(out["trunk"], sft["trunk"])
    for role in ("pref_rm", "rule_rm"):
        assert _equal(out[role]["layers"], sft["policy"]["layers"])
        assert _equal(out[role]["final_norm"], sft["policy"]["final_norm"])
        assert _equal(out[role]["head"], fresh[role]["head"])  # a new head, not the policy's
    # The likelihood readout's LM head starts as the policy's; its scale as initialised (1).
    assert _equal(out["pref_rm"]["unembed"], sft["policy"]["unembed"])
    assert float(out["pref_rm"]["likelihood_scale"]) == 1.0
    assert "unembed" not in out["rule_rm"]
