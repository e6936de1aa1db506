"""The rating app's routes (Flask): sign-in, the comparison and probe tasks, a rater's own judgements,
admin pages.

    app = create_app("ratings.sqlite", source, rules)   # source: candidates.AgentSource / ScriptedSource

A probe's message can also be sent with "compare": the chat so far becomes a comparison item, and the
candidate the rater picks continues the chat.

Access: every page but sign-in needs a signed-in rater; /admin* needs an admin rater (403 otherwise).
A rater reaches only their own probes and judgements: anything else is 404, the same answer as for an id
that does not exist. Every POST needs the session's CSRF token (403 without it). A submission is answered
with a 303 redirect only after its transaction committed; a bad form gets 400 with the reason.
"""
from __future__ import annotations

import datetime
import functools
import os
import secrets
import tempfile
from typing import Sequence

import flask
import jinja2

from sparrow_jax.dialogue.turns import DEFAULT_DISPLAY_NAMES
from sparrow_jax.rating import auth, export, limits, pages, queue
from sparrow_jax.rating.store import Store, StoreError, open_store

NAMES = {role.value: name for role, name in DEFAULT_DISPLAY_NAMES.items()}
VERDICTS = (("broken", "broken"), ("not_broken", "not broken"), ("unsure", "unsure"))
EXPORT_FILES = tuple(f"{kind}.{split}.jsonl" for kind in ("preferences", "rule_ratings")
                     for split in export.SPLITS) + ("stats.json",)
_JINJA = jinja2.Environment(loader=jinja2.DictLoader(pages.TEMPLATES), autoescape=True,
                            undefined=jinja2.StrictUndefined)


def render(name: str, status: int = 200, **context):
    context.setdefault("message", None)
    context.setdefault("rater", getattr(flask.g, "rater", None))
    context.setdefault("csrf", flask.session.get("csrf", ""))
    html = _JINJA.get_template(name).render(names=NAMES, **context)
    return flask.Response(html, status=status, mimetype="text/html")


def create_app(db_path: str, source, rules: Sequence, *, num_candidates: int = 4,
               double_share: float = 0.2, focus: Sequence[str] | None = None,
               secure_cookies: bool = False) -> flask.Flask:
    """The WSGI app over the database at `db_path` (migrated here). rules: `dialogue.rules.Rule`s the
    probes can target; focus: the rule ids probes cycle over (default all, see queue.focus_rules);
    secure_cookies: the session cookie only over https (serving behind a TLS proxy)."""
    if num_candidates < 2:
        raise ValueError(f"a comparison needs at least 2 candidates, got {num_candidates}")
    setup = open_store(db_path)
    secret = setup.set_meta_once("secret_key", secrets.token_hex(32))
    setup.close()
    rules_by_id = {r.id: r for r in rules}
    focus = tuple(focus or rules_by_id)
    if not focus or any(r not in rules_by_id for r in focus):
        raise ValueError(f"focus rules must be known rule ids, got {focus}")

    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY=secret, MAX_CONTENT_LENGTH=limits.MAX_REQUEST_BYTES,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=secure_cookies)

    def store() -> Store:
        if "store" not in flask.g:
            flask.g.store = Store.connect(db_path)
        return flask.g.store

    @app.teardown_appcontext
    def _close(_exc):
        st = flask.g.pop("store", None)
        if st is not None:
            st.close()

    @app.before_request
    def _session():
        flask.session.setdefault("csrf", auth.new_csrf())
        rater_id = flask.session.get("rater")
        row = store().rater(rater_id) if rater_id is not None else None
        flask.g.rater = dict(row) if row else None
        if flask.request.method == "POST" and not auth.csrf_ok(flask.session.get("csrf"),
                                                               flask.request.form.get("csrf_token")):
            return flask.Response("CSRF token missing or wrong", status=403, mimetype="text/plain")
        return None

    @app.errorhandler(limits.FormError)
    def _bad_form(err):
        return flask.Response(str(err), status=400, mimetype="text/plain")

    @app.errorhandler(StoreError)
    def _refused(err):
        status = 404 if str(err).startswith("no ") else 409
        return flask.Response(str(err), status=status, mimetype="text/plain")

    def signed_in(admin: bool = False):
        def wrap(view):
            @functools.wraps(view)
            def inner(*args, **kwargs):
                if flask.g.rater is None:
                    return flask.redirect("/login", code=303)
                if admin and not flask.g.rater["is_admin"]:
                    return flask.Response("admin only", status=403, mimetype="text/plain")
                return view(*args, **kwargs)
            return inner
        return wrap

    def me() -> int:
        return int(flask.g.rater["id"])

    # ------------------------------------------------------------------ sign-in
    @app.get("/login")
    def login_page():
        return render("login", title="Sign in")

    @app.post("/login")
    def login():
        row = store().rater_by_hash(auth.hash_token(limits.parse_token(flask.request.form)))
        if row is None:
            return render("login", status=401, title="Sign in", message="Unknown token.")
        flask.session.clear()
        flask.session["rater"], flask.session["csrf"] = int(row["id"]), auth.new_csrf()
        return flask.redirect("/", code=303)

    @app.post("/logout")
    def logout():
        flask.session.clear()
        return flask.redirect("/login", code=303)

    @app.get("/")
    @signed_in()
    def home():
        return render("home", title="Sparrow rating", checkpoint=source.checkpoint)

    # ------------------------------------------------------------------ comparison
    @app.get("/compare")
    @signed_in()
    def compare_next():
        item = queue.next_item(store(), source, me(), num_candidates=num_candidates,
                               double_share=double_share)
        return render("compare", title="Compare replies", item=item, previous=None)

    @app.get("/compare/<item_id>")
    @signed_in()
    def compare_own(item_id):
        if not store().assigned(item_id, me()):
            raise StoreError(f"no item {item_id[:40]} of yours")
        previous = [j for j in store().comparisons(me()) if j["item_id"] == item_id]
        return render("compare", title="Compare replies", item=store().item(item_id),
                      previous=previous[0] if previous else None)

    @app.post("/compare")
    @signed_in()
    def compare_submit():
        st = store()
        item_id = flask.request.form.get("item_id", "")[:64]
        item = st.item(item_id)
        if item is None:
            raise StoreError(f"no comparison item {item_id!r}")
        if not st.assigned(item_id, me()):  # handed to this rater (their own judgements included)
            raise StoreError(f"item {item_id} was not given to you")
        chosen, supported, plausible = limits.parse_comparison(flask.request.form, item["has_evidence"])
        st.save_comparison(item_id, me(), chosen, supported, plausible)  # committed on return
        probe_id = item["sampling"].get("probe_id")
        if probe_id is not None and item["created_by"] == me():  # compared within the rater's own chat
            probe = st.probe(int(probe_id), me())
            if chosen >= 0 and not probe["finished"] and probe["dialogue"] == item["context"]:
                st.extend_probe(probe["id"], me(), item["candidates"][chosen])  # the chat goes on with it
            return flask.redirect(f"/probe/{probe['id']}", code=303)
        return flask.redirect("/compare", code=303)

    # ------------------------------------------------------------------ probe
    @app.get("/probe")
    @signed_in()
    def probe_next():
        st = store()
        probe = st.open_probe(me())
        if probe is None:
            rule = queue.next_rule(focus, st.rule_counts())
            probe_id = st.add_probe(me(), rule, source.checkpoint, source.step, dict(source.sampling))
        else:
            probe_id = probe["id"]
        return flask.redirect(f"/probe/{probe_id}", code=303)

    @app.get("/probe/<int:probe_id>")
    @signed_in()
    def probe_page(probe_id):
        probe = store().probe(probe_id, me())
        return render_probe(probe, f"/probe/{probe_id}/rate", reviewing=False)

    def render_probe(probe: dict, rate_action: str, reviewing: bool):
        dialogue = probe["dialogue"]
        agent_turns = [i for i, t in enumerate(dialogue) if t["role"] == "agent"]
        return render("probe", title="Review a probe" if reviewing else "Adversarial probe", probe=probe,
                      rule=rules_by_id[probe["rule_id"]], rules=list(rules_by_id.values()),
                      agent_turns=agent_turns, verdicts=VERDICTS, rate_action=rate_action,
                      reviewing=reviewing, max_chars=limits.MAX_MESSAGE_CHARS, n_candidates=num_candidates,
                      can_say=not reviewing and not probe["finished"] and len(dialogue) < limits.MAX_PROBE_TURNS)

    @app.post("/probe/<int:probe_id>/say")
    @signed_in()
    def probe_say(probe_id):
        st = store()
        probe = st.probe(probe_id, me())
        text = limits.parse_message(flask.request.form)
        if len(probe["dialogue"]) >= limits.MAX_PROBE_TURNS:
            raise limits.FormError(f"a probe holds at most {limits.MAX_PROBE_TURNS} turns")
        user_turn = {"role": "user", "text": text}  # rater text is only ever a User turn's text
        st.extend_probe(probe_id, me(), [user_turn])
        dialogue = probe["dialogue"] + [user_turn]
        if flask.request.form.get("compare"):  # the rater's own chat as a comparison's context
            item = queue.new_item(st, source, me(), dialogue, num_candidates=num_candidates,
                                  double_share=double_share, origin={"probe_id": probe_id})
            return flask.redirect(f"/compare/{item['id']}", code=303)
        seed = probe_id * 1000 + len(dialogue)
        st.extend_probe(probe_id, me(), source.reply(dialogue, seed))
        return flask.redirect(f"/probe/{probe_id}", code=303)

    @app.post("/probe/<int:probe_id>/rate")
    @signed_in()
    def probe_rate(probe_id):
        st = store()
        probe = st.probe(probe_id, me())
        verdicts, others = limits.parse_probe_rating(flask.request.form, flask.request.form.getlist,
                                                     probe["dialogue"], probe["rule_id"], list(rules_by_id))
        st.rate_probe(probe_id, me(), verdicts, others)  # committed on return
        return flask.redirect("/probe", code=303)

    # ------------------------------------------------------------------ second ratings of probes
    @app.get("/review")
    @signed_in()
    def review_next():
        probe = store().take_review(me(), lambda pid: queue.target_ratings(f"probe{pid}", double_share) == 2)
        if probe is None:
            return render("nothing", title="Review a probe", text="No probe to review now.")
        return render_probe(probe, f"/review/{probe['id']}", reviewing=True)

    @app.post("/review/<int:probe_id>")
    @signed_in()
    def review_submit(probe_id):
        st = store()
        probe = st.review(probe_id, me())
        verdicts, others = limits.parse_probe_rating(flask.request.form, flask.request.form.getlist,
                                                     probe["dialogue"], probe["rule_id"], list(rules_by_id))
        st.rate_probe(probe_id, me(), verdicts, others, review=True)  # committed on return
        return flask.redirect("/review", code=303)

    # ------------------------------------------------------------------ own judgements, admin
    @app.get("/judgements")
    @signed_in()
    def judgements():
        comparisons = [dict(j, updated=_when(j["updated_at"])) for j in store().comparisons(me())]
        reviews = sorted({r["probe_id"] for r in store().probe_ratings(me()) if r["task"] == "probe_review"})
        return render("judgements", title="My judgements", comparisons=comparisons,
                      probes=store().probes(me()), reviews=reviews)

    @app.get("/admin")
    @signed_in(admin=True)
    def admin():
        with tempfile.TemporaryDirectory() as tmp:
            stats = export.export(store(), tmp)
        return render("admin", title="Admin", raters=store().raters(), stats=stats, files=EXPORT_FILES)

    @app.get("/admin/export/<name>")
    @signed_in(admin=True)
    def admin_export(name):
        if name not in EXPORT_FILES:
            raise StoreError(f"no export file {name[:40]!r}")
        with tempfile.TemporaryDirectory() as tmp:
            export.export(store(), tmp)
            path = os.path.join(tmp, name)
            body = b""  # an empty split has no file: served empty
            if os.path.exists(path):
                with open(path, "rb") as f:
                    body = f.read()
        return flask.Response(body, mimetype="application/json" if name.endswith(".json") else "text/plain")

    return app


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
