"""`sparrow import --hf DIR --workdir OUT [--n-frozen-layers K] [--config.a.b=v ...]`.

Reads a Hugging Face directory (config.json, model.safetensors or its sharded index,
tokenizer.model) tensor by tensor into an lm-stage workdir that
`sparrow train ...:sft --config.train.init_from=OUT` starts from (sparrow_jax/hf/importer.py).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--workdir", required=True, help="output workdir (lm stage)")
    parser.add_argument("--n-frozen-layers", type=int, default=None,
                        help="bottom layers that form the frozen trunk (default: 4/5 of them)")


def run(args, overrides) -> int:
    import sys

    from sparrow_jax.hf.families import HFImportError
    from sparrow_jax.hf.importer import run_import
    try:
        run_import(args.hf, args.workdir, args.n_frozen_layers, overrides)
    except (HFImportError, FileNotFoundError) as err:
        print(f"sparrow import: {err}", file=sys.stderr)
        return 2
    return 0
