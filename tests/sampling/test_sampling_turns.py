"""Sampled ids -> Turns on the host, malformed turns flagged; a real tokenizer end to end."""
import jax
import numpy as np
import pytest

from sampling_helpers import tiny_model_cfg, tiny_params
from sparrow_jax.dialogue.render import parse, render
from sparrow_jax.dialogue.tokenizer import train_tokenizer
from sparrow_jax.dialogue.turns import Role, Turn
from sparrow_jax.sampling import sampler
from sparrow_jax.sampling.sampler import SamplingConfig, TokenIds
from sparrow_jax.sampling.turns import CONTROL_TOKEN, EMPTY, OVER_LENGTH, sampled_turns


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["User: what is the capital of the river country?\nSparrow: The capital is Lake Town."] * 50
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=300)


def test_decode_and_flags(tok):
    text = tok.encode("The capital is Lake Town.")
    eot, pad = tok.eot_id, tok.pad_id
    n = len(text) + 2
    rows = [
        text + [eot] + [pad] * (n - len(text) - 1),   # ok
        [eot] + [pad] * (n - 1),                       # empty
        tok.encode("  \n") + [eot] + [pad] * (n - len(tok.encode("  \n")) - 1),  # whitespace only
        (text * 2)[:n],                                 # no eot: over length
        text[:2] + [tok.role_id(Role.USER)] + [eot] + [pad] * (n - 4),  # forged role inside
    ]
    valid = np.array([[t != pad for t in row] for row in rows])
    got = sampled_turns(tok, Role.AGENT, np.asarray(rows), valid)
    assert got[0].ok and got[0].finished and got[0].turn == Turn(Role.AGENT, "The capital is Lake Town.")
    assert got[0].text_ids == tuple(text)
    assert [t.malformed for t in got[1:]] == [EMPTY, EMPTY, OVER_LENGTH, CONTROL_TOKEN]
    assert not got[3].finished and got[3].turn.text.startswith("The capital")
    # Without a valid mask: trailing pads of an unfinished row are not text; roles per row.
    per_row = sampled_turns(tok, [Role.AGENT, Role.SEARCH_QUERY], np.asarray(rows[:2]))
    assert per_row[0].ok and per_row[1].turn.role == Role.SEARCH_QUERY
    with pytest.raises(ValueError, match="roles"):
        sampled_turns(tok, [Role.AGENT], np.asarray(rows[:2]))


def test_sample_with_a_real_tokenizer_round_trips(tok):
    """render -> sample -> turns -> render/parse: the new turn is a well-formed part of the dialogue."""
    cfg = tiny_model_cfg(vocab_size=320)  # wider than the tokenizer: ids past it are banned
    params = tiny_params(cfg, seed=5)
    contexts = [(Turn(Role.USER, "what is the capital?"),), (Turn(Role.USER, "hi"),)]
    rendered = [render(c, tok, open_role=Role.AGENT).token_ids for c in contexts]
    width = max(len(r) for r in rendered)
    tokens = np.stack([np.pad(r, (width - len(r), 0), constant_values=tok.pad_id) for r in rendered])
    valid = np.stack([np.arange(width) >= width - len(r) for r in rendered])
    ids = TokenIds.from_tokenizer(tok)
    assert ids.eot_id not in ids.banned_ids and tok.bos_id in ids.banned_ids
    out = sampler.sample(params, cfg, tokens, valid, jax.random.PRNGKey(0),
                         SamplingConfig(max_new_tokens=8, temperature=1.5), ids)
    assert np.asarray(out.tokens_BxN).max() < tok.vocab_size
    turns = sampled_turns(tok, Role.AGENT, out.tokens_BxN, out.token_valid_BxN)
    for context, prompt, new, row_tokens, row_valid in zip(contexts, tokens, turns,
                                                           np.asarray(out.tokens_BxN),
                                                           np.asarray(out.token_valid_BxN)):
        full = np.concatenate([prompt[prompt != tok.pad_id], row_tokens[row_valid]])
        parsed = parse(full, tok, allow_open=True)
        assert parsed[:-1] == context and parsed[-1] == new.turn
        assert new.finished == (new.malformed != OVER_LENGTH)
