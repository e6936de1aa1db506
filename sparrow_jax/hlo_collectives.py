"""Collective traffic of a compiled program, read from its optimised HLO text.

`collective_bytes(compiled.as_text())` walks the computations from ENTRY, following
while bodies and conditions, calls, fusions and branches. A while loop with a known
trip count (XLA's `known_trip_count`, e.g. a `lax.scan` over layers) multiplies what its
body moves. The outermost while WITHOUT a known trip count (a `lax.while_loop` such as
the sampler's decode loop) is reported apart, per iteration: `loop` is one trip of its
body and condition, `outside` is everything else run once per call.

Per collective both sides are counted, in bytes of one device's shard:
  operand_bytes: the operands (for all-gather, the local piece it starts from);
  result_bytes:  the result (for all-gather, the gathered tensor);
  bytes:         the larger of the two, the tensor the collective materialises (the
                 gathered weight of an all-gather, the summed tensor of an all-reduce).
What crosses the links depends on the algorithm (a ring all-reduce sends about 2x its
size, an all-gather over n devices receives (n-1)/n of its result); these are sizes.
"""
from __future__ import annotations

import re
from typing import Any

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")
_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY_RE = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9]\w*)?)\[([0-9,]*)\]")
_HEADER_RE = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_CALLEE_RE = re.compile(
    r"\b(condition|body|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES_RE = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def type_bytes(type_text: str) -> int:
    """Bytes of an HLO type: an array `f32[8,128]{1,0}` or a tuple of them."""
    total = 0
    for dtype, dims in _ARRAY_RE.findall(type_text):
        if dtype not in _BYTES and not dtype.startswith("f8"):
            continue
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size * _BYTES.get(dtype, 1)
    return total


def _split_type(rest: str) -> tuple[str, str]:
    """'TYPE opcode(...)...' -> (TYPE, 'opcode(...)...'); a tuple type has nested parens."""
    if not rest.startswith("("):
        head, _, tail = rest.partition(" ")
        return head, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[:i + 1], rest[i + 1:].lstrip()
    return rest, ""


def _operands(call_text: str) -> list[str]:
    """Names inside the opcode's first (balanced) parentheses."""
    start = call_text.find("(")
    depth, end = 0, len(call_text)
    for i in range(start, len(call_text)):
        depth += call_text[i] == "("
        depth -= call_text[i] == ")"
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", call_text[start:end])


def parse_module(hlo_text: str) -> tuple[dict[str, list[dict]], str]:
    """({computation: [instruction]}, entry name). An instruction: name, type, opcode,
    operands, text (the rest of its line)."""
    computations: dict[str, list[dict]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _HEADER_RE.match(line)
        if header and not line.startswith(" "):
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        match = _INSTR_RE.match(line) if current else None
        if not match:
            continue
        type_text, call_text = _split_type(match.group(2))
        opcode = call_text.split("(", 1)[0].strip()
        computations[current].append({"name": match.group(1), "type": type_text, "opcode": opcode,
                                      "operands": _operands(call_text), "text": call_text})
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _callees(instr: dict) -> list[str]:
    names = [name for _, name in _CALLEE_RE.findall(instr["text"])]
    for group in _BRANCHES_RE.findall(instr["text"]):
        names += re.findall(r"%([\w.\-]+)", group)
    return names


def _kind(opcode: str) -> str | None:
    base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    return base if base in COLLECTIVES else None


def _empty() -> dict[str, Any]:
    return {"bytes": 0, "operand_bytes": 0, "result_bytes": 0, "count": 0, "by_kind": {}}


def _add(tally: dict, kind: str, operand: int, result: int, times: int) -> None:
    for t in (tally, tally["by_kind"].setdefault(kind, {"bytes": 0, "operand_bytes": 0,
                                                        "result_bytes": 0, "count": 0})):
        t["bytes"] += times * max(operand, result)
        t["operand_bytes"] += times * operand
        t["result_bytes"] += times * result
        t["count"] += times


def collective_bytes(hlo_text: str) -> dict[str, Any]:
    """Collective sizes per device: {'outside', 'loop', 'loop_found', 'unknown_trip_loops'}.

    'outside' and 'loop' each: bytes, operand_bytes, result_bytes, count (instances
    executed, nested known-trip loops multiplied out) and by_kind (the same per collective
    kind). 'loop' is one iteration of the outermost while without a known trip count (zeros
    and loop_found False if there is none). unknown_trip_loops: other whiles without a
    known trip count, counted as one trip.
    """
    computations, entry = parse_module(hlo_text)
    report = {"outside": _empty(), "loop": _empty(), "loop_found": False, "unknown_trip_loops": 0}

    def walk(name: str, times: int, tally: dict, stack: tuple[str, ...]) -> None:
        if name in stack or name not in computations:
            return
        instrs = computations[name]
        types = {i["name"]: i["type"] for i in instrs}
        for instr in instrs:
            kind = _kind(instr["opcode"])
            if kind:
                operand = sum(type_bytes(types.get(o, "")) for o in instr["operands"])
                result = type_bytes(instr["type"])
                if instr["opcode"].endswith("-start"):  # (operands..., results...) tuple
                    result = max(result - operand, 0)
                _add(tally, kind, operand, result, times)
            callees = _callees(instr)
            if instr["opcode"] == "while":
                trip = _TRIP_RE.search(instr["text"])
                if trip:
                    inner, inner_tally = times * int(trip.group(1)), tally
                elif not report["loop_found"] and tally is report["outside"]:
                    report["loop_found"] = True
                    inner, inner_tally = 1, report["loop"]
                else:
                    report["unknown_trip_loops"] += 1
                    inner, inner_tally = times, tally
                for callee in callees:
                    walk(callee, inner, inner_tally, stack + (name,))
                continue
            for callee in callees:
                walk(callee, times, tally, stack + (name,))

    walk(entry, 1, report["outside"], ())
    return report
