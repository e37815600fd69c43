"""The one compute-budget parser against solders' own encoders."""
from solders.compute_budget import request_heap_frame, set_compute_unit_limit, set_compute_unit_price

from venue import COMPUTE_BUDGET_PROGRAM_ID, ComputeBudgetInstruction, parse_compute_budget


def test_parses_what_solders_encodes():
    limit, price = set_compute_unit_limit(300_000), set_compute_unit_price(2**63 + 5)
    assert str(limit.program_id) == COMPUTE_BUDGET_PROGRAM_ID
    parsed = parse_compute_budget(bytes(limit.data))
    assert (parsed.tag, parsed.name, parsed.value, parsed.exact) == (ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT, "SetComputeUnitLimit", 300_000, True)
    parsed = parse_compute_budget(bytes(price.data))
    assert (parsed.tag, parsed.value, parsed.exact) == (ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE, 2**63 + 5, True)
    assert parse_compute_budget(bytes(request_heap_frame(64 * 1024).data)).value == 64 * 1024


def test_unknown_short_and_trailing_data():
    assert parse_compute_budget(b"") is None
    assert parse_compute_budget(bytes([0]) + bytes(8)) is None, "RequestUnitsDeprecated is not accepted"
    assert parse_compute_budget(bytes([5, 1, 0, 0, 0])) is None
    assert parse_compute_budget(bytes([3, 1, 0, 0, 0])) is None, "a price needs 8 bytes"
    trailing = parse_compute_budget(bytes([2, 1, 0, 0, 0, 9]))
    assert trailing.value == 1 and not trailing.exact


# --- the instruction vocabularies (venue/instructions.py) against solders' and spl's encoders ------

def _u32_tag(ix) -> int:
    return int.from_bytes(bytes(ix.data)[:4], "little")


def test_system_and_lookup_table_numbers_are_what_solders_encodes():
    from solders import system_program as sp
    from solders.pubkey import Pubkey

    from venue.instructions import LookupTableInstruction, SystemInstruction

    a, b, c = (Pubkey.new_unique() for _ in range(3))
    encoded = {
        SystemInstruction.CREATE_ACCOUNT: sp.create_account({"from_pubkey": a, "to_pubkey": b, "lamports": 1, "space": 0, "owner": c}),
        SystemInstruction.ASSIGN: sp.assign({"pubkey": a, "owner": c}),
        SystemInstruction.TRANSFER: sp.transfer({"from_pubkey": a, "to_pubkey": b, "lamports": 1}),
        SystemInstruction.ADVANCE_NONCE_ACCOUNT: sp.advance_nonce_account({"nonce_pubkey": a, "authorized_pubkey": b}),
        SystemInstruction.WITHDRAW_NONCE_ACCOUNT: sp.withdraw_nonce_account({"nonce_pubkey": a, "authorized_pubkey": b, "to_pubkey": c, "lamports": 1}),
        SystemInstruction.INITIALIZE_NONCE_ACCOUNT: sp.initialize_nonce_account({"nonce_pubkey": a, "authority": b}),
        SystemInstruction.AUTHORIZE_NONCE_ACCOUNT: sp.authorize_nonce_account({"nonce_pubkey": a, "authorized_pubkey": b, "new_authority": c}),
        SystemInstruction.ALLOCATE: sp.allocate({"pubkey": a, "space": 8}),
        SystemInstruction.TRANSFER_WITH_SEED: sp.transfer_with_seed({"from_pubkey": a, "from_base": b, "from_seed": "s", "from_owner": c, "to_pubkey": b, "lamports": 1}),
        SystemInstruction.UPGRADE_NONCE_ACCOUNT: sp.upgrade_nonce_account({"nonce_pubkey": a}),
        LookupTableInstruction.CREATE_LOOKUP_TABLE: sp.create_lookup_table({"authority_address": a, "payer_address": a, "recent_slot": 1})[0],
        LookupTableInstruction.FREEZE_LOOKUP_TABLE: sp.freeze_lookup_table({"lookup_table_address": a, "authority_address": b}),
        LookupTableInstruction.EXTEND_LOOKUP_TABLE: sp.extend_lookup_table({"payer_address": a, "lookup_table_address": b, "authority_address": a, "new_addresses": [c]}),
        LookupTableInstruction.DEACTIVATE_LOOKUP_TABLE: sp.deactivate_lookup_table({"lookup_table_address": a, "authority_address": b}),
        LookupTableInstruction.CLOSE_LOOKUP_TABLE: sp.close_lookup_table({"lookup_table_address": a, "authority_address": b, "recipient_address": c}),
    }
    for member, ix in encoded.items():
        assert _u32_tag(ix) == member, member


def test_token_ata_and_compute_budget_numbers_are_what_spl_and_solders_encode():
    from solders import compute_budget
    from solders.pubkey import Pubkey
    from spl.token import instructions as spl_instructions
    from spl.token._layouts import InstructionType

    from venue.instructions import AssociatedTokenAccountInstruction, ComputeBudgetInstruction, TokenInstruction

    # solana-py names the *Checked variants TRANSFER2, APPROVE2, ...; every other name is the same
    checked = {"TRANSFER2": "TRANSFER_CHECKED", "APPROVE2": "APPROVE_CHECKED", "MINT_TO2": "MINT_TO_CHECKED", "BURN2": "BURN_CHECKED"}
    for theirs in InstructionType:
        assert TokenInstruction[checked.get(theirs.name, theirs.name)] == theirs.value, theirs
    a, b, c = (Pubkey.new_unique() for _ in range(3))
    assert bytes(spl_instructions.create_associated_token_account(a, b, c).data) == b"", "spl's Create is the empty-data form"
    assert bytes(spl_instructions.create_idempotent_associated_token_account(a, b, c).data) == bytes([AssociatedTokenAccountInstruction.CREATE_IDEMPOTENT])
    for member, ix in (
        (ComputeBudgetInstruction.REQUEST_HEAP_FRAME, compute_budget.request_heap_frame(32 * 1024)),
        (ComputeBudgetInstruction.SET_COMPUTE_UNIT_LIMIT, compute_budget.set_compute_unit_limit(1)),
        (ComputeBudgetInstruction.SET_COMPUTE_UNIT_PRICE, compute_budget.set_compute_unit_price(1)),
        (ComputeBudgetInstruction.SET_LOADED_ACCOUNTS_DATA_SIZE_LIMIT, compute_budget.set_loaded_accounts_data_size_limit(1)),
    ):
        assert bytes(ix.data)[0] == member, member


def test_labels_are_the_rust_variant_names():
    from venue.instructions import LookupTableInstruction, SystemInstruction, TokenInstruction

    assert TokenInstruction.INITIALIZE_ACCOUNT2.label == "InitializeAccount2"
    assert TokenInstruction.UI_AMOUNT_TO_AMOUNT.label == "UiAmountToAmount"
    assert SystemInstruction.CREATE_ACCOUNT_WITH_SEED.label == "CreateAccountWithSeed"
    assert LookupTableInstruction.label_of(9) == "instruction 9" and SystemInstruction.label_of(None) == "instruction None"
