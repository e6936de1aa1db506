"""Shared fixtures for tests/data: a tiny tokenizer and small hand-made record sets."""
import pytest

from data_helpers import WORDS, make_records
from sparrow_jax.dialogue.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def records():
    return make_records()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    texts = [" ".join(WORDS) + " Doc https://x.org/ 0123456789 ok"] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok.model", vocab_size=400)
