"""The VE.Direct text-protocol parser: checksums, HEX frames, garbage, grammar, chunking."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.drivers.vedirect import (
    QUANTITIES,
    Block,
    VeDirectParser,
    decode_value,
    encode_block,
    plain_values,
)
from simulators.vedirect_device import encode_fields, hex_frame

FIXTURES = Path(__file__).resolve().parents[2] / "firmware-configs" / "fixtures" / "victron"
BLOCK_TXT = FIXTURES / "smartsolar_mppt_block.txt"
BLOCK_JSON = FIXTURES / "smartsolar_mppt_block.json"


@pytest.fixture
def wire() -> bytes:
    return BLOCK_TXT.read_bytes()


@pytest.fixture
def spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(BLOCK_JSON.read_text())
    return spec


def feed_all(parser: VeDirectParser, chunks: list[bytes]) -> list[Block]:
    blocks: list[Block] = []
    for chunk in chunks:
        blocks += parser.feed(chunk)
    return blocks


def test_fixture_bytes_match_the_hand_computed_checksum(wire: bytes, spec: dict[str, Any]) -> None:
    assert wire.startswith(b"\r\nPID\t0xA053\r\n")
    assert wire.endswith(b"\r\nChecksum\t" + bytes([spec["checksum_byte"]]))
    assert sum(wire[:-1]) == spec["bytes_before_checksum_sum"]
    assert sum(wire) % 256 == 0
    # The fixture and both encoders (driver's and simulator's) agree byte for byte.
    fields = [tuple(f) for f in spec["fields"]]
    assert encode_block(fields) == wire
    assert encode_fields(fields) == wire


def test_fixture_block_parses_to_typed_and_plain_values(wire: bytes, spec: dict[str, Any]) -> None:
    parser = VeDirectParser()
    [block] = parser.feed(wire)
    assert list(block.fields) == [f[0] for f in spec["fields"]]
    assert block.values["PID"] == 0xA053
    assert block.values["FW"] == "159"
    assert block.values["SER#"] == "HQ2132QYZUR"
    assert block.values["V"] == 13280
    assert block.values["OR"] == 0
    assert block.values["LOAD"] is True
    assert block.values["H19"] == 10342
    assert block.get_int("HSDS") == 211
    assert "SOC" not in block.values  # an MPPT has no state of charge
    plain = plain_values(block.values, list(spec["expected"]))
    assert plain == spec["expected"]
    assert parser.stats.blocks == 1
    assert parser.stats.checksum_errors == parser.stats.garbage_bytes == 0


def test_quantities_mark_the_resettable_lifetime_counter() -> None:
    total = QUANTITIES["yield_total_wh"]
    assert (total.label, total.unit, total.scale) == ("H19", "Wh", 10.0)
    assert total.role == "energy_counter" and total.resettable
    others = [q.name for q in QUANTITIES.values() if q.role == "energy_counter"]
    assert others == ["yield_total_wh"]  # H20 restarts daily: not a lifetime counter


def test_block_split_into_single_bytes(wire: bytes) -> None:
    parser = VeDirectParser()
    blocks = feed_all(parser, [bytes([b]) for b in wire + wire])
    assert len(blocks) == 2
    assert blocks[0] == blocks[1] == VeDirectParser().feed(wire)[0]


def test_signed_current_and_not_available() -> None:
    data = encode_block([("V", "12800"), ("I", "-1500"), ("SOC", "---"), ("CE", "-12345")])
    [block] = VeDirectParser().feed(data)
    assert block.values["I"] == -1500
    assert block.values["SOC"] is None
    assert plain_values(block.values, ["battery_current_a", "state_of_charge_permille"]) == {
        "battery_current_a": -1.5
    }


def test_bmv_soc() -> None:
    data = encode_block([("PID", "0x0203"), ("V", "26201"), ("I", "0"), ("SOC", "876")])
    [block] = VeDirectParser().feed(data)
    assert plain_values(block.values, ["state_of_charge_permille"]) == {
        "state_of_charge_permille": 876.0
    }


def test_checksum_error_dropped_and_counted(wire: bytes) -> None:
    bad = bytearray(wire)
    bad[bad.index(b"13280") + 4] ^= 0x01  # "13280" -> "13281": grammatical, sum off by one
    parser = VeDirectParser()
    blocks = parser.feed(bytes(bad) + wire)
    assert len(blocks) == 1 and blocks[0].values["V"] == 13280
    assert parser.stats.checksum_errors == 1
    assert parser.stats.blocks == 1


def test_wrong_checksum_byte(wire: bytes) -> None:
    parser = VeDirectParser()
    assert parser.feed(wire[:-1] + bytes([(wire[-1] + 1) % 256])) == []
    assert parser.stats.checksum_errors == 1


@pytest.mark.parametrize("offset", [0, 1, 5, 13, 40, 100, -12, -2])
def test_hex_frame_inside_a_block_is_stripped(wire: bytes, offset: int) -> None:
    frame = hex_frame()
    at = offset % len(wire)
    parser = VeDirectParser()
    [block] = parser.feed(wire[:at] + frame + wire[at:])
    assert block == VeDirectParser().feed(wire)[0]
    assert parser.stats.hex_frames == 1
    assert parser.stats.garbage_bytes == 0


def test_hex_frames_between_blocks_and_in_chunks(wire: bytes) -> None:
    stream = hex_frame() + wire + hex_frame(0x5, b"\x41") + hex_frame() + wire
    parser = VeDirectParser()
    blocks = feed_all(parser, [stream[i : i + 7] for i in range(0, len(stream), 7)])
    assert len(blocks) == 2
    assert parser.stats.hex_frames == 3


def block_with_checksum(byte: int) -> bytes:
    """A small block whose checksum byte is `byte` (three free characters steer the sum)."""
    chars = [chr(c) for c in range(0x21, 0x7F) if c != 0x3A]
    for a, b, c in itertools.product(chars, repeat=3):
        data = encode_block([("V", "12800"), ("SER#", f"HQ{a}{b}{c}")])
        if data[-1] == byte:
            return data
    raise AssertionError(f"no block with checksum byte {byte:#x}")


def test_colon_as_checksum_byte_is_not_a_hex_frame() -> None:
    data = block_with_checksum(0x3A)
    parser = VeDirectParser()
    blocks = parser.feed(data + data)
    assert len(blocks) == 2
    assert parser.stats.hex_frames == 0


@pytest.mark.parametrize("checksum_value", [0x0D, 0x0A, 0x09, 0x00, 0xFF])
def test_control_characters_as_checksum_byte(checksum_value: int) -> None:
    data = block_with_checksum(checksum_value)
    parser = VeDirectParser()
    assert len(parser.feed(data * 3)) == 3
    assert parser.stats.garbage_bytes == 0


def test_garbage_before_a_block_is_skipped(wire: bytes) -> None:
    # Random bytes, stray CRs, a field without its line start, a line cut after its label.
    noise = random.Random(7).randbytes(300) + b"\r\rx" + b"PPV\t12" + b"\r\nH1"
    parser = VeDirectParser()
    blocks = parser.feed(noise + wire)
    assert len(blocks) == 1
    assert blocks[0].values["SER#"] == "HQ2132QYZUR"
    assert parser.stats.garbage_bytes > 0


def test_starting_mid_block_resynchronises(wire: bytes) -> None:
    parser = VeDirectParser()
    blocks = parser.feed(wire[60:] + wire + wire)
    assert len(blocks) == 2  # the partial first block fails its checksum (or grammar)


def test_two_flipped_msbs_keep_the_sum_but_break_the_grammar(wire: bytes) -> None:
    bad = bytearray(wire)
    a = bad.index(b"36540")
    bad[a] ^= 0x80  # +128 ...
    bad[a + 2] ^= 0x80  # ... +128: the sum is unchanged mod 256
    assert sum(bad) % 256 == 0
    parser = VeDirectParser()
    blocks = parser.feed(bytes(bad) + wire)
    assert len(blocks) == 1 and blocks[0].values["VPV"] == 36540
    assert parser.stats.blocks == 1
    assert parser.stats.grammar_errors >= 1


def test_printable_corruption_with_right_sum_caught_by_value_check(wire: bytes) -> None:
    bad = bytearray(wire)
    a = bad.index(b"13280")
    bad[a + 1] += 0x20  # '3' -> 'S'
    bad[a + 2] -= 0x20  # '2' -> 0x12 control character
    assert sum(bad) % 256 == 0
    parser = VeDirectParser()
    assert parser.feed(bytes(bad)) == []
    # Two printable substitutions into a numeric field: caught by the typed-value check.
    bad = bytearray(wire)
    a = bad.index(b"13280")
    bad[a + 1] += 0x20  # '3' -> 'S'
    bad[a + 3] -= 0x20 - 0x10  # '8' -> '(' ... adjusted to keep the sum
    bad[a + 4] -= 0x10  # '0' -> ' '
    assert sum(bad) % 256 == 0
    parser = VeDirectParser()
    assert parser.feed(bytes(bad)) == []
    assert parser.stats.grammar_errors == 1


def test_line_grammar() -> None:
    parser = VeDirectParser()
    # A label with a space, an overlong value, a value with a TAB, a duplicate label.
    for fields in (
        [("V X", "1")],
        [("V", "1" * 40)],
        [("V", "1\t2")],
        [("V", "1"), ("V", "2")],
        [("LOAD", "MAYBE")],
        [("PID", "A053")],
    ):
        body = b"".join(b"\r\n" + k.encode() + b"\t" + v.encode() for k, v in fields)
        body += b"\r\nChecksum\t"
        assert parser.feed(body + bytes([(-sum(body)) & 0xFF])) == []
    assert parser.stats.blocks == 0
    assert parser.stats.grammar_errors >= 6


def test_decode_value_types() -> None:
    assert decode_value("PID", "0xA053") == 0xA053
    assert decode_value("OR", "0x00000001") == 1
    assert decode_value("LOAD", "OFF") is False
    assert decode_value("SER#", "HQ1") == "HQ1"
    assert decode_value("H19", "---") is None
    with pytest.raises(ValueError):
        decode_value("V", "12.8")


def test_stray_colon_in_noise_does_not_swallow_the_next_block(wire: bytes) -> None:
    parser = VeDirectParser()
    blocks = parser.feed(b"xx:12zz" + wire + b":" + wire)
    assert len(blocks) == 2  # a ':' not followed by hex digits and LF is noise
    assert parser.stats.hex_frames == 0
    assert parser.stats.garbage_bytes == 2 + 3 + 2 + 1


def test_stray_colon_inside_a_block_refuses_it(wire: bytes) -> None:
    parser = VeDirectParser()
    at = wire.index(b"HQ2132")
    blocks = parser.feed(wire[:at] + b":" + wire[at:] + wire)
    assert len(blocks) == 1
    assert parser.stats.grammar_errors >= 1 and parser.stats.hex_frames == 0


# --- property: any valid block, any chunking -> the same result ---------------------------------

labels = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789#_",
    min_size=1,
    max_size=9,
).filter(lambda s: s != "Checksum")
text_values = st.text(
    alphabet=[chr(c) for c in range(0x20, 0x7F) if c != 0x3A], min_size=0, max_size=32
)


@st.composite
def blocks(draw: st.DrawFn) -> list[tuple[str, str]]:
    fields: dict[str, str] = {}
    for name in draw(st.lists(labels, min_size=1, max_size=20, unique=True)):
        if name in ("V", "I", "PPV", "H19", "SOC"):
            fields[name] = str(draw(st.integers(-(10**6), 10**9)))
        elif name in ("PID", "OR", "LOAD"):
            continue  # typed elsewhere; keep the generator simple
        else:
            value = draw(text_values)
            number = draw(st.integers(0, 10**6))
            for candidate in (value, str(number), f"0x{number:X}"):
                try:
                    decode_value(name, candidate)
                except ValueError:  # a typed label (MODE, H7, ...): try a number
                    continue
                fields[name] = candidate
                break
    if not fields:
        fields["V"] = "12000"
    return list(fields.items())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(blocks(), min_size=1, max_size=4),
    st.lists(st.integers(1, 64), min_size=1, max_size=50),
    st.lists(st.integers(0, 400), max_size=3),
)
def test_any_valid_blocks_any_chunking_same_result(
    fields_list: list[list[tuple[str, str]]], cuts: list[int], hex_positions: list[int]
) -> None:
    stream = bytearray(b"".join(encode_block(f) for f in fields_list))
    size = len(stream)
    for pos in sorted((min(p, size) for p in hex_positions), reverse=True):
        # Not between "Checksum<TAB>" and its byte: that slot belongs to the checksum.
        if stream[:pos].endswith(b"Checksum\t"):
            continue
        stream[pos:pos] = hex_frame()
    whole = VeDirectParser().feed(bytes(stream))
    assert [dict(b.fields) for b in whole] == [dict(f) for f in fields_list]
    chunks, i, k = [], 0, 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        chunks.append(bytes(stream[i : i + n]))
        i += n
        k += 1
    parser = VeDirectParser()
    assert feed_all(parser, chunks) == whole
    assert parser.stats.checksum_errors == parser.stats.grammar_errors == 0
    assert parser.stats.garbage_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_garbage_then_two_blocks_second_is_read(noise: bytes, cut: int) -> None:
    wire = BLOCK_TXT.read_bytes()
    expected = VeDirectParser().feed(wire)[0]
    stream = noise + wire + wire
    parser = VeDirectParser()
    blocks = feed_all(parser, [stream[i : i + cut] for i in range(0, len(stream), cut)])
    assert blocks and blocks[-1] == expected  # the block after a complete one is in step
    stats = parser.stats
    assert stats.blocks == len(blocks)
