"""Helpers of the evaluation tests (a module of its own name: `conftest` is ambiguous across test
folders): a fixed search engine, tiny configs, and workdirs written as `sparrow train` writes them."""
import os

import jax

from tiny_models import tiny_config
from sparrow_jax.model import hydra
from sparrow_jax.search import SearchResult
from sparrow_jax.train.checkpoints import Checkpointer
from sparrow_jax.train.optimizer import make_optimizer
from sparrow_jax.train.state import init_state
from sparrow_jax.train.trainable import STAGE_ROLES as TRAIN_STAGE_ROLES

# The stages whose workdirs evaluation reads, with the roles their checkpoints hold.
STAGE_ROLES = {stage: TRAIN_STAGE_ROLES[stage] for stage in ("sft", "pref_rm", "rule_rm", "rl")}


class FixedEngine:
    """Always finds the same document (so a test can rely on evidence being shown)."""

    def search(self, query, k=1):
        return [SearchResult("toy-doc", "Zorbel", "https://toywiki.org/Zorbel",
                             "Zorbel is a town in the country of Ulvania.", 1.0)][:k]


def make_config(world, tok, stage="sft", **model):
    """A full tiny config: short prompts and turns so sampling compiles and runs in seconds."""
    cfg = tiny_config(vocab_size=tok.vocab_size, max_len=64, **model)
    cfg.train.stage = stage
    cfg.train.seq_len = 96
    cfg.data.dir = world
    cfg.rl.max_prompt_len = 48
    cfg.rl.max_new_tokens = 6
    return cfg


def save_workdir(workdir, cfg, tok, params, step=1):
    """Write `params` (full hydra params) as `sparrow train` would for cfg.train.stage."""
    stage = cfg.train.stage
    optimizer, _ = make_optimizer(cfg.train, cfg.train.steps)
    state = init_state(params, stage, optimizer, jax.random.PRNGKey(0))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(step, state, meta={"config": cfg.to_dict()},
              assets={"tokenizer.model": tok.serialized_model}, force=True)
    ckpt.close()
    return workdir


def init_params(cfg, roles, seed=0):
    return hydra.init_params(cfg.model, jax.random.PRNGKey(seed), roles=roles)
