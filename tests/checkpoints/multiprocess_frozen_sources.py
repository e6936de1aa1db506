"""Fingerprints and rl-style checkpoints of a sharded tiny state, as 1 process x 8 devices
or 2 processes x 4 (every array then spans both processes).

    python multiprocess_frozen_sources.py --root DIR --local-devices 8
    python multiprocess_frozen_sources.py --root DIR --local-devices 4 --num-processes 2 \
        --process-id I --port P

In ROOT/source it saves a whole rl TrainState (the source of the frozen parts); in ROOT/rl
the same state without its frozen parts, their references in the meta. Then it restores
ROOT/rl as a resumed rl run does (trainable part + frozen parts re-read and checked) and
prints one JSON line: {"process", "devices", "fingerprints": {part: hex}, "restored": {...}}.
"""
import argparse
import json
import os


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--local-devices", type=int, default=8)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from sparrow_jax import distributed, sharding as shd
    from sparrow_jax.config import default_config
    from sparrow_jax.rl import checkpoint as rl_checkpoint
    from sparrow_jax.train import stages
    from sparrow_jax.train.checkpoints import Checkpointer, checkpoint_dir
    from sparrow_jax.train.fingerprint import fingerprint
    from sparrow_jax.train.init_from import Source

    cfg = default_config()
    m = cfg.model
    m.vocab_size, m.d_model, m.n_heads, m.head_dim, m.d_ff = 64, 32, 2, 16, 64
    m.n_layers, m.n_frozen_layers, m.max_len, m.value_hidden = 2, 1, 32, 16
    cfg.mesh.shape.data, cfg.mesh.shape.fsdp, cfg.mesh.shape.tensor = 2, 2, 2
    cfg.train.stage, cfg.train.batch_size, cfg.train.seq_len = "rl", 8, 16
    if args.num_processes > 1:
        cfg.distributed.mode = "explicit"
        cfg.distributed.coordinator = f"127.0.0.1:{args.port}"
        cfg.distributed.num_processes = args.num_processes
        cfg.distributed.process_id = args.process_id
    else:
        cfg.distributed.mode = "off"
    distributed.initialize(cfg.distributed)

    mesh = shd.make_mesh(cfg.mesh)
    setup = stages.build_stage(cfg, mesh, "rl", seq_len=16, log_unsharded=False)
    state = setup.init_fn(jax.random.PRNGKey(0))
    assert not state.frozen["trunk"]["embedding"].is_fully_addressable or args.num_processes == 1

    source_dir, rl_dir = os.path.join(args.root, "source"), os.path.join(args.root, "rl")
    ckpt = Checkpointer(checkpoint_dir(source_dir), async_save=False)
    ckpt.save(3, state, meta={"config": cfg.to_dict()}, force=True)
    ckpt.close()
    source = Source(source_dir, 3, {"teacher": state.frozen["teacher"]}, cfg.to_dict())
    refs = rl_checkpoint.frozen_references(
        state.frozen, source, {"pref_rm": source, "rule_rm": source})
    ckpt = Checkpointer(checkpoint_dir(rl_dir), async_save=False)
    rl_checkpoint.save(ckpt, 5, state, refs, meta={"config": cfg.to_dict()}, assets={})
    ckpt.close()

    ckpt = Checkpointer(checkpoint_dir(rl_dir), async_save=False)
    restored, restored_refs = rl_checkpoint.restore(ckpt, setup.abstract_state, json.dumps(cfg.to_dict()))
    ckpt.close()
    same_shardings = all(a.sharding == b.sharding for a, b in
                         zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)))
    print(json.dumps({
        "process": jax.process_index(), "devices": jax.device_count(),
        "fingerprints": {part: ref.fingerprint for part, ref in refs.items()},
        "restored": {"step": restored.step, "same_shardings": same_shardings,
                     "frozen": {k: fingerprint(v) for k, v in restored.state.frozen.items()},
                     "params": fingerprint(restored.state.params),
                     "params_before": fingerprint(state.params),
                     "refs_equal": restored_refs == refs},
    }), flush=True)


if __name__ == "__main__":
    main()
