"""The one compute-budget parser against solders' own encoders."""
from solders.compute_budget import request_heap_frame, set_compute_unit_limit, set_compute_unit_price

from venue import COMPUTE_BUDGET_PROGRAM_ID, SET_COMPUTE_UNIT_LIMIT, SET_COMPUTE_UNIT_PRICE, parse_compute_budget


def test_parses_what_solders_encodes():
    limit, price = set_compute_unit_limit(300_000), set_compute_unit_price(2**63 + 5)
    assert str(limit.program_id) == COMPUTE_BUDGET_PROGRAM_ID
    parsed = parse_compute_budget(bytes(limit.data))
    assert (parsed.tag, parsed.name, parsed.value, parsed.exact) == (SET_COMPUTE_UNIT_LIMIT, "SetComputeUnitLimit", 300_000, True)
    parsed = parse_compute_budget(bytes(price.data))
    assert (parsed.tag, parsed.value, parsed.exact) == (SET_COMPUTE_UNIT_PRICE, 2**63 + 5, True)
    assert parse_compute_budget(bytes(request_heap_frame(64 * 1024).data)).value == 64 * 1024


def test_unknown_short_and_trailing_data():
    assert parse_compute_budget(b"") is None
    assert parse_compute_budget(bytes([0]) + bytes(8)) is None, "RequestUnitsDeprecated is not accepted"
    assert parse_compute_budget(bytes([5, 1, 0, 0, 0])) is None
    assert parse_compute_budget(bytes([3, 1, 0, 0, 0])) is None, "a price needs 8 bytes"
    trailing = parse_compute_budget(bytes([2, 1, 0, 0, 0, 9]))
    assert trailing.value == 1 and not trailing.exact
