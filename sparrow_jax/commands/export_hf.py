"""`sparrow export --workdir RUN [--role policy] [--step N] [--dtype float32] --out DIR`.

Writes a workdir's policy (trunk + policy top) as a Hugging Face directory (config.json,
model.safetensors, tokenizer.model) that `transformers` loads (sparrow_jax/hf/exporter.py).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="a policy workdir (lm, sft, rl, import)")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
    parser.add_argument("--role", default="policy", help="policy (default) or teacher")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def run(args, overrides) -> int:
    import sys

    from sparrow_jax.hf.exporter import run_export
    from sparrow_jax.hf.families import HFImportError
    if overrides:
        print("sparrow export: takes no --config overrides (the checkpoint's config is used)",
              file=sys.stderr)
        return 2
    try:
        run_export(args.workdir, args.out, args.role, args.step, args.dtype)
    except HFImportError as err:
        print(f"sparrow export: {err}", file=sys.stderr)
        return 2
    return 0
