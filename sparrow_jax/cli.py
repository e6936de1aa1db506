"""The `sparrow` command (also `python -m sparrow_jax`).

Each subcommand lives in its own module, imported here for its flags; none imports
JAX before its `run()`, so that e.g. `sparrow aot` can set the simulated device count
before JAX starts.
Config overrides are written `--config.a.b=value` after the other flags.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, function, one-line help). The function takes the parsed
# argparse namespace plus the list of `--config.*` overrides and returns an exit code.
COMMANDS = {
    "demo": ("sparrow_jax.commands.demo", "run", "whole recipe at toy scale on CPU"),
    "train": ("sparrow_jax.commands.train", "run", "train one stage from an experiment config"),
    "eval": ("sparrow_jax.commands.evaluate", "run", "evaluate a checkpoint; writes report.json/md and plots"),
    "chat": ("sparrow_jax.commands.chat", "run", "talk to a checkpoint"),
    "aot": ("sparrow_jax.commands.aot", "run", "compile update steps for a large mesh without weights"),
    "sweep": ("sparrow_jax.commands.sweep", "run", "expand get_sweep() into runs"),
    "data": ("sparrow_jax.commands.data", "run", "generate or build datasets (e.g. `data toyworld`)"),
    "import": ("sparrow_jax.commands.import_hf", "run", "import a Hugging Face checkpoint (Llama, Gemma) as an lm workdir"),
    "export": ("sparrow_jax.commands.export_hf", "run", "write a workdir's policy as a Hugging Face directory"),
    "rate": ("sparrow_jax.commands.rate", "run", "rating web app: collect comparisons and rule probes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparrow", description="Sparrow-style dialogue agents in JAX. "
        "Config overrides: --config.a.b=value.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, _, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = _maybe_import(module_name)
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(command_parser)
    return parser


def _maybe_import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    parser = build_parser()
    args = parser.parse_args(rest)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    module_name, function_name, _ = COMMANDS[args.command]
    module = _maybe_import(module_name)
    if module is None:
        print(f"sparrow {args.command}: not yet available in this version.", file=sys.stderr)
        sys.exit(2)
    from sparrow_jax import host_memory
    from sparrow_jax.config import ConfigError
    host_memory.reuse_freed_memory()  # before JAX starts its threads
    try:
        code = getattr(module, function_name)(args, overrides)
    except ConfigError as err:
        print(f"sparrow {args.command}: config error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
