"""`sparrow rate`: the rating web app that collects targeted human judgements for the reward models.

    sparrow rate add-rater --db ratings.sqlite --name alice [--admin]    # prints alice's token once
    sparrow rate serve --workdir runs/rl --db ratings.sqlite [--host 127.0.0.1] [--port 8080]
        [--step N] [--num-candidates K] [--double-share 0.2] [--eval-report runs/eval/report.json]
    sparrow rate export --db ratings.sqlite --out DATA_DIR [--test-share 0.1]

serve loads the agent as `sparrow chat` does and samples comparison candidates live (half with evidence).
`--scripted` serves scripted candidates without a model (load tests, UI work). Exit codes: 0 ok, 2 bad
input (unknown workdir, rater name taken, bad option).
"""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="rate_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="serve the rating app")
    serve.add_argument("--workdir", default=None, help="the policy's workdir (lm, sft or rl stage)")
    serve.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    serve.add_argument("--db", required=True, help="SQLite database (created and migrated on start)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--threads", type=int, default=8, help="server worker threads")
    serve.add_argument("--num-candidates", type=int, default=None,
                       help="candidates per comparison (default: the config's data.num_candidates)")
    serve.add_argument("--double-share", type=float, default=0.2,
                       help="share of comparison items rated by two raters (agreement)")
    serve.add_argument("--eval-report", default=None,
                       help="a `sparrow eval` report.json: probes cycle over the rules broken most")
    serve.add_argument("--focus-top", type=int, default=5, help="how many of those rules")
    serve.add_argument("--scripted", action="store_true", help="no model: scripted candidates")
    serve.add_argument("--secure-cookies", action="store_true",
                       help="send the session cookie over https only (behind a TLS proxy)")
    add = sub.add_parser("add-rater", help="create a rater and print their sign-in token")
    add.add_argument("--db", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--admin", action="store_true", help="may see the admin pages and export")
    out = sub.add_parser("export", help="write the judgements as pref_rm / rule_rm JSONL")
    out.add_argument("--db", required=True)
    out.add_argument("--out", required=True, help="directory for the JSONL files and stats.json")
    out.add_argument("--test-share", type=float, default=0.1)


def build_app(args, overrides=()):
    """The WSGI app `serve` runs for these flags (loads the agent unless --scripted)."""
    from sparrow_jax.dialogue.rules import load_rules
    from sparrow_jax.rating import queue
    from sparrow_jax.rating.app import create_app
    from sparrow_jax.rating.candidates import AgentSource, ScriptedSource
    if args.scripted:
        source, rules, k = ScriptedSource(), load_rules(None), args.num_candidates or 4
    else:
        if not args.workdir:
            raise ValueError("--workdir is required (or --scripted)")
        from sparrow_jax.evaluation.agent import load_agent
        agent = load_agent(args.workdir, step=args.step, overrides=overrides)
        source, rules = AgentSource(agent), load_rules(agent.cfg.data.rules or None)
        k = args.num_candidates or int(agent.cfg.data.num_candidates)
    focus = queue.focus_rules([r.id for r in rules], queue.violation_rates(args.eval_report),
                              top=args.focus_top)
    app = create_app(args.db, source, rules, num_candidates=k, double_share=args.double_share, focus=focus,
                     secure_cookies=args.secure_cookies)
    return app, source, focus


def _serve(args, overrides) -> int:
    if not args.scripted:
        from sparrow_jax.commands.evaluate import _quiet_logs
        _quiet_logs()
    app, source, focus = build_app(args, overrides)
    import waitress
    print(f"sparrow rate: serving {source.checkpoint} on http://{args.host}:{args.port}/ "
          f"(probe rules: {', '.join(focus)})", file=sys.stderr, flush=True)
    waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="sparrow-rate")
    return 0


def run(args, overrides) -> int:
    from sparrow_jax.evaluation.checkpoint_params import WorkdirError
    from sparrow_jax.rating.store import StoreError, open_store
    try:
        if args.rate_command == "serve":
            return _serve(args, overrides)
        store = open_store(args.db)
        try:
            if args.rate_command == "add-rater":
                from sparrow_jax.rating.auth import add_rater
                token = add_rater(store, args.name, admin=args.admin)
                print(f"rater {args.name!r}{' (admin)' if args.admin else ''} added; token (shown once):",
                      file=sys.stderr)
                print(token)
                return 0
            from sparrow_jax.rating.export import export
            stats = export(store, args.out, test_share=args.test_share)
            print(json.dumps(stats["written"]))
            return 0
        finally:
            store.close()
    except (WorkdirError, StoreError, FileNotFoundError, ValueError) as err:
        print(f"sparrow rate {args.rate_command}: {err}", file=sys.stderr)
        return 2
