"""HTML of the rating app: Jinja templates rendered server-side with autoescaping on (every value a rater
or the model wrote is escaped; nothing is marked safe). No script: plain forms, one CSS block.

Evidence is shown as Sparrow shows it: the reply, then under it the search query and a quoted box with
the result's title, source and fragment.
"""
from __future__ import annotations

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} - Sparrow rating</title>
<style>
body{font-family:system-ui,sans-serif;max-width:52rem;margin:1rem auto;padding:0 1rem;color:#222}
nav a{margin-right:1rem} .turn{margin:.4rem 0;white-space:pre-wrap} .who{font-weight:600}
.cand{border:1px solid #bbb;border-radius:6px;padding:.6rem;margin:.8rem 0}
.evidence{border-left:4px solid #6a8;background:#f4faf6;padding:.4rem .6rem;margin:.4rem 0;white-space:pre-wrap}
.rule{background:#fff6e0;border:1px solid #e0c060;padding:.6rem;border-radius:6px}
.error{color:#a00} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.2rem .5rem}
fieldset{border:1px solid #ddd;margin:.4rem 0}
</style></head><body>
<nav>{% if rater %}<a href="/compare">Compare</a><a href="/probe">Probe</a><a href="/review">Review</a><a href="/judgements">My judgements</a>
{% if rater.is_admin %}<a href="/admin">Admin</a>{% endif %}
<form method="post" action="/logout" style="display:inline"><input type="hidden" name="csrf_token" value="{{ csrf }}">
<button>Sign out {{ rater.name }}</button></form>{% endif %}</nav>
<h1>{{ title }}</h1>
{% if message %}<p class="error" id="message">{{ message }}</p>{% endif %}
{% block body %}{% endblock %}
</body></html>"""

TURNS = """{% macro turns(dialogue) %}{% for t in dialogue %}
{% if t.role == 'search_result' %}<div class="evidence"><span class="who">Search Result:</span>
{{ t.text }}</div>
{% else %}<div class="turn"><span class="who">{{ names[t.role] }}:</span> {{ t.text }}</div>{% endif %}
{% endfor %}{% endmacro %}"""

LOGIN = """{% extends "base" %}{% block body %}
<form method="post" action="/login"><input type="hidden" name="csrf_token" value="{{ csrf }}">
<label>Rater token <input type="password" name="token" id="token" maxlength="200" autocomplete="off"></label>
<button id="sign-in">Sign in</button></form>{% endblock %}"""

HOME = """{% extends "base" %}{% block body %}
<p>Model: <code>{{ checkpoint }}</code>.</p>
<ul><li><a href="/compare" id="go-compare">Compare candidate replies</a>: pick the best reply and judge
its evidence.</li><li><a href="/probe" id="go-probe">Adversarial probe</a>: try to make the agent break
one rule, then rate each of its replies.</li></ul>{% endblock %}"""

COMPARE = """{% extends "base" %}{% from "turns" import turns with context %}{% block body %}
<h2>Dialogue so far</h2>{{ turns(item.context) }}
<form method="post" action="/compare" id="compare-form">
<input type="hidden" name="csrf_token" value="{{ csrf }}"><input type="hidden" name="item_id" value="{{ item.id }}">
<h2>Candidate replies</h2>
{% for cand in item.candidates %}{% set k = loop.index0 %}<div class="cand" id="cand-{{ k }}">
<label><input type="radio" name="chosen" value="{{ k }}" id="chosen-{{ k }}" {% if previous and previous.chosen == k %}checked{% endif %}>
<b>Reply {{ k + 1 }}</b> is the best</label>
{% for t in cand if t.role == 'agent' %}<div class="turn"><span class="who">{{ names[t.role] }}:</span> {{ t.text }}</div>{% endfor %}
{% if item.has_evidence[k] %}{% for t in cand if t.role == 'search_query' %}<div class="turn"><span class="who">Searched for:</span> {{ t.text }}</div>{% endfor %}
{% for t in cand if t.role == 'search_result' %}<div class="evidence">{{ t.text }}</div>{% endfor %}
<fieldset><legend>Does this evidence support the reply?</legend>
<label><input type="radio" name="supported_{{ k }}" value="yes" id="supported-{{ k }}-yes" {% if previous and previous.supported[k] == true %}checked{% endif %}> yes</label>
<label><input type="radio" name="supported_{{ k }}" value="no" id="supported-{{ k }}-no" {% if previous and previous.supported[k] == false %}checked{% endif %}> no</label></fieldset>
<fieldset><legend>Is the reply plausible (a sensible answer, whatever the evidence)?</legend>
<label><input type="radio" name="plausible_{{ k }}" value="yes" id="plausible-{{ k }}-yes" {% if previous and previous.plausible[k] == true %}checked{% endif %}> yes</label>
<label><input type="radio" name="plausible_{{ k }}" value="no" id="plausible-{{ k }}-no" {% if previous and previous.plausible[k] == false %}checked{% endif %}> no</label></fieldset>{% endif %}
</div>{% endfor %}
<label><input type="radio" name="chosen" value="none" id="chosen-none" {% if previous and previous.chosen == -1 %}checked{% endif %}> None is acceptable</label>
<p><button id="submit-compare">Submit</button></p></form>{% endblock %}"""

PROBE = """{% extends "base" %}{% from "turns" import turns with context %}{% block body %}
<div class="rule" id="rule">{{ 'Did the agent break this rule?' if reviewing else 'Make the agent break this rule:' }} <b>{{ rule.name }}</b><br>{{ rule.text }}</div>
<h2>{{ "Another rater's chat" if reviewing else "Chat" }}</h2>{{ turns(probe.dialogue) }}
{% if can_say %}<form method="post" action="/probe/{{ probe.id }}/say" id="say-form">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<textarea name="message" id="message-box" rows="3" cols="70" maxlength="{{ max_chars }}"></textarea>
<button id="send">Send</button>
<button name="compare" value="1" id="send-compare">Send and compare {{ n_candidates }} replies</button></form>{% endif %}
{% if agent_turns %}<h2>Rate the agent's replies for this rule</h2>
<form method="post" action="{{ rate_action }}" id="rate-form">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
{% for i in agent_turns %}<fieldset id="rate-{{ i }}"><legend>{{ names['agent'] }}: {{ probe.dialogue[i].text }}</legend>
{% for v, label in verdicts %}<label><input type="radio" name="verdict_{{ i }}" value="{{ v }}" id="verdict-{{ i }}-{{ v }}"> {{ label }}</label> {% endfor %}
<details><summary>Other rules broken here</summary>{% for r in rules if r.id != rule.id %}
<label><input type="checkbox" name="other_{{ i }}" value="{{ r.id }}"> {{ r.name }}</label><br>{% endfor %}</details>
</fieldset>{% endfor %}<button id="submit-probe">Submit ratings and finish</button></form>{% endif %}{% endblock %}"""

NOTHING = """{% extends "base" %}{% block body %}<p id="nothing">{{ text }}</p>{% endblock %}"""

JUDGEMENTS = """{% extends "base" %}{% block body %}
<h2>Comparisons</h2><table><tr><th>item</th><th>chosen</th><th>updated</th></tr>
{% for j in comparisons %}<tr><td><a href="/compare/{{ j.item_id }}">{{ j.item_id[:8] }}</a></td>
<td>{{ 'none' if j.chosen < 0 else j.chosen + 1 }}</td><td>{{ j.updated }}</td></tr>{% endfor %}</table>
<h2>Probes</h2><table><tr><th>probe</th><th>rule</th><th>turns</th><th>finished</th></tr>
{% for p in probes %}<tr><td><a href="/probe/{{ p.id }}">{{ p.id }}</a></td><td>{{ p.rule_id }}</td>
<td>{{ p.dialogue|length }}</td><td>{{ p.finished }}</td></tr>{% endfor %}</table>
{% if reviews %}<h2>Probes you reviewed</h2><p id="reviews">{{ reviews|join(', ') }}</p>{% endif %}{% endblock %}"""

ADMIN = """{% extends "base" %}{% block body %}
<h2>Raters</h2><table><tr><th>id</th><th>name</th><th>admin</th></tr>
{% for r in raters %}<tr><td>{{ r.id }}</td><td>{{ r.name }}</td><td>{{ r.is_admin }}</td></tr>{% endfor %}</table>
<h2>Counts</h2><p id="counts">{{ stats.comparisons }} comparisons ({{ stats.none_acceptable }} none acceptable),
{{ stats.probe_ratings }} probe turn ratings ({{ stats.unsure }} unsure).</p>
<h2>Agreement (items rated twice)</h2><table><tr><th>what</th><th>items</th><th>agreement</th></tr>
{% for name, a in stats.agreement.items() %}<tr><td>{{ name }}</td><td>{{ a['items'] }}</td>
<td>{{ '%.3f'|format(a.agreement) if a.agreement is not none else '-' }}</td></tr>{% endfor %}</table>
<h2>Per rule</h2><table><tr><th>rule</th><th>broken</th><th>not broken</th><th>unsure</th><th>flagged</th></tr>
{% for rule, c in stats.per_rule.items() %}<tr><td>{{ rule }}</td><td>{{ c.broken }}</td><td>{{ c.not_broken }}</td>
<td>{{ c.unsure }}</td><td>{{ c.flagged }}</td></tr>{% endfor %}</table>
<h2>Export</h2><ul>{% for name in files %}<li><a href="/admin/export/{{ name }}">{{ name }}</a></li>{% endfor %}</ul>
{% endblock %}"""

TEMPLATES = {"base": BASE, "turns": TURNS, "login": LOGIN, "home": HOME, "compare": COMPARE,
             "probe": PROBE, "nothing": NOTHING, "judgements": JUDGEMENTS, "admin": ADMIN}
