"""`sparrow rate` flags -> the app: the agent of a workdir, its rules and candidate count, the eval
report's focus rules; add-rater and export through the command."""
import json

import pytest

from rating_helpers import answer_compare, sign_in
from sparrow_jax.cli import build_parser, main


def _args(*argv):
    return build_parser().parse_args(["rate", *argv])


def test_serve_flags_build_the_app_over_the_workdirs_agent(sft_workdir, tmp_path):
    from sparrow_jax.commands.rate import build_app
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"metrics": {"per_rule": {
        "no_threats": {"rate": 0.4, "violations": 4, "probes": 10},
        "no_insults": {"rate": 0.2, "violations": 2, "probes": 10}}}}))
    db = tmp_path / "r.sqlite"
    app, source, focus = build_app(_args("serve", "--workdir", sft_workdir, "--db", str(db),
                                         "--eval-report", str(report), "--num-candidates", "2"))
    assert focus == ("no_threats", "no_insults")
    assert source.checkpoint.endswith("@1") and source.sampling["stage"] == "sft"
    with pytest.raises(SystemExit) as stop:
        main(["rate", "add-rater", "--db", str(db), "--name", "alice"])
    assert stop.value.code == 0
    from sparrow_jax.rating import auth
    from sparrow_jax.rating.store import open_store
    store = open_store(str(db))
    token = auth.add_rater(store, "bob")
    store.close()
    client, csrf = sign_in(app, token)
    html = client.get("/compare").get_data(as_text=True)
    assert html.count('class="cand"') == 2
    assert answer_compare(client, csrf, html).status_code == 303
    assert client.get("/probe/1").status_code == 404
    probe_page = client.get(client.get("/probe").headers["Location"]).get_data(as_text=True)
    assert "<b>No threats</b>" in probe_page  # the most broken rule of the report comes first
    with pytest.raises(SystemExit) as stop:
        main(["rate", "export", "--db", str(db), "--out", str(tmp_path / "out"), "--test-share", "0"])
    assert stop.value.code == 0
    assert len((tmp_path / "out/preferences.train.jsonl").read_text().splitlines()) == 1


def test_bad_flags_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["rate", "serve", "--db", str(tmp_path / "r.sqlite")])
    assert stop.value.code == 2 and "--workdir is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["rate", "serve", "--db", str(tmp_path / "r.sqlite"), "--scripted",
              "--eval-report", str(tmp_path / "missing.json")])
    assert stop.value.code == 2 and "no eval report" in capsys.readouterr().err
