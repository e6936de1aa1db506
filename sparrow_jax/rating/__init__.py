"""The rating web app (`sparrow rate`): targeted human judgements that feed the reward models.

Modules, one concern each: `store` (SQLite schema, migrations, writes), `auth` (rater tokens, CSRF),
`limits` (form parsing and length limits), `candidates` (live sampling from the agent), `queue` (which
item or rule a rater gets next), `export` (JSONL for pref_rm / rule_rm, agreement, per-rule counts),
`pages` (HTML templates), `app` (the Flask routes).
"""
