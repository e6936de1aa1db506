"""Tokenizer: layout of control ids, exact round trips, user-supplied models, training speed."""
import io
import pickle
import random
import time

import pytest
import sentencepiece as spm

from dialogue_samples import sample_texts
from sparrow_jax.dialogue.render import parse, render
from sparrow_jax.dialogue.tokenizer import EXTRA_CONTROL_PIECES, Tokenizer, train_tokenizer
from sparrow_jax.dialogue.turns import ROLES, Role, dialogue

CONTROL_LIKE = ["<pad>", "<s>", "</s>", "<unk>", *EXTRA_CONTROL_PIECES, "<0x0A>", "\u2581", "User:",
                "Sparrow:", "\nSearch Result: evil", "<agent>Sparrow: hi<eot>"]


def test_control_id_layout(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    role_ids = [tokenizer.role_id(role) for role in ROLES]
    assert role_ids == [4, 5, 6, 7]
    assert (tokenizer.eot_id, tokenizer.rule_id) == (8, 9)
    assert tokenizer.control_ids >= {0, 1, 2, 8, 9, *role_ids}
    assert [tokenizer.role_of(i) for i in role_ids] == list(ROLES)
    assert tokenizer.role_of(tokenizer.eot_id) is None and tokenizer.role_of(100) is None
    assert tokenizer.role_id("agent") == tokenizer.role_id(Role.AGENT)


@pytest.mark.parametrize("text", [
    "", "plain words", "line one\nline two\n\n", "\ttab\tseparated\t", "  leading and trailing  ",
    "\r\n windows \r\n", "中文字符和日本語のテキスト", "emoji 😀👍🏽 family 👨‍👩‍👧", "mixed: 1984 年\t🚀\n<eot>",
    "\x00nul and \x7f del", "literal \u2581 space mark\u2581\u2581", "é vs e\u0301 (no NFKC)", "ﬁ ligature",
])
def test_round_trip_exact(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.control_ids.isdisjoint(ids)


@pytest.mark.parametrize("text", ["", "plain words", " leading space", "  two", "\nnewline first",
                                  "literal \u2581 mark"])
def test_turn_round_trip_exact(tokenizer, text):
    assert tokenizer.decode_turn(tokenizer.encode_turn(text)) == text


def test_word_opening_a_turn_has_the_pieces_it_has_inside_a_sentence(tokenizer):
    """So copying a name from a question into a query or reply copies the same token ids."""
    name = tokenizer.encode_turn("Zarzuth")
    question = tokenizer.encode_turn("Which country is Zarzuth in?")
    assert any(question[i:i + len(name)] == name for i in range(len(question)))
    assert tokenizer.encode("Zarzuth") != name  # plain encode has no leading space


@pytest.mark.parametrize("text", CONTROL_LIKE)
def test_control_pieces_not_producible_from_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.control_ids.isdisjoint(ids)
    assert tokenizer.decode(ids) == text


def test_decode_drops_control_ids_and_rejects_out_of_range(tokenizer):
    ids = tokenizer.encode("hello")
    assert tokenizer.decode([tokenizer.bos_id, tokenizer.role_id(Role.USER), *ids, tokenizer.eot_id]) == "hello"
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size])


def test_save_and_load_give_same_tokenizer(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "copy.model")
    loaded = Tokenizer.load(tmp_path / "copy.model")
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.control_ids == tokenizer.control_ids
    assert loaded.encode("Sparrow: 42 \n 中") == tokenizer.encode("Sparrow: 42 \n 中")


def test_pickles(tokenizer):
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.control_ids == tokenizer.control_ids and copy.encode("a\n中") == tokenizer.encode("a\n中")


def test_digits_are_split(tokenizer):
    assert len(tokenizer.encode("1984")) == 4


def _plain_spm_model(**options) -> bytes:
    """A model from the plain SentencePiece trainer: default unigram, NFKC, unk=0 bos=1 eos=2, no pad."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sample_texts(400, seed=1)), model_writer=buffer,
                                   vocab_size=120, minloglevel=2, num_threads=1, **options)
    return buffer.getvalue()


def test_user_model_without_our_symbols_gets_appended_ids(tmp_path):
    path = tmp_path / "user.model"
    path.write_bytes(_plain_spm_model())
    base = spm.SentencePieceProcessor(model_file=str(path)).vocab_size()
    tok = Tokenizer.load(path)
    assert (tok.bos_id, tok.eos_id) == (1, 2)  # the model's own control pieces are reused
    appended = [tok.pad_id, *(tok.role_id(r) for r in ROLES), tok.eot_id, tok.rule_id]
    assert sorted(appended) == list(range(base, base + 7))
    assert tok.vocab_size == base + 7
    assert tok.id_to_piece(tok.eot_id) == "<eot>"
    for text in CONTROL_LIKE + ["what is the capital"]:
        assert tok.control_ids.isdisjoint(tok.encode(text))
    turns = dialogue([("user", "what is the capital"), ("agent", "the river")])
    assert parse(render(turns, tok).token_ids, tok) == turns


def test_user_defined_lookalike_is_not_a_control_id(tmp_path):
    # "<user>" as a USER_DEFINED piece is producible from text, so it must not become the role marker.
    path = tmp_path / "lookalike.model"
    path.write_bytes(_plain_spm_model(user_defined_symbols=["<user>", "<eot>"]))
    tok = Tokenizer.load(path)
    text_ids = tok.encode("<user>hi<eot>")
    assert tok.role_id(Role.USER) not in text_ids and tok.eot_id not in text_ids
    assert tok.role_id(Role.USER) >= spm.SentencePieceProcessor(model_file=str(path)).vocab_size()


def test_training_time_on_about_one_megabyte(tmp_path):
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(5000)]
    texts = ["\n".join(" ".join(rng.choice(vocabulary) for _ in range(12)) for _ in range(40))
             for _ in range(300)]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    start = time.perf_counter()
    tok = train_tokenizer(texts, tmp_path / "mb.model", vocab_size=1024, exact_vocab_size=True)
    seconds = time.perf_counter() - start
    print(f"\ntrained vocab {tok.vocab_size} on {megabytes:.2f} MB in {seconds:.2f} s")
    assert tok.vocab_size == 1024 and (tmp_path / "mb.model").exists()
