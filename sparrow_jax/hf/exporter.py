"""`sparrow export`: a workdir's policy (trunk + one top) -> a Hugging Face directory.

The inverse of `importer`: the model keys name the family (`families.family_of_model`), the
tensor plan maps each hydra leaf back to its HF tensor (`Entry.from_ours`), and the directory
gets config.json, model.safetensors (float32, or the `dtype` asked for) and the checkpoint's
tokenizer.model when it stored one. Reads the newest checkpoint (or `step`) through
`train.init_from.load_source`, so an rl workdir's frozen parts come from where it names them.
The tensors are gathered to the host before writing (safetensors writes one file at once).
"""
from __future__ import annotations

import json
import os

from sparrow_jax.data.jsonl import atomic_write
from sparrow_jax.hf.families import HFImportError, tensor_plan


def hf_config(m: dict) -> dict:
    """config.json of the model keys `m`; HFImportError when they are no supported family."""
    family = family_of_model(m)
    hf = {"vocab_size": m["vocab_size"], "hidden_size": m["d_model"],
          "intermediate_size": m["d_ff"], "num_hidden_layers": m["n_layers"],
          "num_attention_heads": m["n_heads"],
          "num_key_value_heads": m["n_kv_heads"] or m["n_heads"],
          "head_dim": m["head_dim"], "max_position_embeddings": m["max_len"],
          "rms_norm_eps": m["norm_eps"], "tie_word_embeddings": m["tied_embeddings"],
          "attention_bias": False, "torch_dtype": "float32"}
    rope = {"rope_type": "default", "rope_theta": m["rotary_base"]}
    if m["rotary_scaling"] == "linear":
        rope.update(rope_type="linear", factor=m["rotary_scaling_factor"])
    elif m["rotary_scaling"] == "llama3":
        rope.update(rope_type="llama3", factor=m["rotary_scaling_factor"],
                    low_freq_factor=m["rotary_low_freq_factor"],
                    high_freq_factor=m["rotary_high_freq_factor"],
                    original_max_position_embeddings=m["rotary_original_max_len"])
    hf["rope_parameters"] = rope
    if family == "llama":
        hf.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  mlp_bias=False)
    else:
        hf.update(architectures=["GemmaForCausalLM"], model_type="gemma",
                  hidden_activation="gelu_pytorch_tanh")
    return hf


def family_of_model(m: dict) -> str:
    """'llama' or 'gemma' for model keys that one of them can hold, else HFImportError."""
    common = m["position"] == "rotary" and not m.get("smeared_keys")
    if common and m["mlp"] == "swiglu" and not m["norm_unit_offset"] and not m["embed_scale"]:
        return "llama"
    if (common and m["mlp"] == "gated_gelu" and m["norm_unit_offset"] and m["embed_scale"]
            and m["rotary_scaling"] == "none"):
        return "gemma"
    raise HFImportError(
        f"model keys position={m['position']!r}, mlp={m['mlp']!r}, norm_unit_offset="
        f"{m['norm_unit_offset']}, embed_scale={m['embed_scale']}, smeared_keys="
        f"{m.get('smeared_keys')} are neither Llama's (rotary, swiglu, no offset or scale) nor "
        f"Gemma's (rotary, gated_gelu, norm_unit_offset, embed_scale): no HF architecture to "
        f"export")


def run_export(workdir: str, out: str, role: str = "policy", step: int | None = None,
               dtype: str = "float32", log=print) -> dict:
    """Write `role`'s model (trunk + its top) of `workdir` as an HF directory `out`."""
    import jax
    import ml_collections
    import numpy as np
    from safetensors.numpy import save_file

    from sparrow_jax import sharding as shd
    from sparrow_jax.train import init_from, stage_data
    from sparrow_jax.train.checkpoints import Checkpointer, checkpoint_dir

    if role not in ("policy", "teacher"):
        raise HFImportError(f"--role {role!r}: only an LM role (policy, teacher) has an HF form")
    ckpt = Checkpointer(checkpoint_dir(workdir), create=False)
    try:
        steps = ckpt.steps()
        if not steps:
            raise HFImportError(f"{workdir} has no checkpoint under {checkpoint_dir(workdir)}")
        meta = ckpt.read_meta(steps[-1] if step is None else step)
        cfg = ml_collections.ConfigDict(meta["config"])
    finally:
        ckpt.close()
    m = cfg.model.to_dict()
    hf = hf_config(m)
    source = init_from.load_source(workdir, cfg, shd.make_mesh(cfg.mesh), step=step)
    if role not in source.params:
        raise HFImportError(f"{workdir}@{source.step} holds no {role!r} (it has "
                            f"{sorted(source.params)})")
    params = {"trunk": source.params["trunk"], "policy": source.params[role]}
    np_dtype = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}[dtype]
    tensors = {}
    for entry in tensor_plan(m, m["n_frozen_layers"]):
        leaf = np.asarray(jax.device_get(_get(params, entry.path)))
        if entry.layers is None:
            tensors[entry.hf_name] = np.ascontiguousarray(entry.from_ours(leaf).astype(np_dtype))
        else:
            for j, i in enumerate(entry.layers):
                tensors[entry.hf_name.format(i=i)] = np.ascontiguousarray(
                    entry.from_ours(leaf[j]).astype(np_dtype))
    hf["torch_dtype"] = dtype
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with atomic_write(os.path.join(out, "config.json")) as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    tokenizer = stage_data.checkpoint_tokenizer(workdir)
    if tokenizer is not None:
        with open(os.path.join(out, "tokenizer.model"), "wb") as f:
            f.write(tokenizer[1])
    log(f"exported {role} of {workdir}@{source.step} ({hf['architectures'][0]}, "
        f"{len(tensors)} tensors) -> {out}")
    return {"step": source.step, "tensors": len(tensors), "architecture": hf["architectures"][0]}


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree
