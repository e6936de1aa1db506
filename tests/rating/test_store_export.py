"""Storage, queue and export of the rating app, without HTTP."""
import json
import sqlite3

import pytest

from sparrow_jax.data.schemas import read_all
from sparrow_jax.rating import auth, export, queue
from sparrow_jax.rating.candidates import ScriptedSource
from sparrow_jax.rating.store import SCHEMA_VERSION, StoreError, migrate, open_store


@pytest.fixture
def store(tmp_path):
    st = open_store(str(tmp_path / "r.sqlite"))
    yield st
    st.close()


def _rater(store, name):
    return store.rater_by_hash(auth.hash_token(auth.add_rater(store, name)))["id"]


def test_migration_on_open_is_wal_versioned_and_idempotent(tmp_path):
    path = str(tmp_path / "r.sqlite")
    st = open_store(path)
    assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(st.conn) == SCHEMA_VERSION  # already current: nothing to do
    st.conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this code"):
        migrate(st.conn)
    st.close()


def test_tokens_are_stored_hashed(store):
    token = auth.add_rater(store, "alice")
    row = store.rater_by_hash(auth.hash_token(token))
    assert row["name"] == "alice" and token not in json.dumps([dict(r) for r in store.raters()])
    assert token not in row["token_hash"]
    with pytest.raises(StoreError, match="already exists"):
        auth.add_rater(store, "alice")


def test_judgement_keeps_provenance_and_resubmitting_changes_it(store):
    alice = _rater(store, "alice")
    item = queue.next_item(store, ScriptedSource(), alice, num_candidates=4, double_share=0.0)
    first = store.save_comparison(item["id"], alice, 1, [True, False, None, None])
    again = store.save_comparison(item["id"], alice, 2, [False, False, None, None])
    assert first == again
    [row] = store.comparisons(alice)
    assert row["chosen"] == 2 and row["checkpoint"] == "scripted@0" and row["step"] == 0
    assert row["sampling"]["evidence_modes"] == ["always", "always", "never", "never"]
    assert row["task"] == "comparison" and row["updated_at"] >= row["created_at"] > 0
    with pytest.raises(StoreError):
        store.save_comparison(item["id"], alice, 4, [None] * 4)


def test_queue_gives_doubly_rated_items_to_a_second_rater(store):
    alice, bob = _rater(store, "alice"), _rater(store, "bob")
    source = ScriptedSource()
    item = queue.next_item(store, source, alice, num_candidates=2, double_share=1.0)
    assert item["target_ratings"] == 2
    assert queue.next_item(store, source, alice, num_candidates=2, double_share=1.0)["id"] == item["id"]
    store.save_comparison(item["id"], alice, 0, [True, None])
    assert queue.next_item(store, source, bob, num_candidates=2, double_share=1.0)["id"] == item["id"]
    store.save_comparison(item["id"], bob, 0, [False, None])
    assert queue.next_item(store, source, bob, num_candidates=2, double_share=1.0)["id"] != item["id"]
    shares = [queue.target_ratings(f"item{i}", 0.3) == 2 for i in range(2000)]
    assert 0.25 < sum(shares) / len(shares) < 0.35


def test_probe_rules_cycle_over_the_most_broken(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"metrics": {"per_rule": {
        "a": {"rate": 0.1, "violations": 1, "probes": 10}, "b": {"rate": 0.5, "violations": 5, "probes": 10},
        "c": {"rate": 0.0, "violations": 0, "probes": 10}}}}))
    focus = queue.focus_rules(["a", "b", "c", "d"], queue.violation_rates(str(report)), top=5)
    assert focus == ("b", "a")
    assert queue.focus_rules(["a", "b"], {}) == ("a", "b")
    assert queue.next_rule(focus, {}) == "b"
    assert queue.next_rule(focus, {"b": 1}) == "a"
    assert queue.next_rule(focus, {"b": 1, "a": 1}) == "b"


def _fill(store):
    """alice and bob judge one doubly rated item (disagreeing); alice probes twice."""
    alice, bob = _rater(store, "alice"), _rater(store, "bob")
    source = ScriptedSource()
    item = queue.next_item(store, source, alice, num_candidates=4, double_share=1.0)
    store.save_comparison(item["id"], alice, 0, [True, True, None, None])
    store.save_comparison(item["id"], bob, 1, [True, False, None, None])
    other = queue.next_item(store, source, bob, num_candidates=4, double_share=0.0)
    store.save_comparison(other["id"], bob, -1, [False, False, None, None])  # none acceptable
    for verdict in ("broken", "unsure"):
        probe = store.add_probe(alice, "no_threats", "scripted@0", 0, {"t": 1})
        store.extend_probe(probe, alice, [{"role": "user", "text": "hi"}, {"role": "agent", "text": "yo"}])
        store.rate_probe(probe, alice, {1: verdict}, {1: ["no_insults"]})
    return alice, bob


def test_export_writes_training_schemas_stats_and_split_by_item(store, tmp_path):
    _fill(store)
    stats = export.export(store, str(tmp_path / "out"), test_share=0.5)
    prefs = [r for s in ("train", "test") if (tmp_path / f"out/preferences.{s}.jsonl").exists()
             for r in read_all(tmp_path / f"out/preferences.{s}.jsonl")]
    assert len(prefs) == 2 and {p.chosen for p in prefs} == {0, 1}
    assert all(p.supported[2:] == (None, None) for p in prefs)
    assert prefs[0].extra["rating"]["checkpoint"] == "scripted@0"
    splits = {s: {json.loads(line)["id"].split(".")[0] for line in open(p)}
              for s in ("train", "test") if (p := tmp_path / f"out/preferences.{s}.jsonl").exists()}
    assert len(splits) == 1  # both ratings of the one item in one split
    rules = [r for s in ("train", "test") if (tmp_path / f"out/rule_ratings.{s}.jsonl").exists()
             for r in read_all(tmp_path / f"out/rule_ratings.{s}.jsonl")]
    # broken verdict -> 1 record; unsure -> none; each turn's flag -> a broken no_insults record
    assert sorted((r.rule_id, r.broken) for r in rules) == [
        ("no_insults", True), ("no_insults", True), ("no_threats", True)]
    assert stats["none_acceptable"] == 1 and stats["unsure"] == 1
    assert stats["agreement"]["chosen"] == {"items": 1, "pairs": 1, "agreement": 0.0}
    assert stats["agreement"]["supported"] == {"items": 2, "pairs": 2, "agreement": 0.5}
    assert stats["per_rule"]["no_threats"] == {"broken": 1, "not_broken": 0, "unsure": 1, "flagged": 0}
    assert stats["per_rule"]["no_insults"]["flagged"] == 2
    assert json.loads((tmp_path / "out/stats.json").read_text()) == stats


def test_splits_are_never_left_empty_when_they_can_be_filled():
    for n in range(2, 12):
        for share in (0.0001, 0.5, 0.9999):
            splits = export.assign_splits([f"k{i}" for i in range(n)], share)
            assert set(splits.values()) == {"train", "test"}
    assert export.assign_splits(["only"], 0.5)["only"] in ("train", "test")


def test_committed_writes_survive_another_connection(tmp_path):
    path = str(tmp_path / "r.sqlite")
    st = open_store(path)
    alice = _rater(st, "alice")
    item = queue.next_item(st, ScriptedSource(), alice, num_candidates=2, double_share=0.0)
    st.save_comparison(item["id"], alice, 0, [True, None])
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] == 1
    other.close()
    st.close()


def test_a_leased_item_is_not_handed_to_another_rater(store):
    alice, bob, carol = _rater(store, "alice"), _rater(store, "bob"), _rater(store, "carol")
    source = ScriptedSource()
    single = queue.next_item(store, source, alice, num_candidates=2, double_share=0.0)
    assert queue.next_item(store, source, bob, num_candidates=2, double_share=0.0)["id"] != single["id"]
    double = queue.next_item(store, source, carol, num_candidates=2, double_share=1.0)
    others = [_rater(store, name) for name in ("dave", "erin")]
    taken = [queue.next_item(store, source, r, num_candidates=2, double_share=1.0)["id"] for r in others]
    assert taken.count(double["id"]) == 1  # carol's lease + one more rater make its two
    assert store.assigned(single["id"], alice) and not store.assigned(single["id"], bob)


def test_a_version_1_database_is_migrated_with_its_data(tmp_path):
    from sparrow_jax.rating.store import MIGRATIONS, Store, _connect
    path = str(tmp_path / "r.sqlite")
    conn = _connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    old = Store(conn)
    token = auth.add_rater(old, "alice")
    conn.close()
    store = open_store(path)
    assert store.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert store.rater_by_hash(auth.hash_token(token))["name"] == "alice"
    assert store.assigned("nothing", 1) is False and store.take_review(1, lambda _: True) is None
    store.close()
