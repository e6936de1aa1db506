"""SentencePiece tokenizer with reserved control ids for roles, end of turn and rules.

Control ids (pad, bos, eos, one per `Role`, `eot`, `rule`) are SentencePiece CONTROL pieces: the encoder
never produces them from any text, so they can only enter a sequence when inserted by id. That is what makes
roles unforgeable by user or search-result text (docs/recipe.md section 2, security property).

Layout of a model trained by `train_tokenizer`:
    0 <pad>  1 <s> (bos)  2 </s> (eos)  3 <unk>  4 <user>  5 <agent>  6 <search_query>
    7 <search_result>  8 <eot>  9 <rule>  10..265 byte pieces <0x00>..<0xFF>  266.. merged pieces
A user-supplied model (e.g. a 32k one) keeps its own ids; control ids it lacks are appended after its
vocabulary, so `vocab_size` = its size + the number appended.
"""
from __future__ import annotations

import io
import os
from typing import Iterable, Iterator

import sentencepiece as spm

from sparrow_jax.data.jsonl import check_input_file, invalid_unicode
from sparrow_jax.dialogue.turns import Role

ROLE_PIECES = {
    Role.USER: "<user>",
    Role.AGENT: "<agent>",
    Role.SEARCH_QUERY: "<search_query>",
    Role.SEARCH_RESULT: "<search_result>",
}
PAD_PIECE, BOS_PIECE, EOS_PIECE, UNK_PIECE = "<pad>", "<s>", "</s>", "<unk>"
EOT_PIECE, RULE_PIECE = "<eot>", "<rule>"
# Our control pieces beyond pad/bos/eos, in id order.
EXTRA_CONTROL_PIECES = (*ROLE_PIECES.values(), EOT_PIECE, RULE_PIECE)

_SPACE_MARK = "\u2581"  # SentencePiece's whitespace symbol; the literal character needs escaping.
_CHUNK_CHARS = 4000  # training sentences are cut to this many characters (trainer drops longer ones)


class Tokenizer:
    """Wraps a SentencePiece model; immutable after construction.

    Attributes: `vocab_size` (int, includes appended control ids), `pad_id`, `bos_id`, `eos_id`, `eot_id`,
    `rule_id` (ints), `control_ids` (frozenset of every reserved id), `serialized_model` (bytes of the
    SentencePiece model, without the appended ids: those are re-derived on load).
    """

    def __init__(self, model_proto: bytes):
        self.serialized_model = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.serialized_model)
        self._base_size = self._sp.vocab_size()
        self._appended: dict[int, str] = {}  # id >= base size -> our piece name
        self._taken: set[int] = set()
        self.pad_id = self._reserve(PAD_PIECE, self._sp.pad_id())
        self.bos_id = self._reserve(BOS_PIECE, self._sp.bos_id())
        self.eos_id = self._reserve(EOS_PIECE, self._sp.eos_id())
        self._role_ids = {role: self._reserve(piece) for role, piece in ROLE_PIECES.items()}
        self.eot_id = self._reserve(EOT_PIECE)
        self.rule_id = self._reserve(RULE_PIECE)
        self.vocab_size = self._base_size + len(self._appended)
        self._roles_by_id = {i: role for role, i in self._role_ids.items()}
        self.control_ids = frozenset(
            [self.pad_id, self.bos_id, self.eos_id, self.eot_id, self.rule_id, *self._role_ids.values()]
            + [i for i in range(self._base_size) if self._sp.IsControl(i)])
        self._space_mark_ids = self._space_mark_escape()

    def _reserve(self, piece: str, builtin_id: int = -1) -> int:
        """The model's own CONTROL id for `piece` if it has one, else a fresh id after the vocabulary."""
        candidates = [builtin_id] if builtin_id >= 0 else []
        candidates.append(self._sp.piece_to_id(piece))
        for i in candidates:
            # piece_to_id returns unk for a missing piece; a USER_DEFINED piece is producible from text.
            if 0 <= i < self._base_size and self._sp.IsControl(i) and i not in self._taken:
                if i == builtin_id or self._sp.id_to_piece(i) == piece:
                    self._taken.add(i)
                    return i
        new_id = self._base_size + len(self._appended)
        self._appended[new_id] = piece
        self._taken.add(new_id)
        return new_id

    def _space_mark_escape(self) -> list[int] | None:
        """Byte-piece ids spelling U+2581, used so the literal character survives a round trip.

        None when the model has no byte pieces or adds a dummy prefix (then each escaped segment would gain
        a spurious leading space); such models decode a literal U+2581 as a space.
        """
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode("utf-8")]
        if not all(self._sp.IsByte(i) for i in byte_ids):
            return None
        first = self._sp.encode("a", out_type=str)
        if first and first[0].startswith(_SPACE_MARK):
            return None
        return byte_ids

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Loads any SentencePiece model file (ours or user-supplied); ValueError naming the
        path if it is not a file or not a SentencePiece model."""
        path = check_input_file(path, "tokenizer (SentencePiece model)")
        with open(path, "rb") as f:
            data = f.read()
        try:
            return cls(data)
        except RuntimeError as err:  # sentencepiece's parse failure
            raise ValueError(f"{path}: not a SentencePiece model ({str(err).strip()[:120]})") from None

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            f.write(self.serialized_model)

    def __reduce__(self):
        # Pickles as the model bytes (grain worker processes receive tokenizers this way).
        return (Tokenizer, (self.serialized_model,))

    # ---------------------------------------------------------------- text <-> ids
    def encode(self, text: str) -> list[int]:
        """Text -> token ids; never contains a control id. ValueError for text that is not valid
        Unicode (a lone surrogate): callers clean interactive text first (`jsonl.clean_text`)
        and files are refused by their reader."""
        bad = invalid_unicode(text)
        if bad is not None:
            raise ValueError(f"cannot tokenize {text[:50]!r}: {bad}")
        if self._space_mark_ids is not None and _SPACE_MARK in text:
            ids: list[int] = []
            for k, segment in enumerate(text.split(_SPACE_MARK)):
                if k:
                    ids.extend(self._space_mark_ids)
                ids.extend(self._sp.encode(segment))
        else:
            ids = self._sp.encode(text)
        if not self.control_ids.isdisjoint(ids):  # cheap guard on the security property
            raise RuntimeError(f"SentencePiece produced a control id from text {text[:50]!r}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Control ids are dropped (text tokens only); raises ValueError on an out-of-range id."""
        text_ids = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
            if i not in self.control_ids:
                text_ids.append(i)
        return self._sp.decode(text_ids)

    def encode_turn(self, text: str) -> list[int]:
        """A turn's text as it reads after "Name:", with one leading space.

        A word that opens a turn then has the same pieces as inside a sentence, so a
        name copied from a question into a search query or a reply is the same
        tokens (without the space, "Zarzuth" opening a turn is 'Z' 'ar'..., inside a
        question '▁Z' 'ar'...: a copy would need a learnt piece-to-piece map).
        `decode_turn` inverts it exactly.
        """
        return self.encode(" " + text)

    def decode_turn(self, ids: Iterable[int]) -> str:
        """Ids of a turn's text -> the text, without the one leading space of `encode_turn`."""
        text = self.decode(ids)
        return text[1:] if text.startswith(" ") else text

    # ---------------------------------------------------------------- control ids
    def role_id(self, role: Role | str) -> int:
        return self._role_ids[Role(role)]

    def role_of(self, token_id: int) -> Role | None:
        """The Role whose marker is `token_id`, or None for any other id."""
        return self._roles_by_id.get(int(token_id))

    def id_to_piece(self, token_id: int) -> str:
        """Piece string for display and error messages (appended control ids included)."""
        token_id = int(token_id)
        if token_id in self._appended:
            return self._appended[token_id]
        if 0 <= token_id < self._base_size:
            return self._sp.id_to_piece(token_id)
        return f"<out of range id {token_id}>"

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, appended={len(self._appended)}, "
                f"pad={self.pad_id}, bos={self.bos_id}, eot={self.eot_id}, rule={self.rule_id})")


def _training_sentences(texts: Iterable[str], max_chars: int = _CHUNK_CHARS) -> Iterator[str]:
    """Cuts texts into chunks of at most `max_chars`, preferring line boundaries; newlines are kept."""
    for text in texts:
        chunk = ""
        for line in text.splitlines(keepends=True):
            if len(chunk) + len(line) > max_chars and chunk:
                yield chunk
                chunk = ""
            while len(line) > max_chars:
                yield line[:max_chars]
                line = line[max_chars:]
            chunk += line
        if chunk:
            yield chunk


def train_tokenizer(texts: Iterable[str], out_path: str | os.PathLike, vocab_size: int = 1024, *,
                    exact_vocab_size: bool = False, num_threads: int = 1) -> Tokenizer:
    """Trains a byte-fallback BPE model in memory, writes it to `out_path` and returns it.

    `vocab_size` is an upper bound unless `exact_vocab_size` (then a corpus too small for it is an error);
    read the real size from `Tokenizer.vocab_size`. No normalisation and no whitespace folding, so newlines,
    tabs and runs of spaces survive; digits are split one per token.
    """
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(texts),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=exact_vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentence_length=4 * _CHUNK_CHARS + 16,  # bytes; a chunk is at most 4 UTF-8 bytes a char
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece=PAD_PIECE, bos_piece=BOS_PIECE, eos_piece=EOS_PIECE, unk_piece=UNK_PIECE,
        control_symbols=list(EXTRA_CONTROL_PIECES),
        num_threads=num_threads,
        minloglevel=2,
    )
    tokenizer = Tokenizer(buffer.getvalue())
    tokenizer.save(out_path)
    return tokenizer
