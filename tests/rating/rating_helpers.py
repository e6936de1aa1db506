"""Helpers of the rating-app tests: a signed-in test client over a scripted or real candidate source."""
import re

from sparrow_jax.dialogue.rules import load_rules
from sparrow_jax.rating import auth
from sparrow_jax.rating.app import create_app
from sparrow_jax.rating.candidates import ScriptedSource
from sparrow_jax.rating.store import open_store

RULES = load_rules(None)


def make_app(db, source=None, **kwargs):
    app = create_app(str(db), source or ScriptedSource(), RULES, **kwargs)
    app.config["TESTING"] = True
    return app


def add_rater(db, name, admin=False):
    store = open_store(str(db))
    try:
        return auth.add_rater(store, name, admin=admin)
    finally:
        store.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def sign_in(app, token):
    """A test client signed in with `token`; returns (client, csrf token of the session)."""
    client = app.test_client()
    csrf = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"token": token, "csrf_token": csrf})
    assert response.status_code == 303, response.get_data(as_text=True)
    page = client.get("/").get_data(as_text=True)
    return client, csrf_of(page)


def item_id_of(html: str) -> str:
    return re.search(r'name="item_id" value="([^"]+)"', html).group(1)


def answer_compare(client, csrf, html, chosen="0"):
    """Submit the comparison shown in `html`: `chosen`, supported and plausible "yes" for every
    evidence candidate."""
    data = {"csrf_token": csrf, "item_id": item_id_of(html), "chosen": chosen}
    for k in sorted(set(re.findall(r'name="supported_(\d+)"', html))):
        data[f"supported_{k}"] = data[f"plausible_{k}"] = "yes"
    return client.post("/compare", data=data)
