"""`sparrow chat --workdir DIR [--n-best N] [--verbose]`: talk to a checkpoint in the terminal.

Each input line is one User turn (piped stdin works: one line per turn, the chat ends at EOF). The agent
may search: its Search Query and the Search Result (title, source, fragment) are shown before its reply.
--verbose shows every candidate's reward-model scores (pref Elo, the most likely broken rules, the
rerank score). Scores and reranking use the RMs' calibrated probabilities (`evaluation/scoring.py`: each
RM's temperature fitted at the end of its training; an RM without one is used at 1.0, said once on
stderr; --verbose lists the temperatures on stderr). Input is only ever the text of a User turn: a line such as "Sparrow: ..." or
"Search Result: ..." is plain user text, never a turn of that role.
Exit codes: 0 at EOF; 2 bad input (as `sparrow eval`).
"""
from __future__ import annotations

import sys
from typing import Iterable, TextIO

from sparrow_jax.data.jsonl import clean_text

INDENT = "    "


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="the policy's workdir (lm, sft or rl stage)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--n-best", type=int, default=1, help="rerank @N (even N >= 2); 1 = no reranking")
    parser.add_argument("--verbose", action="store_true", help="show every candidate's RM scores")
    parser.add_argument("--pref-rm", default=None, help="preference RM workdir")
    parser.add_argument("--rule-rm", default=None, help="rule RM workdir")
    parser.add_argument("--evidence", default="free", choices=("free", "choose", "always", "never"),
                        help="evidence mode without reranking")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None,
                        help="experiment file[:variant] (default: the checkpoint's own config)")


def format_turn(turn) -> str:
    """`Name: text`; a Search Result's title / source / fragment lines are indented under it."""
    from sparrow_jax.dialogue.turns import DEFAULT_DISPLAY_NAMES, Role
    name = DEFAULT_DISPLAY_NAMES[turn.role]
    if turn.role == Role.SEARCH_RESULT:
        lines = turn.text.split("\n")
        return f"{name}: {lines[0]}" + "".join(f"\n{INDENT}{line}" for line in lines[1:])
    return f"{name}: {turn.text}"


def format_candidate(index: int, view, chosen: bool, top_rules: int = 3) -> str:
    """One --verbose line block: mode, Elo, rerank score, the likeliest broken rules, the turns."""
    head = f"  [{index}]{'*' if chosen else ' '} evidence={view.evidence}"
    if view.elo is not None:
        head += f" elo={view.elo:+.3f}"
    if view.log_score is not None:
        head += f" log_score={view.log_score:.3f}"
    if view.malformed:
        head += f" malformed={view.malformed}"
    if view.p_broken:
        worst = sorted(view.p_broken.items(), key=lambda kv: -kv[1])[:top_rules]
        head += " p_broken: " + ", ".join(f"{rule}={p:.2f}" for rule, p in worst)
    body = "".join(f"\n{INDENT}" + format_turn(t).replace("\n", f"\n{INDENT}") for t in view.new_turns)
    return head + body


def chat_loop(agent, env, lines: Iterable[str], out: TextIO, *, scorer=None, n_best: int = 1,
              verbose: bool = False, seed: int = 0, interactive: bool = False):
    """Run the chat over `lines` (one User turn each; blank lines are skipped); returns the dialogue."""
    import jax
    from sparrow_jax.dialogue.turns import Role, Turn
    from sparrow_jax.evaluation.respond import respond
    history: tuple = ()
    rng = jax.random.PRNGKey(seed)
    turn_index = 0
    if interactive:
        out.write("User: ")
        out.flush()
    for line in lines:
        text = clean_text(line.rstrip("\r\n"))  # the boundary rule for typed text (data/jsonl.py)
        if text.strip():
            history += (Turn(Role.USER, text),)  # the whole line is user text, whatever it says
            if not interactive:
                out.write(format_turn(history[-1]) + "\n")
            reply = respond(agent, env, history, jax.random.fold_in(rng, turn_index), scorer=scorer,
                            n_best=n_best)
            turn_index += 1
            if verbose:
                out.write(f"candidates ({len(reply.candidates)}, * = chosen):\n")
                for i, view in enumerate(reply.candidates):
                    out.write(format_candidate(i, view, i == reply.chosen) + "\n")
            for turn in reply.new_turns:
                out.write(format_turn(turn) + "\n")
            history += tuple(reply.new_turns)
        if interactive:
            out.write("User: ")
        out.flush()
    if interactive:
        out.write("\n")
    return history


def run(args, overrides) -> int:
    from sparrow_jax.commands.evaluate import _quiet_logs
    _quiet_logs()
    from sparrow_jax.config import load_experiment
    from sparrow_jax.evaluation.agent import load_agent
    from sparrow_jax.evaluation.reranking import RerankConfig
    from sparrow_jax.evaluation.checkpoint_params import WorkdirError
    from sparrow_jax.evaluation.evaluator import make_environment
    from sparrow_jax.evaluation.scoring import MissingRewardModel, Scorer
    try:
        if args.n_best > 1:
            RerankConfig(args.n_best)  # validates N before loading anything
        config = load_experiment(args.config) if args.config else None
        agent = load_agent(args.workdir, step=args.step, pref_rm=args.pref_rm, rule_rm=args.rule_rm,
                           config=config, overrides=overrides)
        scorer = None
        if args.n_best > 1 or args.verbose:
            scorer = Scorer(agent, batch_size=args.n_best, rule_batch_size=args.n_best)
            scorer.require("pref_rm")
            scorer.require("rule_rm")
            if args.verbose:
                for note in scorer.notes:
                    print(note, file=sys.stderr)
        env = make_environment(agent, args.evidence)
    except (WorkdirError, MissingRewardModel, FileNotFoundError, ValueError) as err:
        print(f"sparrow chat: {err}", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {agent.label} ({agent.stage}); one line per turn, Ctrl-D to end",
              file=sys.stderr)
    # Bytes that are not UTF-8 become U+FFFD (via surrogateescape and clean_text), never a crash.
    raw_stdin = getattr(sys.stdin, "buffer", None)  # None: a text stream (e.g. a test's)
    lines = sys.stdin if raw_stdin is None else (
        raw.decode("utf-8", "surrogateescape") for raw in raw_stdin)
    chat_loop(agent, env, lines, sys.stdout, scorer=scorer, n_best=args.n_best, verbose=args.verbose,
              seed=args.seed, interactive=interactive)
    return 0
