"""`sparrow import` speed and host memory on a synthetic Llama-shaped checkpoint.

    python benchmarks/hf_import.py [--d-model 1024] [--layers 8] [--vocab 32000] [--dtype BF16]

Writes random weights (NumPy, no torch) as model.safetensors + config.json in a temp dir,
then runs `sparrow import` in a fresh process and reads its import.json: MB/s of tensor
reading, the process's peak RSS, and the peak over (baseline + the params the CPU "device"
holds), in units of the largest tensor. On CPU the devices are host memory, so the params
themselves count in the RSS; a TPU host would hold only the overhead.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np


def write_checkpoint(directory, d, layers, vocab, dtype):
    from safetensors.numpy import save_file
    heads, kv, ff = d // 64, max(1, d // 256), 4 * d
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
           "hidden_size": d, "intermediate_size": ff, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": 64,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "rope_theta": 500000.0, "tie_word_embeddings": False}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(0)
    np_dtype = ml_dtypes.bfloat16 if dtype == "BF16" else np.float32
    rand = lambda *shape: (0.02 * rng.standard_normal(shape, np.float32)).astype(np_dtype)
    t = {"model.embed_tokens.weight": rand(vocab, d), "lm_head.weight": rand(vocab, d),
         "model.norm.weight": np.ones(d, np_dtype)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": rand(heads * 64, d),
                  p + "self_attn.k_proj.weight": rand(kv * 64, d),
                  p + "self_attn.v_proj.weight": rand(kv * 64, d),
                  p + "self_attn.o_proj.weight": rand(d, heads * 64),
                  p + "mlp.gate_proj.weight": rand(ff, d), p + "mlp.up_proj.weight": rand(ff, d),
                  p + "mlp.down_proj.weight": rand(d, ff),
                  p + "input_layernorm.weight": np.ones(d, np_dtype),
                  p + "post_attention_layernorm.weight": np.ones(d, np_dtype)})
    save_file(t, os.path.join(directory, "model.safetensors"))
    return sum(a.nbytes for a in t.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="BF16", choices=["BF16", "F32"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf, out = os.path.join(tmp, "hf"), os.path.join(tmp, "out")
        os.makedirs(hf)
        file_bytes = write_checkpoint(hf, args.d_model, args.layers, args.vocab, args.dtype)
        # Baseline: the same process imports JAX, orbax and the model code, and stops there.
        probe = ("import resource, jax, orbax.checkpoint, sparrow_jax.hf.importer, "
                 "sparrow_jax.train.init_from; jax.numpy.zeros(1).block_until_ready(); "
                 "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
        baseline = int(subprocess.run([sys.executable, "-c", probe], check=True,
                                      capture_output=True, text=True).stdout.split()[-1])
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        subprocess.run([sys.executable, "-m", "sparrow_jax", "import", "--hf", hf,
                        "--workdir", out, "--n-frozen-layers", str(args.layers // 2)],
                       check=True, env=env, capture_output=True)
        with open(os.path.join(out, "import.json")) as f:
            report = json.load(f)
    params_bytes = report["params"] * 4  # float32 params on the CPU device
    largest = report["largest_tensor_bytes"]
    overhead = report["peak_rss_bytes"] - baseline - params_bytes
    read_overhead = report["peak_rss_after_read_bytes"] - baseline - params_bytes
    print(json.dumps({
        "checkpoint_bytes": file_bytes, "dtype": args.dtype, "tensors": report["tensors"],
        "largest_tensor_bytes": largest, "params_f32_bytes": params_bytes,
        "read_seconds": round(report["read_seconds"], 2),
        "mb_per_second": round(report["mb_per_second"], 1),
        "import_seconds": round(report["seconds"], 2),
        "baseline_rss_bytes": baseline, "peak_rss_bytes": report["peak_rss_bytes"],
        "peak_after_read_bytes": report["peak_rss_after_read_bytes"],
        "read_peak_over_baseline_and_params_in_largest_tensors": round(read_overhead / largest, 2),
        "peak_over_baseline_and_params_in_largest_tensors": round(overhead / largest, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
