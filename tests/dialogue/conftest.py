"""A toy tokenizer trained once per test session on a small sample that includes the role display names."""
import pytest
from dialogue_samples import sample_texts

from sparrow_jax.dialogue.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tokenizer(sample_texts(), tmp_path_factory.mktemp("tok") / "toy.model", vocab_size=512)
