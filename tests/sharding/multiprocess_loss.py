"""One SFT update's loss on a 2x2x2 mesh, as 1 process x 8 devices or 2 processes x 4.

    python multiprocess_loss.py --local-devices 8
    python multiprocess_loss.py --local-devices 4 --num-processes 2 --process-id I --port P

Prints one JSON line {"process", "loss", "grad_norm", "devices"}. Each process loads
only its rows of the global batch (`process_batch_slice`) and assembles the global
array with `host_local_to_global`.
"""
import argparse
import json
import os


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--local-devices", type=int, default=8)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import numpy as np

    from sparrow_jax import distributed, sharding as shd
    from sparrow_jax.config import default_config
    from sparrow_jax.train import stages
    from sparrow_jax.train.step import batch_shardings

    cfg = default_config()
    m = cfg.model
    m.vocab_size, m.d_model, m.n_heads, m.head_dim, m.d_ff = 64, 32, 2, 16, 64
    m.n_layers, m.n_frozen_layers, m.max_len, m.value_hidden = 2, 1, 32, 16
    m.compute_dtype = "float32"
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    cfg.train.batch_size, cfg.train.seq_len, cfg.train.warmup_steps = 8, 16, 0
    if args.num_processes > 1:
        cfg.distributed.mode = "explicit"
        cfg.distributed.coordinator = f"127.0.0.1:{args.port}"
        cfg.distributed.num_processes = args.num_processes
        cfg.distributed.process_id = args.process_id
    else:
        cfg.distributed.mode = "off"
    distributed.initialize(cfg.distributed)

    mesh = shd.make_mesh(cfg.mesh)
    setup = stages.build_stage(cfg, mesh, "sft", log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    global_batch = stages.example_batch("sft", 8, 16, m.vocab_size, seed=0)
    shardings = batch_shardings(setup.batch_shapes, mesh, shd.rules_from_config(cfg.mesh))
    local = {k: v[distributed.process_batch_slice(8, shardings[k], v.shape)]
             for k, v in global_batch.items()}
    batch = distributed.host_local_to_global(local, mesh, shardings)
    losses = []
    for _ in range(2):  # two updates: the second loss depends on the first update
        state, metrics = setup.step(state, batch)
        losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
    print(json.dumps({
        "process": jax.process_index(), "devices": jax.device_count(),
        "local_rows": len(local["tokens_BxL"]), "main": distributed.is_main_process(),
        "loss": losses, "grad_norm": float(np.asarray(metrics["grad_norm"].addressable_data(0))),
    }), flush=True)


if __name__ == "__main__":
    main()
