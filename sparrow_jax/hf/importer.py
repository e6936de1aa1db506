"""`sparrow import`: a Hugging Face checkpoint -> an lm-stage workdir the later stages start from.

The bottom `n_frozen_layers` HF layers become the hydra's trunk, the rest the policy top
(with the final norm and, when untied, the LM head). The workdir holds what an lm run
leaves: an orbax checkpoint (step 0, stage lm, the full config in its meta, the tokenizer
as an asset when the directory has `tokenizer.model`), plus `config.json` (that config),
`experiment.py` (the config as an experiment file, one variant per stage) and
`import.json` (source, timings, memory).

Streaming: each param is created empty on its devices, and a stacked param is filled one
HF layer at a time (a donated in-place update), so the host holds one HF tensor and its
converted copy at a time. Adafactor is the recorded optimizer so the checkpoint's
optimizer state is small (factored); `train.init_from` reads only the params.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from functools import partial

from sparrow_jax.data.jsonl import atomic_write
from sparrow_jax.hf.families import (HFImportError, check_tensor, family_of, model_overrides,
                                     tensor_plan)

EXPERIMENT_PY = '''"""Written by `sparrow import`: the imported model's config (config.json
beside this file). Variants are stages: experiment.py:sft, :pref_rm, :rule_rm, :rl."""
import json
import os

from sparrow_jax.config import default_config


def get_config(variant="sft"):
    cfg = default_config()
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
        for key, value in json.load(f)["model"].items():
            cfg.model[key] = value
    cfg.train.stage = variant or "sft"
    cfg.train.optimizer = "adamw"
    return cfg
'''


def default_frozen_layers(n_layers: int) -> int:
    """Sparrow's share: 64 of Chinchilla's 80 layers frozen (at least one layer left on top)."""
    return min(n_layers - 1, n_layers * 4 // 5)


def read_tokenizer(hf_dir: str):
    """The directory's SentencePiece `tokenizer.model` as our Tokenizer, or None when it has no
    tokenizer file at all; HFImportError for a tokenizer in another format."""
    from sparrow_jax.dialogue.tokenizer import Tokenizer
    path = os.path.join(hf_dir, "tokenizer.model")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return Tokenizer(f.read())
    others = [n for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
              if os.path.exists(os.path.join(hf_dir, n))]
    if others:
        raise HFImportError(
            f"{hf_dir} has {others} but no tokenizer.model: only SentencePiece tokenizers are "
            f"supported (Llama 1/2, Gemma); a byte-level BPE tokenizer.json (Llama 3) is not. "
            f"Remove the tokenizer files to import the weights alone, then give the run a "
            f"SentencePiece model of the same ids with --config.data.tokenizer")
    return None


def import_config(hf_dir: str, n_frozen_layers: int | None = None, overrides=()):
    """The validated config of an import: defaults, the checkpoint's model, then overrides.

    The vocabulary grows to the tokenizer's when Sparrow's control ids (pad, roles, eot,
    rule) that the SentencePiece model lacks land beyond the checkpoint's rows (`load_params`
    fills the new rows with the mean embedding). Ids the model has but no piece uses (a
    checkpoint's padded vocabulary) take them first, as the tokenizer appends after its pieces.
    """
    from sparrow_jax.config import apply_overrides, default_config
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    model = model_overrides(hf)
    tokenizer = read_tokenizer(hf_dir)
    if tokenizer is not None and tokenizer.vocab_size > model["vocab_size"]:
        model["vocab_size"] = tokenizer.vocab_size
    cfg = default_config()
    cfg.name = f"import:{os.path.basename(os.path.normpath(hf_dir))}"
    for key, value in model.items():
        cfg.model[key] = value
    cfg.model.n_frozen_layers = (default_frozen_layers(model["n_layers"])
                                 if n_frozen_layers is None else n_frozen_layers)
    cfg.train.stage, cfg.train.optimizer = "lm", "adafactor"
    return apply_overrides(cfg, overrides), family_of(hf)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_params(hf_dir: str, cfg, param_shardings, log=print):
    """Full hydra params {trunk, policy} from the directory, created in their shardings.

    Returns (params, stats): stats has tensors, bytes read, the largest tensor's bytes.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from sparrow_jax.hf.safetensors_dir import TensorDir

    tensors = TensorDir(hf_dir)
    m = cfg.model.to_dict()
    with open(os.path.join(hf_dir, "config.json")) as f:
        m["vocab_size"] = model_overrides(json.load(f))["vocab_size"]   # the checkpoint's rows
    extra_rows = cfg.model.vocab_size - m["vocab_size"]
    plan = tensor_plan(m, cfg.model.n_frozen_layers)
    dtype = jnp.dtype(cfg.model.param_dtype)
    stats = {"tensors": 0, "bytes": 0, "largest_tensor_bytes": 0}
    used = set()

    def read(entry, i=None):
        name = entry.hf_name.format(i=i)
        shape, st_dtype = tensors.info(name)
        check_tensor(entry, name, shape, st_dtype)
        array = tensors.get(name)
        used.add(name)
        stats["tensors"] += 1
        stats["bytes"] += array.nbytes
        stats["largest_tensor_bytes"] = max(stats["largest_tensor_bytes"], array.nbytes)
        return np.asarray(entry.to_ours(array), dtype)

    @partial(jax.jit, donate_argnums=0)
    def set_layer(stack, layer, j):
        return jax.lax.dynamic_update_index_in_dim(stack, layer, j, 0)

    def with_extra_rows(entry, array):
        """New vocabulary rows (embedding [V, D]) / columns (unembed [D, V]): the mean one."""
        if extra_rows <= 0 or entry.path not in (("trunk", "embedding"), ("policy", "unembed")):
            return array
        axis = 0 if entry.path[-1] == "embedding" else 1
        mean = array.mean(axis=axis, keepdims=True)
        return np.concatenate([array, np.repeat(mean, extra_rows, axis=axis)], axis=axis)

    params: dict = {}
    for entry in plan:
        sharding = _get(param_shardings, entry.path)
        if entry.layers is None:
            value = jax.device_put(with_extra_rows(entry, read(entry)), sharding)
        else:
            first = read(entry, entry.layers[0])
            shape = (len(entry.layers),) + first.shape
            value = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
            for j, i in enumerate(entry.layers):
                layer = first if j == 0 else read(entry, i)
                value = set_layer(value, layer, j)
                del layer
            del first
        _set(params, entry.path, value)
    unused = [n for n in tensors.names() if n not in used and "rotary_emb" not in n]
    if unused:
        raise HFImportError(f"{hf_dir}: tensors the {cfg.name} plan does not use: {unused[:8]}"
                            f"{' ...' if len(unused) > 8 else ''} (another architecture?)")
    stats["vocab_rows_added"] = max(extra_rows, 0)
    return params, stats


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def run_import(hf_dir: str, workdir: str, n_frozen_layers: int | None = None, overrides=(),
               log=print) -> dict:
    """Import `hf_dir` into `workdir`; returns the import report (also `import.json`)."""
    import jax
    from sparrow_jax import sharding as shd
    from sparrow_jax.model import hydra
    from sparrow_jax.train.checkpoints import Checkpointer, checkpoint_dir
    from sparrow_jax.train.optimizer import make_optimizer
    from sparrow_jax.train.state import init_state, sharded_state_factory
    from sparrow_jax.train.trainable import STAGE_ROLES, merge_params

    start = time.perf_counter()
    rss_before = _peak_rss_bytes()
    cfg, family = import_config(hf_dir, n_frozen_layers, overrides)
    mesh = shd.make_mesh(cfg.mesh)
    rules = shd.rules_from_config(cfg.mesh)
    roles = STAGE_ROLES["lm"]
    optimizer, _ = make_optimizer(cfg.train, cfg.train.steps)
    _, abstract, shardings = sharded_state_factory(
        partial(hydra.init_params, cfg.model, roles=roles),
        hydra.param_logical_axes(cfg.model, roles=roles), "lm", optimizer, mesh, rules)
    param_shardings = merge_params(shardings.params, shardings.frozen)
    read_start = time.perf_counter()
    params, stats = load_params(hf_dir, cfg, param_shardings, log)
    jax.block_until_ready(params)
    read_seconds = time.perf_counter() - read_start
    rss_after_read = _peak_rss_bytes()
    expected = jax.tree.map(lambda a: (a.shape, a.dtype),
                            merge_params(abstract.params, abstract.frozen))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    if expected != got:
        raise HFImportError(f"imported params do not match the hydra's: {got} vs {expected}")
    state = jax.jit(lambda p, r: init_state(p, "lm", optimizer, r), out_shardings=shardings,
                    donate_argnums=0)(params, jax.random.PRNGKey(cfg.train.seed))
    os.makedirs(workdir, exist_ok=True)
    assets = {}
    tokenizer = os.path.join(hf_dir, "tokenizer.model")
    if os.path.exists(tokenizer):
        with open(tokenizer, "rb") as f:
            assets["tokenizer.model"] = f.read()
        shutil.copy(tokenizer, os.path.join(workdir, "tokenizer.model"))
    ckpt = Checkpointer(checkpoint_dir(workdir), async_save=False)
    report = {"source": os.path.abspath(hf_dir), "family": family,
              "n_layers": cfg.model.n_layers, "n_frozen_layers": cfg.model.n_frozen_layers,
              "params": hydra.count_params(state.params) + hydra.count_params(state.frozen),
              **stats, "read_seconds": read_seconds,
              "mb_per_second": stats["bytes"] / 1e6 / max(read_seconds, 1e-9),
              "peak_rss_after_read_bytes": rss_after_read}
    ckpt.save(0, state, meta={"config": cfg.to_dict(), "stage": "lm", "data": None,
                              "imported_from": report["source"]}, assets=assets, force=True)
    ckpt.close()
    report["seconds"] = time.perf_counter() - start
    report["peak_rss_bytes"] = _peak_rss_bytes()
    report["peak_rss_before_bytes"] = rss_before
    with atomic_write(os.path.join(workdir, "config.json")) as f:
        json.dump(cfg.to_dict(), f, indent=1)
    with atomic_write(os.path.join(workdir, "experiment.py")) as f:
        f.write(EXPERIMENT_PY)
    with atomic_write(os.path.join(workdir, "import.json")) as f:
        json.dump(report, f, indent=1)
    log(f"imported {family} {hf_dir} -> {workdir}: {report['params']:,} params, "
        f"{stats['tensors']} tensors, {report['mb_per_second']:.1f} MB/s")
    return report
