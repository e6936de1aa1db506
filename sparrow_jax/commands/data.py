"""`sparrow data`: generate the toy world, build TFDS datasets, convert public formats.

    sparrow data toyworld --out DIR [--seed S] [--no-build] [--set n_dialogues=300 ...]
    sparrow data build --jsonl-dir DIR [--tfds-dir DIR/tfds] [--rules FILE]
    sparrow data convert --format hh|pku|questions --in FILE --out FILE
                         [--dialogues-out FILE] [--rule-ratings-out FILE] [--rules FILE] [--strict]
    sparrow data prepare --out DIR [--hh FILE ...] [--pku FILE ...] [--questions FILE ...]
                         [--hh-red-team FILE ...] [--corpus FILE ...]
                         [--test-fraction 0.1] [--seed 0] [--no-build] [--rules FILE] [--strict]

Bad input (a schema error naming file, line and field) prints one line and exits 2.
Heavy imports (tfds, grain) happen inside the handlers: the `sparrow` command imports
this module just to build its parser.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    toy = sub.add_parser("toyworld", help="generate the toy world's JSONL files (and build TFDS)")
    toy.add_argument("--out", required=True, help="output directory")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--build", action=argparse.BooleanOptionalAction, default=True,
                     help="also build the TFDS datasets under OUT/tfds (default: on)")
    toy.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a ToyWorldConfig field, e.g. --set n_dialogues=300")
    _add_rules_flag(toy)

    build = sub.add_parser("build", help="build TFDS datasets (array_record) from JSONL files")
    build.add_argument("--jsonl-dir", required=True)
    build.add_argument("--tfds-dir", default=None, help="default: JSONL_DIR/tfds")
    _add_rules_flag(build)

    convert = sub.add_parser("convert", help="convert a public data file to our JSONL records")
    convert.add_argument("--format", required=True, choices=("hh", "pku", "questions"))
    convert.add_argument("--in", dest="in_path", required=True)
    convert.add_argument("--out", required=True,
                         help="preferences (hh, pku) or prompts (questions)")
    convert.add_argument("--dialogues-out", default=None, help="hh: SFT dialogues from the chosen side")
    convert.add_argument("--rule-ratings-out", default=None, help="pku: rule ratings from harm labels")
    convert.add_argument("--strict", action="store_true",
                         help="fail on a record with no faithful conversion instead of counting it")
    _add_rules_flag(convert)

    prep = sub.add_parser("prepare", help="public data files -> a training-ready data dir "
                                          "(merged, split train/test, TFDS built)")
    prep.add_argument("--out", required=True, help="a new (or empty) data dir")
    for fmt, what in (("hh", "HH-RLHF JSONL(.gz)"),
                      ("pku", "PKU-SafeRLHF JSONL(.gz); unsafe prompts also become red-team probes"),
                      ("questions", "a question per line"),
                      ("hh-red-team", "HH red_team_attempts (JSON array or JSONL, .gz): probes"),
                      ("corpus", "search corpus: JSONL of {title, text[, id, url]} (a Wikipedia-"
                                 "style dump); indexed into OUT/search_index")):
        prep.add_argument(f"--{fmt}", action="append", default=[], metavar="FILE",
                          dest=fmt.replace("-", "_"), help=f"{what} (repeatable)")
    prep.add_argument("--test-fraction", type=float, default=0.1,
                      help="share of conversations in the test split (seeded, by conversation)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--build", action=argparse.BooleanOptionalAction, default=True,
                      help="also build the TFDS datasets under OUT/tfds (default: on)")
    prep.add_argument("--strict", action="store_true",
                      help="fail on a record with no faithful conversion instead of counting it")
    _add_rules_flag(prep)


def _add_rules_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", default=None,
                        help="rules JSONL whose ids data files may use (default: the packaged rules)")


def _rule_ids(path: str | None) -> frozenset[str]:
    from sparrow_jax.dialogue.rules import load_rules
    return frozenset(rule.id for rule in load_rules(path))


def _toyworld_config(seed: int, settings: list[str]):
    from sparrow_jax.data.toyworld import ToyWorldConfig
    fields = {f.name: f for f in dataclasses.fields(ToyWorldConfig)}
    values = {"seed": seed}
    for setting in settings:
        name, sep, raw = setting.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {setting!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(fields)}")
        kind = type(getattr(ToyWorldConfig(), name))
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                values[name] = raw.lower() in ("true", "1")
            else:
                values[name] = kind(raw)
        except ValueError:
            raise ValueError(f"--set {setting!r}: {raw!r} is not a {kind.__name__}") from None
    return ToyWorldConfig(**values)


def _build(jsonl_dir: str, tfds_dir: str, rules: str | None) -> float:
    from sparrow_jax.data import tfds_builders
    start = time.perf_counter()
    builders = tfds_builders.build_all(jsonl_dir, tfds_dir, rule_ids=_rule_ids(rules))
    seconds = time.perf_counter() - start
    for kind, builder in builders.items():
        sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
        print(f"  {builder.name}: {sizes}")
    print(f"built {len(builders)} TFDS datasets in {tfds_dir} in {seconds:.1f}s")
    return seconds


def make_toyworld(out: str, seed: int = 0, settings: list[str] = (), build: bool = True,
                  rules: str | None = None) -> None:
    """Generate the toy world in `out` (settings: "FIELD=VALUE" ToyWorldConfig overrides) and
    build its TFDS datasets under out/tfds. Raises ValueError for a bad setting."""
    from sparrow_jax.data.toyworld import generate
    config = _toyworld_config(seed, list(settings))
    start = time.perf_counter()
    paths = generate(out, config)
    generated = time.perf_counter() - start
    print(f"generated the toy world (seed {config.seed}, {len(paths)} outputs) in {out} "
          f"in {generated:.1f}s")
    if build:
        built = _build(out, os.path.join(out, "tfds"), rules)
        print(f"toy world generation + TFDS build: {generated + built:.1f}s")


def _toyworld(args) -> None:
    make_toyworld(args.out, args.seed, args.set, args.build, args.rules)


def _convert(args) -> None:
    from sparrow_jax.data import converters
    result = converters.convert(
        args.format, args.in_path, args.out, dialogues_out=args.dialogues_out,
        rule_ratings_out=args.rule_ratings_out, rule_ids=_rule_ids(args.rules), strict=args.strict)
    for path, count in result["written"].items():
        print(f"wrote {count} records to {path}")
    for reason, count in result["skipped"].items():
        print(f"skipped {count} records: {reason}")


def _prepare(args) -> None:
    from sparrow_jax.data.prepare import prepare
    sources = [(fmt, path) for fmt in ("hh", "pku", "questions", "hh-red-team", "corpus")
               for path in getattr(args, fmt.replace("-", "_"))]
    start = time.perf_counter()
    summary = prepare(args.out, sources, test_fraction=args.test_fraction, seed=args.seed,
                      rule_ids=_rule_ids(args.rules), strict=args.strict, build=args.build)
    for kind, splits in summary["counts"].items():
        print(f"  {kind}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
    for reason, count in summary["skipped"].items():
        print(f"skipped {count} records: {reason}")
    print(f"prepared {args.out} from {len(sources)} sources in {time.perf_counter() - start:.1f}s"
          + (" (TFDS built)" if args.build else " (not built: sparrow data build --jsonl-dir OUT)"))


def run(args, overrides) -> int:
    if overrides:
        print(f"sparrow data: --config overrides do not apply here: {overrides}", file=sys.stderr)
        return 2
    handlers = {
        "toyworld": _toyworld,
        "build": lambda a: _build(a.jsonl_dir, a.tfds_dir or os.path.join(a.jsonl_dir, "tfds"), a.rules),
        "convert": _convert,
        "prepare": _prepare,
    }
    try:
        handlers[args.data_command](args)
    except (ValueError, FileNotFoundError) as err:
        message = " ".join(str(err).split())  # one line, whatever the error text holds
        print(f"sparrow data {args.data_command}: error: {message}", file=sys.stderr)
        return 2
    return 0
