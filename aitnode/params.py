"""Chain parameters: their defaults, their checks, and which may change.

Parameters live in the state (under the state root).  Genesis sets them;
a PARAM_UPDATE transaction from an authority changes an updatable one.
"""

from aitnode import crypto
from aitnode.encoding import U64, is_hex
from aitnode.errors import AitError

# name -> (default, updatable by PARAM_UPDATE, check)
BPS = 10_000


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


SPEC = {
    "base_fee": (10, True, _uint()),
    "fee_per_byte": (1, True, _uint()),
    "mint_per_unit": (1000, True, _uint()),
    "coordinator_ratio_bps": (500, True, _uint(0, BPS)),
    "treasury_ratio_bps": (0, True, _uint(0, BPS)),
    "max_block_txs": (10_000, True, _uint(1, 100_000)),
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


def min_fee(params, ttype, payload_size):
    """The least fee a transaction must carry.

    Authority transactions (MINT, PARAM_UPDATE) need no fee.
    """
    if ttype in ("MINT", "PARAM_UPDATE"):
        return 0
    return params["base_fee"] + params["fee_per_byte"] * payload_size
