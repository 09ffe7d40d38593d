"""Transaction rules: what each transaction type does to the state.

``apply_tx`` applies one transaction inside a block; ``check_admission``
holds every rule a transaction must meet to enter the mempool that does
not depend on the transactions before it.  Both share ``check_common``, so
admission and block building can never disagree on those rules.  One
table, ``EXECUTORS``, maps every type to its executor.
"""

from aitnode import consensus, params as P, receipts
from aitnode.encoding import U64
from aitnode.errors import AitError
from aitnode.tx import AUTHORITY_TYPES


class BlockContext:
    """What a transaction sees of the block it is applied in (or, for
    admission, of the block that would come next)."""

    def __init__(self, chain_id, view, authorities, proposer, height, timestamp, params=None, attestations=None):
        self.chain_id = chain_id
        self.view = view
        self.authorities = authorities  # addresses that may send AUTHORITY_TYPES
        self.proposer = proposer
        self.height = height
        self.timestamp = timestamp
        self.params = view.params() if params is None else dict(params)
        self.fees = 0
        self.attestations = attestations if attestations is not None else {}  # claim txHash -> attestation
        self.finality = None  # finality.Finality after the block's votes (consensus.begin_block)
        self.jailed = []  # authorities the block's evidence jails from the next block on


def _credit(view, address, amount):
    bal, nonce = view.account(address)
    if bal + amount >= U64:
        raise AitError("balance_overflow", f"{address} would hold 2**64 or more")
    view.set_account(address, bal + amount, nonce)


def _apply_transfer(ctx, tx, bal, nonce):
    view = ctx.view
    amount = tx.payload["amount"]
    to = tx.payload["to"]
    cost = amount + tx.fee
    if bal < cost:
        raise AitError("insufficient_balance", f"balance {bal} does not cover amount {amount} + fee {tx.fee}")
    if to != tx.sender:
        to_bal = view.account(to)[0]
        if to_bal + amount >= U64:
            raise AitError("balance_overflow", f"{to} would hold 2**64 or more")
    view.set_account(tx.sender, bal - cost, nonce + 1)
    _credit(view, to, amount)
    escrow = ctx.params.get("escrow")
    if to == escrow and tx.sender != escrow:
        # A payment into escrow that one compute receipt may later settle.
        view.put("pay", tx.hash, {"client": tx.sender, "amount": amount, "claimed": ""})
    return {"changes": _changes((tx.sender, -cost), (to, amount))}


def _pay_fee_only(ctx, tx, bal, nonce):
    if bal < tx.fee:
        raise AitError("insufficient_balance", f"balance {bal} does not cover fee {tx.fee}")
    ctx.view.set_account(tx.sender, bal - tx.fee, nonce + 1)


def _apply_mint(ctx, tx, bal, nonce):
    to, amount = tx.payload["to"], tx.payload["amount"]
    supply = ctx.view.get("chain", "supply")
    if sum(supply.values()) + amount >= U64:
        raise AitError("balance_overflow", "total supply would reach 2**64")
    if to != tx.sender and ctx.view.account(to)[0] + amount >= U64:
        raise AitError("balance_overflow", f"{to} would hold 2**64 or more")
    _pay_fee_only(ctx, tx, bal, nonce)
    _credit(ctx.view, to, amount)
    supply = dict(supply, faucet=supply["faucet"] + amount)
    ctx.view.put("chain", "supply", supply)
    return {"minted": amount, "changes": _changes((tx.sender, -tx.fee), (to, amount))}


def _apply_param_update(ctx, tx, bal, nonce):
    _pay_fee_only(ctx, tx, bal, nonce)
    ctx.view.put("param", tx.payload["key"], tx.payload["value"])
    ctx.params[tx.payload["key"]] = tx.payload["value"]
    return {"param": {tx.payload["key"]: tx.payload["value"]}, "changes": _changes((tx.sender, -tx.fee))}


def _changes(*pairs):
    merged = {}
    for addr, delta in pairs:
        merged[addr] = merged.get(addr, 0) + delta
    return [{"address": a, "delta": d} for a, d in merged.items() if d]


# Every transaction type and its executor(ctx, tx, balance, nonce) -> result.
EXECUTORS = {
    "TRANSFER": _apply_transfer,
    "MINT": _apply_mint,
    "PARAM_UPDATE": _apply_param_update,
    receipts.CLAIM: receipts.apply_claim,
    "AUTHORITY_UPDATE": consensus.apply_update,
}


def check_nonce(tx, account_nonce):
    if tx.nonce <= account_nonce:
        raise AitError("nonce_too_low", f"nonce {tx.nonce} is used; the next is {account_nonce + 1}")
    if tx.nonce != account_nonce + 1:
        raise AitError("nonce_too_far_ahead", f"nonce {tx.nonce} is ahead; the next is {account_nonce + 1}")


def check_fee(tx, params):
    need = P.min_fee(params, tx.type, tx.payload_size)
    if tx.fee < need:
        raise AitError("fee_too_low", f"fee {tx.fee} is below the minimum {need}")


def check_common(ctx, tx):
    """The rules of a transaction's own fields against the params and the
    authority set: the fee, who may send it, and the faucet switch."""
    check_fee(tx, ctx.params)
    if tx.type in AUTHORITY_TYPES and tx.sender not in ctx.authorities:
        raise AitError("not_authority", f"only an authority may send {tx.type}")
    if tx.type == "MINT" and not ctx.params.get("faucet"):
        raise AitError("faucet_disabled", "MINT is allowed only while genesis params.faucet is true")


def check_admission(ctx, tx):
    """Every rule tx must meet to enter the mempool that needs neither its
    nonce's predecessors nor a coordinator (a claim's attestation is checked
    by receipts.check_attestation once it is there)."""
    check_common(ctx, tx)
    if tx.type == receipts.CLAIM:
        receipts.check_claim_offline(ctx.view, tx, ctx.params, ctx.chain_id)
    elif tx.type == "AUTHORITY_UPDATE":
        consensus.check_update(ctx.view, tx)


def apply_tx(ctx, tx):
    """Apply one transaction to ctx.view, or raise AitError and change nothing."""
    bal, nonce = ctx.view.account(tx.sender)
    check_nonce(tx, nonce)
    check_common(ctx, tx)
    result = EXECUTORS[tx.type](ctx, tx, bal, nonce)
    ctx.fees += tx.fee
    result["fee"] = tx.fee
    return result


def finish_block(ctx):
    """Credit the block's fees to its proposer, after its last transaction."""
    if ctx.fees:
        _credit(ctx.view, ctx.proposer, ctx.fees)
