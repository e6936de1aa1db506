"""The whole loop at smoke size: a tiny sft checkpoint samples live candidates in the app, a rater judges
comparisons and probes over HTTP, the export holds exactly those judgements, and it trains pref_rm and
rule_rm."""
import os
import re
import shutil

import numpy as np

from rating_helpers import add_rater, answer_compare, item_id_of, make_app, sign_in
from sparrow_jax.data.schemas import read_all
from sparrow_jax.rating.export import export
from sparrow_jax.rating.store import open_store


def _read(out, kind):
    return [r for split in ("train", "test") if os.path.exists(p := os.path.join(out, f"{kind}.{split}.jsonl"))
            for r in read_all(p)]


def test_live_candidates_judged_exported_and_trained(sft_workdir, rating_tok, tmp_path):
    from eval_helpers import make_config
    from sparrow_jax.data import tfds_builders
    from sparrow_jax.evaluation.agent import load_agent
    from sparrow_jax.rating.candidates import AgentSource
    from sparrow_jax.train import loop

    agent = load_agent(sft_workdir)
    source = AgentSource(agent)
    db = tmp_path / "r.sqlite"
    app = make_app(db, source, num_candidates=2, double_share=0.0)
    client, csrf = sign_in(app, add_rater(db, "alice"))

    chosen = {}
    for i in range(3):
        html = client.get("/compare").get_data(as_text=True)
        assert 'class="evidence"' in html  # candidate 0 was sampled with evidence mode "always"
        assert answer_compare(client, csrf, html, chosen=str(i % 2)).status_code == 303
        chosen[item_id_of(html)] = i % 2
    verdicts = {}
    for verdict in ("broken", "not_broken"):
        probe = client.get("/probe").headers["Location"]
        assert client.post(probe + "/say", data={"csrf_token": csrf, "message": "Tell me a secret."}
                           ).status_code == 303
        page = client.get(probe).get_data(as_text=True)
        [turn] = set(re.findall(r'name="verdict_(\d+)"', page))  # the agent turn (after a search or not)
        response = client.post(probe + "/rate", data={"csrf_token": csrf, f"verdict_{turn}": verdict})
        assert response.status_code == 303, response.get_data(as_text=True)
        verdicts[int(probe.rsplit("/", 1)[1])] = verdict

    out = str(tmp_path / "export")
    store = open_store(str(db))
    items = {i["id"]: i for i in store.items()}
    probes = {p["id"]: p for p in store.probes()}
    export(store, out, test_share=0.5)
    store.close()

    prefs = _read(out, "preferences")
    assert {p.id.split(".")[0]: p.chosen for p in prefs} == chosen
    for p in prefs:
        item = items[p.id.split(".")[0]]
        assert [[t.to_json() for t in c] for c in p.candidates] == item["candidates"]
        assert p.has_evidence == (True, False) and p.supported == (True, None) and p.plausible == (True, None)
        assert p.extra["rating"]["checkpoint"] == agent.label and p.extra["rating"]["step"] == agent.step
    rules = _read(out, "rule_ratings")
    assert sorted((r.id.split(".")[0], r.rule_id, r.broken) for r in rules) == sorted(
        (f"probe{pid}", probes[pid]["rule_id"], v == "broken") for pid, v in verdicts.items())

    # train both reward models on the export (from the sft checkpoint, as the recipe does)
    shutil.copy(os.path.join(agent.data_dir, "corpus.jsonl"), out)
    rating_tok.save(os.path.join(out, "tokenizer.model"))
    tfds_builders.build_all(out, os.path.join(out, "tfds"))
    for stage in ("pref_rm", "rule_rm"):
        cfg = make_config(out, rating_tok, stage)
        cfg.data.num_candidates, cfg.data.rule_len = 2, 160
        cfg.train.steps, cfg.train.batch_size, cfg.train.eval_batches = 2, 2, 1
        cfg.train.warmup_steps, cfg.train.init_from = 1, sft_workdir
        summary = loop.train_stage(cfg, str(tmp_path / stage))
        assert summary["finished"] and summary["step"] == 2, summary
        assert summary["eval"]["eval_examples"] >= 1
        assert np.isfinite(summary["eval"].get("accuracy", 0.0))
