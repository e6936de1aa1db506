"""SQLite storage of the rating app: raters, comparison items, probes and every judgement.

One file in WAL mode; `open_store(path)` migrates the schema to `SCHEMA_VERSION` on open (each migration
is a list of statements run in one transaction, recorded in `schema_version`). Every write commits before
it returns, so a caller that answers "success" after a write never loses what it acknowledged, also when
the process is killed right after. Each connection is used by one thread (`Store` per request thread:
`Store.connect` is cheap) and writers wait up to `BUSY_TIMEOUT_S` for the lock.

Judgement rows copy what they were made under: rater id, task, checkpoint label and step, sampling
settings (JSON), created/updated timestamps. A rater's judgement of an item is one row
(UNIQUE(item, rater)): resubmitting changes it, never duplicates it.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Sequence

BUSY_TIMEOUT_S = 30.0
LEASE_S = 30 * 60  # an item handed to a rater counts towards its target for this long

# Each entry: the statements that take the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE raters (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
               token_hash TEXT NOT NULL UNIQUE, is_admin INTEGER NOT NULL DEFAULT 0,
               created_at REAL NOT NULL)""",
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE items (id TEXT PRIMARY KEY, context_json TEXT NOT NULL,
               candidates_json TEXT NOT NULL, has_evidence_json TEXT NOT NULL,
               target_ratings INTEGER NOT NULL, checkpoint TEXT NOT NULL, step INTEGER NOT NULL,
               sampling_json TEXT NOT NULL, created_by INTEGER NOT NULL REFERENCES raters(id),
               created_at REAL NOT NULL)""",
        """CREATE TABLE comparisons (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL REFERENCES items(id),
               rater_id INTEGER NOT NULL REFERENCES raters(id), task TEXT NOT NULL DEFAULT 'comparison',
               chosen INTEGER NOT NULL, supported_json TEXT NOT NULL, checkpoint TEXT NOT NULL,
               step INTEGER NOT NULL, sampling_json TEXT NOT NULL, created_at REAL NOT NULL,
               updated_at REAL NOT NULL, UNIQUE(item_id, rater_id))""",
        """CREATE TABLE probes (id INTEGER PRIMARY KEY, rater_id INTEGER NOT NULL REFERENCES raters(id),
               rule_id TEXT NOT NULL, dialogue_json TEXT NOT NULL, finished INTEGER NOT NULL DEFAULT 0,
               checkpoint TEXT NOT NULL, step INTEGER NOT NULL, sampling_json TEXT NOT NULL,
               created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
        """CREATE TABLE probe_ratings (id INTEGER PRIMARY KEY, probe_id INTEGER NOT NULL REFERENCES probes(id),
               rater_id INTEGER NOT NULL REFERENCES raters(id), task TEXT NOT NULL DEFAULT 'probe',
               turn_index INTEGER NOT NULL, rule_id TEXT NOT NULL, verdict TEXT NOT NULL
               CHECK (verdict IN ('broken', 'not_broken', 'unsure')), other_rules_json TEXT NOT NULL,
               checkpoint TEXT NOT NULL, step INTEGER NOT NULL, sampling_json TEXT NOT NULL,
               created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE(probe_id, turn_index, rater_id))""",
        "CREATE INDEX comparisons_rater ON comparisons(rater_id)",
        "CREATE INDEX probes_rater ON probes(rater_id)",
    ],
    [   # 2: items handed out are leased, so concurrent raters are not all given the same open item
        """CREATE TABLE assignments (item_id TEXT NOT NULL REFERENCES items(id),
               rater_id INTEGER NOT NULL REFERENCES raters(id), assigned_at REAL NOT NULL,
               PRIMARY KEY (item_id, rater_id))""",
    ],
    [   # 3: finished probes handed to a second rater to rate again (agreement on rule ratings)
        """CREATE TABLE probe_reviews (probe_id INTEGER NOT NULL REFERENCES probes(id),
               rater_id INTEGER NOT NULL REFERENCES raters(id), assigned_at REAL NOT NULL,
               PRIMARY KEY (probe_id, rater_id))""",
    ],
    [   # 4: whether each evidence candidate is plausible (with supported: the pref RM's auxiliary target)
        "ALTER TABLE comparisons ADD COLUMN plausible_json TEXT NOT NULL DEFAULT '[]'",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
VERDICTS = ("broken", "not_broken", "unsure")


class StoreError(ValueError):
    """A request the store refuses (unknown item, not the rater's own, bad value)."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk before we answer
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before. WAL is set here."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(f"cannot put the database in WAL mode (got {mode!r}); is it on a network disk?")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = row[0] or 0
    if found > SCHEMA_VERSION:
        raise StoreError(f"the database has schema version {found}, newer than this code's "
                         f"{SCHEMA_VERSION}: update sparrow_jax")
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


class Store:
    """Typed reads and writes over one connection. Open with `open_store` (migrates) or `connect`."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    def connect(cls, path: str) -> "Store":
        return cls(_connect(path))

    def close(self) -> None:
        self.conn.close()

    def _write(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement in its own committed transaction (autocommit mode)."""
        return self.conn.execute(sql, args)

    # ------------------------------------------------------------------ meta and raters
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta_once(self, key: str, value: str) -> str:
        """Store `value` under `key` unless one is there; the stored value."""
        self._write("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        return self.meta(key)

    def add_rater(self, name: str, token_hash: str, is_admin: bool) -> int:
        try:
            cur = self._write("INSERT INTO raters (name, token_hash, is_admin, created_at) VALUES (?,?,?,?)",
                              (name, token_hash, int(is_admin), time.time()))
        except sqlite3.IntegrityError:
            raise StoreError(f"a rater named {name!r} already exists") from None
        return int(cur.lastrowid)

    def rater_by_hash(self, token_hash: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM raters WHERE token_hash = ?", (token_hash,)).fetchone()

    def rater(self, rater_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM raters WHERE id = ?", (rater_id,)).fetchone()

    def raters(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT id, name, is_admin, created_at FROM raters ORDER BY id").fetchall()

    # ------------------------------------------------------------------ comparison items
    def add_item(self, item_id: str, context: list, candidates: list, has_evidence: list,
                 target_ratings: int, checkpoint: str, step: int, sampling: dict, created_by: int) -> None:
        """Store a new item, leased to its creator, in one transaction."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?)",
                              (item_id, json.dumps(context), json.dumps(candidates), json.dumps(has_evidence),
                               target_ratings, checkpoint, step, json.dumps(sampling), created_by, now))
            self.conn.execute("INSERT INTO assignments VALUES (?,?,?)", (item_id, created_by, now))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def item(self, item_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def _open_items_sql(self) -> str:
        """Items short of their target (ratings + other raters' live leases) that ? has not rated."""
        return """SELECT i.* FROM items i WHERE
                 (SELECT COUNT(*) FROM comparisons c WHERE c.item_id = i.id)
                 + (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND a.rater_id != :rater
                    AND a.assigned_at > :since
                    AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.item_id = i.id
                                    AND c.rater_id = a.rater_id)) < i.target_ratings
                 AND NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.item_id = i.id AND c.rater_id = :rater)
               ORDER BY (i.created_by = :rater) DESC, i.created_at"""

    def open_items_for(self, rater_id: int, limit: int = 1) -> list[dict]:
        """Items still short of their target ratings that `rater_id` has not rated, their own first,
        then oldest first (another rater's live lease counts as a rating)."""
        rows = self.conn.execute(self._open_items_sql() + " LIMIT :limit",
                                 {"rater": rater_id, "since": time.time() - LEASE_S, "limit": limit}).fetchall()
        return [_item(r) for r in rows]

    def take_item(self, rater_id: int) -> dict | None:
        """Lease the first open item to `rater_id` (atomically: two raters never take the last slot)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute(self._open_items_sql() + " LIMIT 1",
                                    {"rater": rater_id, "since": time.time() - LEASE_S}).fetchone()
            if row is not None:
                self.conn.execute("INSERT OR REPLACE INTO assignments VALUES (?,?,?)",
                                  (row["id"], rater_id, time.time()))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return _item(row) if row is not None else None

    def assigned(self, item_id: str, rater_id: int) -> bool:
        """Whether `item_id` was ever handed to `rater_id` (they may then always submit it)."""
        return self.conn.execute("SELECT 1 FROM assignments WHERE item_id = ? AND rater_id = ?",
                                 (item_id, rater_id)).fetchone() is not None

    def items(self) -> list[dict]:
        return [_item(r) for r in self.conn.execute("SELECT * FROM items ORDER BY created_at, id")]

    # ------------------------------------------------------------------ comparison judgements
    def save_comparison(self, item_id: str, rater_id: int, chosen: int, supported: list,
                        plausible: list | None = None) -> int:
        """Insert or change `rater_id`'s judgement of `item_id` (committed on return); its row id.
        supported / plausible: one true/false/null per candidate (plausible None: not asked)."""
        item = self.item(item_id)
        if item is None:
            raise StoreError(f"no comparison item {item_id!r}")
        n = len(item["candidates"])
        if not -1 <= chosen < n:
            raise StoreError(f"chosen must be -1 (none acceptable) or 0..{n - 1}, got {chosen}")
        plausible = [None] * n if plausible is None else list(plausible)
        for name, values in (("supported", supported), ("plausible", plausible)):
            if len(values) != n or any(v not in (True, False, None) for v in values):
                raise StoreError(f"{name} needs {n} entries of true/false/null")
        now = time.time()
        self._write(
            """INSERT INTO comparisons (item_id, rater_id, chosen, supported_json, plausible_json, checkpoint,
                   step, sampling_json, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(item_id, rater_id) DO UPDATE SET chosen = excluded.chosen,
                   supported_json = excluded.supported_json, plausible_json = excluded.plausible_json,
                   updated_at = excluded.updated_at""",
            (item_id, rater_id, chosen, json.dumps(supported), json.dumps(plausible), item["checkpoint"],
             item["step"], json.dumps(item["sampling"]), now, now))
        row = self.conn.execute("SELECT id FROM comparisons WHERE item_id = ? AND rater_id = ?",
                                (item_id, rater_id)).fetchone()
        return int(row[0])

    def comparisons(self, rater_id: int | None = None) -> list[dict]:
        """Judgements, of one rater or (None) all; each with its item's fields under 'item'."""
        sql, args = "SELECT * FROM comparisons", ()
        if rater_id is not None:
            sql, args = sql + " WHERE rater_id = ?", (rater_id,)
        out = []
        for row in self.conn.execute(sql + " ORDER BY id", args).fetchall():
            d = dict(row)
            d["supported"] = json.loads(d.pop("supported_json"))
            plausible = json.loads(d.pop("plausible_json"))  # [] in rows written before schema v4
            d["plausible"] = plausible or [None] * len(d["supported"])
            d["sampling"] = json.loads(d.pop("sampling_json"))
            out.append(d)
        return out

    # ------------------------------------------------------------------ probes
    def add_probe(self, rater_id: int, rule_id: str, checkpoint: str, step: int, sampling: dict) -> int:
        now = time.time()
        cur = self._write("""INSERT INTO probes (rater_id, rule_id, dialogue_json, checkpoint, step,
                                 sampling_json, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)""",
                          (rater_id, rule_id, "[]", checkpoint, step, json.dumps(sampling), now, now))
        return int(cur.lastrowid)

    def probe(self, probe_id: int, rater_id: int) -> dict:
        """The probe if it is `rater_id`'s own; StoreError otherwise (same message: no existence leak)."""
        row = self.conn.execute("SELECT * FROM probes WHERE id = ? AND rater_id = ?",
                                (probe_id, rater_id)).fetchone()
        if row is None:
            raise StoreError(f"no probe {probe_id} of yours")
        return _probe(row)

    def open_probe(self, rater_id: int) -> dict | None:
        row = self.conn.execute("SELECT * FROM probes WHERE rater_id = ? AND finished = 0 "
                                "ORDER BY id DESC LIMIT 1", (rater_id,)).fetchone()
        return _probe(row) if row else None

    def probes(self, rater_id: int | None = None) -> list[dict]:
        sql, args = "SELECT * FROM probes", ()
        if rater_id is not None:
            sql, args = sql + " WHERE rater_id = ?", (rater_id,)
        return [_probe(r) for r in self.conn.execute(sql + " ORDER BY id", args).fetchall()]

    def extend_probe(self, probe_id: int, rater_id: int, turns: list) -> None:
        """Append turns (JSON dicts) to an unfinished probe of `rater_id`, atomically."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            probe = self.probe(probe_id, rater_id)
            if probe["finished"]:
                raise StoreError(f"probe {probe_id} is finished")
            self.conn.execute("UPDATE probes SET dialogue_json = ?, updated_at = ? WHERE id = ?",
                              (json.dumps(probe["dialogue"] + list(turns)), time.time(), probe_id))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def take_review(self, rater_id: int, wanted) -> dict | None:
        """Lease to `rater_id` the oldest finished probe of another rater that `wanted(probe_id)` says
        needs a second rating and that nobody reviews yet (a live lease counts); None if there is none.
        A review `rater_id` was handed and has not rated yet comes first (a reload shows the same one)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            pending = self.conn.execute(
                """SELECT p.* FROM probes p JOIN probe_reviews r ON r.probe_id = p.id WHERE r.rater_id = :rater
                     AND NOT EXISTS (SELECT 1 FROM probe_ratings q WHERE q.probe_id = p.id AND q.rater_id = :rater)
                   ORDER BY r.assigned_at LIMIT 1""", {"rater": rater_id}).fetchall()
            rows = pending or self.conn.execute(
                """SELECT p.* FROM probes p WHERE p.finished = 1 AND p.rater_id != :rater
                     AND NOT EXISTS (SELECT 1 FROM probe_reviews r WHERE r.probe_id = p.id
                                     AND (r.rater_id = :rater OR r.assigned_at > :since
                                          OR EXISTS (SELECT 1 FROM probe_ratings q WHERE q.probe_id = p.id
                                                     AND q.rater_id = r.rater_id)))
                   ORDER BY p.id""", {"rater": rater_id, "since": time.time() - LEASE_S}).fetchall()
            row = next((r for r in rows if wanted(int(r["id"]))), None)
            if row is not None:
                self.conn.execute("INSERT OR REPLACE INTO probe_reviews VALUES (?,?,?)",
                                  (row["id"], rater_id, time.time()))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return _probe(row) if row is not None else None

    def review(self, probe_id: int, rater_id: int) -> dict:
        """A probe handed to `rater_id` for review; StoreError (as for a stranger's probe) otherwise."""
        row = self.conn.execute("""SELECT p.* FROM probes p JOIN probe_reviews r ON r.probe_id = p.id
                                   WHERE p.id = ? AND r.rater_id = ? AND p.finished = 1""",
                                (probe_id, rater_id)).fetchone()
        if row is None:
            raise StoreError(f"no probe {probe_id} of yours")
        return _probe(row)

    def rate_probe(self, probe_id: int, rater_id: int, verdicts: dict[int, str],
                   other_rules: dict[int, list[str]], finish: bool = True, review: bool = False) -> None:
        """Store one verdict per agent turn index (and flagged other rules), in one transaction; `review`:
        as the second rater of a probe handed to `rater_id` (task "probe_review"; the probe stays as is)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            probe = self.review(probe_id, rater_id) if review else self.probe(probe_id, rater_id)
            finish = finish and not review
            agent_turns = {i for i, t in enumerate(probe["dialogue"]) if t["role"] == "agent"}
            now = time.time()
            for index, verdict in verdicts.items():
                if index not in agent_turns:
                    raise StoreError(f"turn {index} of probe {probe_id} is not an agent turn")
                if verdict not in VERDICTS:
                    raise StoreError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
                self.conn.execute(
                    """INSERT INTO probe_ratings (probe_id, rater_id, task, turn_index, rule_id, verdict,
                           other_rules_json, checkpoint, step, sampling_json, created_at, updated_at)
                       VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
                       ON CONFLICT(probe_id, turn_index, rater_id) DO UPDATE SET verdict = excluded.verdict,
                           other_rules_json = excluded.other_rules_json, updated_at = excluded.updated_at""",
                    (probe_id, rater_id, "probe_review" if review else "probe", index, probe["rule_id"],
                     verdict,
                     json.dumps(sorted(other_rules.get(index, []))), probe["checkpoint"], probe["step"],
                     json.dumps(probe["sampling"]), now, now))
            if finish:
                self.conn.execute("UPDATE probes SET finished = 1, updated_at = ? WHERE id = ?", (now, probe_id))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def probe_ratings(self, rater_id: int | None = None) -> list[dict]:
        sql, args = "SELECT * FROM probe_ratings", ()
        if rater_id is not None:
            sql, args = sql + " WHERE rater_id = ?", (rater_id,)
        out = []
        for row in self.conn.execute(sql + " ORDER BY id", args).fetchall():
            d = dict(row)
            d["other_rules"] = json.loads(d.pop("other_rules_json"))
            d["sampling"] = json.loads(d.pop("sampling_json"))
            out.append(d)
        return out

    def rule_counts(self) -> dict[str, int]:
        """Probes started per rule id (the queue cycles to the least probed of its rules)."""
        return {r[0]: r[1] for r in self.conn.execute("SELECT rule_id, COUNT(*) FROM probes GROUP BY rule_id")}


def _item(row: sqlite3.Row) -> dict:
    d = dict(row)
    for key in ("context", "candidates", "has_evidence", "sampling"):
        d[key] = json.loads(d.pop(f"{key}_json"))
    return d


def _probe(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["dialogue"] = json.loads(d.pop("dialogue_json"))
    d["sampling"] = json.loads(d.pop("sampling_json"))
    d["finished"] = bool(d["finished"])
    return d


def open_store(path: str) -> Store:
    """Open (creating if needed) and migrate the database at `path`."""
    store = Store.connect(path)
    migrate(store.conn)
    return store
