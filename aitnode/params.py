"""Chain parameters: their defaults, their checks, and which may change.

Parameters live in the state (under the state root).  Genesis sets them;
a PARAM_UPDATE transaction from an authority changes an updatable one.
"""

from aitnode import crypto
from aitnode.encoding import U64, is_hex
from aitnode.errors import AitError

BPS = 10_000

# A block travels between peers in one frame (p2p.wire.MAX_MESSAGE), so its
# size (blocks.block_bytes) is bounded well below that: the largest value
# PARAM_UPDATE or genesis may set leaves 1 MiB for the block's header, its
# message envelope (blocks.ENTRY_OVERHEAD, 4 KiB, is what they take) and
# the rest of a get_blocks answer.  The smallest still holds more than
# twenty of the largest transactions (a claim with its attestation is under
# 3 KiB), so no transaction a node admits is too large for every block.
FRAME_BYTES = 16 * 1024 * 1024
MAX_BLOCK_BYTES = FRAME_BYTES - 1024 * 1024  # 15 MiB
MIN_BLOCK_BYTES = 64 * 1024
DEFAULT_MAX_BLOCK_BYTES = 8 * 1024 * 1024  # in force while max_block_bytes is unset


def _uint(minimum=0, maximum=U64 - 1):
    def check(name, value):
        if type(value) is not int or not minimum <= value <= maximum:
            raise AitError("bad_param", f"param {name} must be an integer in [{minimum}, {maximum}]")
    return check


def _bool(name, value):
    if type(value) is not bool:
        raise AitError("bad_param", f"param {name} must be true or false")


def _address(name, value):
    if type(value) is not str:
        raise AitError("bad_param", f"param {name} must be an address")
    crypto.check_address(value, f"params.{name}")


def _party(name, value):
    if type(value) is not dict or set(value) != {"address", "public_key"}:
        raise AitError("bad_param", f"param {name} must be {{\"address\", \"public_key\"}}")
    _address(name, value["address"])
    if not is_hex(value["public_key"], 32):
        raise AitError("bad_param", f"param {name}.public_key must be 64 lowercase hex characters")
    if not crypto.pubkey_matches(bytes.fromhex(value["public_key"]), value["address"]):
        raise AitError("bad_param", f"param {name}: public_key does not match address")


# name -> (default, updatable by PARAM_UPDATE, check)
SPEC = {
    "base_fee": (10, True, _uint()),
    "fee_per_byte": (1, True, _uint()),
    "mint_per_unit": (1000, True, _uint()),
    "coordinator_ratio_bps": (500, True, _uint(0, BPS)),
    "treasury_ratio_bps": (0, True, _uint(0, BPS)),
    "max_block_txs": (10_000, True, _uint(1, 100_000)),
    # Turns: the in-turn authority proposes block h once its timestamp (ms)
    # is this far past its parent's; the backup of rank r after 1 + 2r times.
    "block_interval_ms": (2000, True, _uint(10, 3_600_000)),
    # Authority updates apply at the end of each epoch of this many blocks.
    "epoch_length": (100, False, _uint(1, 1_000_000)),
    # Unset by default, so no genesis changes; DEFAULT_MAX_BLOCK_BYTES applies.
    "max_block_bytes": (None, True, _uint(MIN_BLOCK_BYTES, MAX_BLOCK_BYTES)),
    "faucet": (False, False, _bool),
    "escrow": (None, False, _address),
    "treasury": (None, False, _address),
    "coordinator": (None, False, _party),
}


def defaults_applied(given):
    """Genesis params with every left-out one at its default (None = unset)."""
    if type(given) is not dict:
        raise AitError("bad_param", "genesis params must be an object")
    for name in given:
        if name not in SPEC:
            raise AitError("bad_param", f"unknown param {name!r}; known: {', '.join(sorted(SPEC))}")
    out = {}
    for name, (default, _, check) in SPEC.items():
        value = given.get(name, default)
        if value is not None:
            check(name, value)
            out[name] = value
    return out


def check_update(key, value):
    """A PARAM_UPDATE payload's key and value must name an updatable param."""
    if type(key) is not str or key not in SPEC or not SPEC[key][1]:
        updatable = ", ".join(sorted(k for k, v in SPEC.items() if v[1]))
        raise AitError("bad_param", f"param {key!r} cannot be updated; updatable: {updatable}")
    SPEC[key][2](key, value)


def block_limits(params):
    """(most transactions, most bytes) of a block under params."""
    return params["max_block_txs"], params.get("max_block_bytes", DEFAULT_MAX_BLOCK_BYTES)


def min_fee(params, ttype, payload_size):
    """The least fee a transaction must carry.

    Authority transactions (MINT, PARAM_UPDATE, AUTHORITY_UPDATE) need no fee.
    """
    if ttype in ("MINT", "PARAM_UPDATE", "AUTHORITY_UPDATE"):
        return 0
    return params["base_fee"] + params["fee_per_byte"] * payload_size
