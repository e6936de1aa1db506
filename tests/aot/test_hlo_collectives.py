"""Collective sizes from HLO text: loops multiply, the unknown-trip loop is reported apart."""
from sparrow_jax.hlo_collectives import collective_bytes, type_bytes

HLO = """HloModule jit_f, entry_computation_layout={(f32[4,8]{1,0})->f32[16,8]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%layer_body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %w = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %ag = f32[16,8]{1,0} all-gather(%w), channel_id=1, dimensions={0}
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %w)
}

%layer_cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%decode_body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %scan = (s32[], f32[4,8]{1,0}) while(%p), condition=%layer_cond, body=%layer_body, backend_config={"known_trip_count":{"n":"3"}}
  %v = f32[4,8]{1,0} get-tuple-element(%scan), index=1
  %ar = bf16[2,8]{1,0} all-reduce(%v), channel_id=2, to_apply=%add
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %v)
}

%decode_cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %flag = pred[] constant(true)
  ROOT %all = pred[] all-reduce(%flag), channel_id=3, to_apply=%add
}

ENTRY %main (a: f32[4,8]) -> f32[16,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %g = f32[16,8]{1,0} all-gather(%a), channel_id=4, dimensions={0}
  %init = (s32[], f32[4,8]{1,0}) tuple(%z, %a)
  %loop = (s32[], f32[4,8]{1,0}) while(%init), condition=%decode_cond, body=%decode_body
  ROOT %out = f32[16,8]{1,0} copy(%g)
}
"""


def test_type_bytes():
    assert type_bytes("f32[4,8]{1,0}") == 128
    assert type_bytes("(bf16[2,8]{1,0}, s32[], pred[3])") == 32 + 4 + 3


def test_loop_and_outside():
    report = collective_bytes(HLO)
    assert report["loop_found"] and report["unknown_trip_loops"] == 0
    outside, loop = report["outside"], report["loop"]
    # ENTRY: one all-gather of f32[4,8] -> f32[16,8].
    assert (outside["count"], outside["operand_bytes"], outside["result_bytes"]) == (1, 128, 512)
    assert outside["bytes"] == 512
    # One decode iteration: the layer scan's all-gather 3 times, an all-reduce whose operand is
    # f32[4,8] and result bf16[2,8], and the condition's pred all-reduce.
    assert loop["by_kind"]["all-gather"] == {"count": 3, "operand_bytes": 3 * 128,
                                             "result_bytes": 3 * 512, "bytes": 3 * 512}
    assert loop["by_kind"]["all-reduce"] == {"count": 2, "operand_bytes": 128 + 1,
                                             "result_bytes": 32 + 1, "bytes": 128 + 1}
    assert loop["bytes"] == 3 * 512 + 129


def test_no_unknown_trip_loop():
    text = HLO.replace("%loop = (s32[], f32[4,8]{1,0}) while(%init), condition=%decode_cond, "
                       "body=%decode_body", "%loop = (s32[], f32[4,8]{1,0}) while(%init), "
                       "condition=%decode_cond, body=%decode_body, "
                       "backend_config={\"known_trip_count\":{\"n\":\"2\"}}")
    report = collective_bytes(text)
    assert not report["loop_found"] and report["loop"]["bytes"] == 0
    assert report["outside"]["bytes"] == 512 + 2 * (3 * 512 + 129)
