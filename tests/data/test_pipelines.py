"""grain pipelines: shapes, masks, truncation, process rows and checkpointable state."""
import json

import numpy as np
import pytest

from data_helpers import RULES
from sparrow_jax.data import examples, pipelines
from sparrow_jax.data.pipelines import make_pipeline
from sparrow_jax.dialogue import render as render_lib
from sparrow_jax.dialogue.turns import ROLE_INDEX, Role

SEQ_LEN = 48


def _pipeline(stage, records, tokenizer, **kwargs):
    source = records["corpus"] + records["dialogues"] if stage == "lm" else records[
        examples.STAGE_KINDS[stage][0]]
    kwargs = {"global_batch_size": 4, "seq_len": SEQ_LEN, "seed": 7,
              "rules": RULES, "num_candidates": 3, "rule_len": 64, **kwargs}
    return make_pipeline(stage, source, tokenizer, **kwargs)


def _equal(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("stage", examples.STAGES)
def test_batch_keys_shapes_dtypes(stage, records, tokenizer):
    batch = next(_pipeline(stage, records, tokenizer))
    spec = pipelines.batch_spec(stage, 4, SEQ_LEN, num_candidates=3, rule_len=64)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec


@pytest.mark.parametrize("stage,pack", [(s, False) for s in examples.STAGES] + [("sft", True)])
def test_state_round_trip_resumes_identically(stage, pack, records, tokenizer):
    # 24 records / batch 4 = 6 batches an epoch: taking 5 + 4 crosses into the reshuffled 2nd epoch.
    it = _pipeline(stage, records, tokenizer, pack=pack)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    after = [next(it) for _ in range(4)]
    resumed = _pipeline(stage, records, tokenizer, pack=pack)
    resumed.set_state(state)
    _equal(after, [next(resumed) for _ in range(4)])
    assert resumed.get_state() == it.get_state()


def test_seed_changes_order_and_epochs_reshuffle(records, tokenizer):
    def order(seed, n):
        it = _pipeline("sft", records, tokenizer, seed=seed)
        return np.concatenate([next(it)["record_index_B"] for _ in range(n)])
    two_epochs = order(7, 12)
    assert sorted(two_epochs[:24]) == list(range(24)) == sorted(two_epochs[24:])
    assert list(two_epochs[:24]) != list(two_epochs[24:])
    assert list(order(8, 6)) != list(two_epochs[:24])
    assert list(order(7, 6)) == list(two_epochs[:24])


@pytest.mark.parametrize("stage,pack", [("sft", False), ("sft", True), ("lm", False),
                                        ("rule_rm", False)])
def test_process_rows_split_the_same_global_batches(records, tokenizer, stage, pack):
    """Two processes' rows of each batch, side by side, are the one-process batch: a run's
    batches do not depend on how many processes share it."""
    whole = list(_pipeline(stage, records, tokenizer, num_epochs=1, pack=pack))
    halves = [list(_pipeline(stage, records, tokenizer, num_epochs=1, pack=pack,
                             rows=slice(2 * i, 2 * i + 2))) for i in (0, 1)]
    assert len(whole) == len(halves[0]) == len(halves[1]) > 0
    for batch, first, second in zip(whole, *halves):
        assert first["tokens_BxL"].shape[0] == 2
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key],
                                          err_msg=key)


def test_process_rows_resume_from_the_shared_state(records, tokenizer):
    it = _pipeline("sft", records, tokenizer, rows=slice(2, 4))
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = next(it)
    resumed = _pipeline("sft", records, tokenizer, rows=slice(2, 4))
    resumed.set_state(state)
    _equal([next(resumed)], [expected])


def test_sft_loss_mask_only_on_policy_turns(records, tokenizer):
    it = _pipeline("sft", records, tokenizer, num_epochs=1, shuffle=False)
    batches = list(it)
    for batch in batches:
        role_ids, loss = batch["role_ids_BxL"], batch["loss_mask_BxL"]
        forbidden = np.isin(role_ids, [ROLE_INDEX[Role.USER], ROLE_INDEX[Role.SEARCH_RESULT], -1])
        assert not (loss & forbidden).any()
        assert not (loss & ~batch["valid_BxL"]).any()
        assert loss.any(axis=1).all()  # every dialogue ends with an agent turn that survives cutting
        tokens, valid = batch["tokens_BxL"], batch["valid_BxL"]
        assert (tokens[~valid] == tokenizer.pad_id).all()
        assert (tokens[:, 0] == tokenizer.bos_id).all()


def test_sft_left_truncation_counted_not_dropped(records, tokenizer, caplog):
    lengths = [len(render_lib.render(r.turns, tokenizer)) for r in records["dialogues"]]
    expected_cut = sum(n > SEQ_LEN for n in lengths)
    assert 0 < expected_cut < len(lengths)
    it = _pipeline("sft", records, tokenizer, num_epochs=1, shuffle=False)
    with caplog.at_level("WARNING"):
        batches = list(it)
    indices = np.concatenate([b["record_index_B"] for b in batches])
    assert sorted(indices.tolist()) == list(range(24))
    assert it.num_truncated == expected_cut and it.num_examples == 24
    assert "cut from the left" in caplog.text
    for batch in batches:
        for row, cut in enumerate(batch["truncated_B"]):
            record = records["dialogues"][batch["record_index_B"][row]]
            n = int(batch["valid_BxL"][row].sum())
            assert (n <= SEQ_LEN) and (cut == (len(render_lib.render(record.turns, tokenizer)) > SEQ_LEN))
            # the kept text is the END of the dialogue: its final turn is intact
            last = render_lib.render(record.turns[-1:], tokenizer).token_ids[1:]
            np.testing.assert_array_equal(batch["tokens_BxL"][row, n - len(last):n], last)


def test_pref_rm_last_index_and_labels(records, tokenizer):
    batch = next(_pipeline("pref_rm", records, tokenizer, shuffle=False))
    for row, index in enumerate(batch["record_index_B"]):
        record = records["preferences"][index]
        k = len(record.candidates)
        assert batch["candidate_valid_BxK"][row].tolist() == [True] * k + [False] * (3 - k)
        assert batch["chosen_B"][row] == record.chosen
        for c in range(k):
            last = batch["last_index_BxK"][row, c]
            assert batch["tokens_BxKxL"][row, c, last] == tokenizer.eot_id
            assert last == batch["valid_BxKxL"][row, c].sum() - 1
            # turn_start: the role token of the candidate's final agent turn (its text follows)
            start = batch["turn_start_BxK"][row, c]
            assert batch["tokens_BxKxL"][row, c, start] == tokenizer.role_id(Role.AGENT)
            text = tokenizer.encode_turn(record.candidates[c][-1].text)
            np.testing.assert_array_equal(batch["tokens_BxKxL"][row, c, start + 1:last], text)
        supported = record.supported or (None,) * k
        assert batch["supported_mask_BxK"][row, :k].tolist() == [s is not None for s in supported]
        assert not batch["valid_BxKxL"][row, k:].any()


def test_rule_rm_suffix_continues_the_dialogue(records, tokenizer):
    batch = next(_pipeline("rule_rm", records, tokenizer, shuffle=False))
    for row, index in enumerate(batch["record_index_B"]):
        record = records["rule_ratings"][index]
        question = render_lib.render_rule_question(RULES[record.rule_id], tokenizer)
        q = len(question)
        np.testing.assert_array_equal(batch["rule_tokens_BxR"][row, :q], question)
        n = batch["valid_BxL"][row].sum()
        assert batch["rule_positions_BxR"][row, 0] == n
        assert batch["rule_last_index_B"][row] == q - 1
        assert batch["rule_index_B"][row] == list(RULES).index(record.rule_id)
        assert batch["broken_B"][row] == record.broken


def test_rule_question_longer_than_rule_len_is_an_error(records, tokenizer):
    with pytest.raises(ValueError, match="longer than rule_len=3"):
        _pipeline("rule_rm", records, tokenizer, rule_len=3)


def test_prompts_left_padded(records, tokenizer):
    batch = next(_pipeline("prompts", records, tokenizer, shuffle=False))
    valid, lengths = batch["valid_BxL"], batch["length_B"]
    assert valid[:, -1].all()
    assert (valid.sum(axis=1) == lengths).all()
    assert (batch["positions_BxL"][:, -1] == lengths - 1).all()
    assert batch["source_B"].tolist() == [0, 1, 2, 0]
    assert batch["rule_index_B"].tolist() == [-1, -1, list(RULES).index("no_insults"), -1]


def test_lm_packing(records, tokenizer):
    batch = next(_pipeline("lm", records, tokenizer))
    seg, pos, valid = batch["segment_ids_BxL"], batch["positions_BxL"], batch["valid_BxL"]
    assert valid.all()  # an endless stream packs every row full
    starts = pos == 0
    assert (starts == np.concatenate([np.ones((4, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)).all()
    assert (batch["loss_mask_BxL"] == (valid & ~starts)).all()


def _segments(batch):
    """(tokens, loss_mask, role_ids) of every dialogue packed in a batch's rows."""
    out = []
    for row in range(batch["tokens_BxL"].shape[0]):
        seg = batch["segment_ids_BxL"][row]
        for s in range(1, seg.max() + 1):
            at = seg == s
            positions = batch["positions_BxL"][row][at]
            np.testing.assert_array_equal(positions, np.arange(at.sum()))  # restart per dialogue
            out.append(tuple(batch[k][row][at] for k in ("tokens_BxL", "loss_mask_BxL",
                                                         "role_ids_BxL")))
    return out


def test_sft_packing_keeps_each_dialogue_whole_and_counts_them(records, tokenizer):
    it = _pipeline("sft", records, tokenizer, pack=True, global_batch_size=2)
    unpacked = {}
    for record in records["dialogues"]:
        rendered, _ = render_lib.truncate_left(render_lib.render(record.turns, tokenizer), SEQ_LEN)
        unpacked[tuple(rendered.token_ids.tolist())] = rendered
    seen, rows = 0, 0
    for _ in range(6):
        batch = next(it)
        assert set(batch) == {examples.batch_key("sft_packed", k) for k in examples.PACKED_SFT_SPEC}
        valid, seg = batch["valid_BxL"], batch["segment_ids_BxL"]
        assert (valid == (seg > 0)).all() and not (batch["loss_mask_BxL"] & ~valid).any()
        assert (batch["role_ids_BxL"][~valid] == -1).all()
        segments = _segments(batch)
        assert len(segments) == batch["num_segments_B"].sum()
        for tokens, loss_mask, role_ids in segments:  # each one rendered dialogue, intact
            rendered = unpacked[tuple(tokens.tolist())]
            np.testing.assert_array_equal(loss_mask, rendered.loss_mask)
            np.testing.assert_array_equal(role_ids, rendered.role_ids)
        seen, rows = seen + len(segments), rows + 2
    assert seen > rows  # rows of 48 hold more than one of these dialogues on average
    assert it.num_examples == seen
    assert it.num_truncated > 0  # some dialogues are longer than 48 and were cut


def test_pack_is_only_for_sft(records, tokenizer):
    with pytest.raises(ValueError, match="pack=True is for the sft stage"):
        _pipeline("rule_rm", records, tokenizer, pack=True)


def test_batch_size_must_be_positive(records, tokenizer):
    with pytest.raises(ValueError, match="global_batch_size must be positive"):
        _pipeline("sft", records, tokenizer, global_batch_size=0)


def test_default_rows_are_the_whole_batch(records, tokenizer):
    it = make_pipeline("sft", records["dialogues"], tokenizer, global_batch_size=24, seq_len=SEQ_LEN,
                       num_epochs=1)
    assert sorted(next(it)["record_index_B"].tolist()) == list(range(24))
