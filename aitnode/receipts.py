"""Compute receipts: RECEIPT_CLAIM, coordinator attestations, settlement.

A miner is paid, and AIT minted, only for compute the coordinator attests
was delivered and paid for.  The attestation travels in the block beside
the claim (it is part of the claim's tx_root leaf), so anyone holding the
chain checks every mint offline.  See docs/protocol.md, "Compute receipts".

State this module keeps (all under the state root):
  ("pay", txHash)      -> {"client", "amount", "claimed"}  every TRANSFER to escrow
  ("rcpt", receipt_id) -> what the claim did (see apply_claim)
"""

import collections

from aitnode import crypto
from aitnode.encoding import U64, canonical, check_value, is_hex, require_fields, require_int, require_text, sha256
from aitnode.errors import AitError
from aitnode.params import BPS

CLAIM = "RECEIPT_CLAIM"
CLAIM_FIELDS = (
    "receipt_id", "job_id", "client_addr", "miner_addr", "compute_units", "price",
    "output_hash", "client_payment_tx", "miner_pubkey", "miner_sig",
)
MINER_SIGNED = CLAIM_FIELDS[:8]
# The request names the claim's payment and the answer echoes it, so the
# coordinator attests that this payment, and no other, pays for this job.
REQUEST_FIELDS = ("receipt_id", "job_id", "client", "miner", "price", "compute_units", "output_hash",
                  "client_payment_tx")
ANSWER_FIELDS = REQUEST_FIELDS + ("exists", "paid", "not_double_spent", "coordinator", "sig")


# -- the payload -------------------------------------------------------

def _require_tx_hash(value, field):
    if type(value) is not str:
        raise AitError("wrong_type", f"{field} must be a hex string")
    if not is_hex(value, 32):
        raise AitError("bad_hex", f"{field} must be 64 lowercase hex characters")


# Bytes of UTF-8 (docs/protocol.md, RECEIPT_CLAIM and 10.4 Limits).
MAX_ID_BYTES = 128  # receipt_id, job_id
MAX_OUTPUT_HASH_BYTES = 256

# The job's fields, in the order of REQUEST_FIELDS, and their rules.
_JOB_RULES = (
    lambda v, f: require_text(v, f, MAX_ID_BYTES),  # receipt_id
    lambda v, f: require_text(v, f, MAX_ID_BYTES),  # job_id
    crypto.check_address,  # client
    crypto.check_address,  # miner
    require_int,  # price
    require_int,  # compute_units
    lambda v, f: require_text(v, f, MAX_OUTPUT_HASH_BYTES),  # output_hash
    _require_tx_hash,  # client_payment_tx
)
_CLAIM_JOB_KEYS = ("receipt_id", "job_id", "client_addr", "miner_addr", "price", "compute_units", "output_hash",
                   "client_payment_tx")


def _check_job_fields(obj, keys, where):
    for rule, key in zip(_JOB_RULES, keys):
        rule(obj[key], f"{where}{key}")


def check_attestation_request(request):
    """An attestation request (what a coordinator is asked) is well formed."""
    require_fields(request, REQUEST_FIELDS, "request")
    _check_job_fields(request, REQUEST_FIELDS, "")


def validate_claim_payload(p):
    require_fields(p, CLAIM_FIELDS, "payload")
    _check_job_fields(p, _CLAIM_JOB_KEYS, "payload.")
    if p["compute_units"] == 0:
        raise AitError("zero_compute_units", "compute_units must be greater than 0")
    for name, n in (("miner_pubkey", 32), ("miner_sig", 64)):
        if type(p[name]) is not str:
            raise AitError("wrong_type", f"payload.{name} must be a hex string")
        if not is_hex(p[name], n):
            raise AitError("bad_hex", f"payload.{name} must be {2 * n} lowercase hex characters")



def miner_sign_bytes(payload, chain_id):
    body = {k: payload[k] for k in MINER_SIGNED}
    body["chain_id"] = chain_id
    return sha256(canonical(body))


def sign_claim(miner_key, chain_id, **fields):
    """A claim payload signed by miner_key (fields: MINER_SIGNED)."""
    payload = {k: fields[k] for k in MINER_SIGNED}
    payload["miner_pubkey"] = miner_key.public_key.hex()
    payload["miner_sig"] = miner_key.sign(miner_sign_bytes(payload, chain_id)).hex()
    return payload


def attestation_request(payload):
    return {
        "receipt_id": payload["receipt_id"],
        "job_id": payload["job_id"],
        "client": payload["client_addr"],
        "miner": payload["miner_addr"],
        "price": payload["price"],
        "compute_units": payload["compute_units"],
        "output_hash": payload["output_hash"],
        "client_payment_tx": payload["client_payment_tx"],
    }


def attestation_sign_bytes(answer, chain_id):
    body = {k: v for k, v in answer.items() if k != "sig"}
    body["chain_id"] = chain_id
    return sha256(canonical(body))


def sign_attestation(coordinator_key, chain_id, request, exists=True, paid=True, not_double_spent=True):
    answer = dict(request, exists=exists, paid=paid, not_double_spent=not_double_spent,
                  coordinator=coordinator_key.address)
    answer["sig"] = coordinator_key.sign(attestation_sign_bytes(answer, chain_id)).hex()
    return answer


# -- verified signatures are remembered, so none is checked twice ----------

class _SigCache:
    def __init__(self, size=100_000):
        self.size = size
        self._ok = collections.OrderedDict()

    def verify(self, pubkey, sig, message):
        k = sha256(pubkey + sig + message)
        if k in self._ok:
            return True
        if not crypto.verify(pubkey, sig, message):
            return False
        self._ok[k] = None
        if len(self._ok) > self.size:
            self._ok.popitem(last=False)
        return True


SIGS = _SigCache()


# -- the rules ---------------------------------------------------------

def check_attestation(att, payload, params, chain_id):
    """The attestation must be the coordinator's, match the claim and say yes."""
    coord = params.get("coordinator")
    if coord is None:
        raise AitError("receipts_disabled", "this chain has no coordinator (genesis params.coordinator)")
    if type(att) is not dict:
        raise AitError("attestation_missing", "the claim has no attestation")
    if set(att) != set(ANSWER_FIELDS):
        if set(att) | {"client_payment_tx"} == set(ANSWER_FIELDS):
            raise AitError("attestation_wrong_payment",
                           f"the attestation names no payment; it must name the claim's client_payment_tx "
                           f"{payload['client_payment_tx']}")
        raise AitError("attestation_malformed", "the attestation's fields are not " + ", ".join(ANSWER_FIELDS))
    try:
        check_value(att, "attestation")
    except AitError as e:
        raise AitError("attestation_malformed", e.message)
    if att["coordinator"] != coord["address"]:
        raise AitError("attestation_wrong_coordinator", "the attestation is signed for another coordinator address")
    if not is_hex(att["sig"], 64):
        raise AitError("attestation_malformed", "attestation sig must be 128 lowercase hex characters")
    if not SIGS.verify(bytes.fromhex(coord["public_key"]), bytes.fromhex(att["sig"]), attestation_sign_bytes(att, chain_id)):
        raise AitError("attestation_bad_signature", "the attestation is not signed by the chain's coordinator key")
    if att["client_payment_tx"] != payload["client_payment_tx"]:
        raise AitError("attestation_wrong_payment",
                       f"the attestation names another payment than the claim's client_payment_tx "
                       f"{payload['client_payment_tx']}")
    # Compared as canonical bytes: in Python True == 1, but a `true` price
    # is not the claim's price 1 for any other implementation.
    if canonical({k: att[k] for k in REQUEST_FIELDS}) != canonical(attestation_request(payload)):
        raise AitError("attestation_mismatch", "the attestation does not match the claim's fields")
    if att["exists"] is not True:
        raise AitError("job_not_found", f"the coordinator does not know job {payload['job_id']!r}")
    if att["paid"] is not True:
        raise AitError("job_not_paid", f"the coordinator says job {payload['job_id']!r} is not paid")
    if att["not_double_spent"] is not True:
        raise AitError("job_double_spent", f"the coordinator says job {payload['job_id']!r} was already claimed")


def check_claim_offline(view, tx, params, chain_id):
    """Every rule a claim must meet that needs no coordinator.

    Returns the escrow deposit (payment record) the claim will use.
    """
    p = tx.payload
    if params.get("coordinator") is None or params.get("escrow") is None:
        raise AitError("receipts_disabled", "this chain has no coordinator or escrow (genesis params)")
    coord = params["coordinator"]["address"]
    if tx.sender not in (p["miner_addr"], coord):
        raise AitError("claim_sender_not_allowed", "a claim is sent by its miner or by the coordinator")
    pubkey = bytes.fromhex(p["miner_pubkey"])
    if not crypto.pubkey_matches(pubkey, p["miner_addr"]):
        raise AitError("miner_pubkey_mismatch", "miner_pubkey does not belong to miner_addr")
    if not SIGS.verify(pubkey, bytes.fromhex(p["miner_sig"]), miner_sign_bytes(p, chain_id)):
        raise AitError("bad_miner_signature", "miner_sig is not the miner's signature of the receipt")
    if view.get("rcpt", p["receipt_id"]) is not None:
        raise AitError("receipt_already_claimed", f"receipt {p['receipt_id']!r} was claimed before", status=409)
    pay = view.get("pay", p["client_payment_tx"])
    if pay is None:
        raise AitError("payment_not_found", "client_payment_tx is not an included TRANSFER to escrow")
    if pay["claimed"]:
        raise AitError("payment_already_used", f"client_payment_tx already paid for receipt {pay['claimed']!r}", status=409)
    if pay["client"] != p["client_addr"]:
        raise AitError("payment_wrong_client", "client_payment_tx was not sent by client_addr")
    if pay["amount"] < p["price"]:
        raise AitError("payment_too_small", f"client_payment_tx paid {pay['amount']}, less than price {p['price']}")
    if view.account(params["escrow"])[0] < p["price"]:
        raise AitError("escrow_insufficient", "escrow holds less than the price")
    return pay


def settlement(p, params):
    """What a claim pays: (mint, coordinator cut, treasury cut)."""
    mint = p["compute_units"] * params["mint_per_unit"]
    coord_cut = mint * params["coordinator_ratio_bps"] // BPS
    treasury_cut = mint * params["treasury_ratio_bps"] // BPS if params.get("treasury") else 0
    return mint, coord_cut, treasury_cut


def payout_to(p, params, address):
    """What a claim credits address (before any fee)."""
    mint, coord_cut, treasury_cut = settlement(p, params)
    total = 0
    if address == p["miner_addr"]:
        total += p["price"] + mint
    if address == params["coordinator"]["address"]:
        total += coord_cut
    if address == params.get("treasury"):
        total += treasury_cut
    return total


def apply_claim(ctx, tx, bal, nonce):
    """The RECEIPT_CLAIM executor (see rules.EXECUTORS)."""
    view, params, p = ctx.view, ctx.params, tx.payload
    att = ctx.attestations.get(tx.hash)
    pay = check_claim_offline(view, tx, params, ctx.chain_id)
    check_attestation(att, p, params, ctx.chain_id)
    mint, coord_cut, treasury_cut = settlement(p, params)
    escrow, miner = params["escrow"], p["miner_addr"]
    coord = params["coordinator"]["address"]
    treasury = params.get("treasury")
    supply = view.get("chain", "supply")
    new_supply = dict(supply, receipts=supply["receipts"] + mint,
                      coordinator=supply["coordinator"] + coord_cut,
                      treasury=supply["treasury"] + treasury_cut)
    if sum(new_supply.values()) >= U64:
        raise AitError("balance_overflow", "total supply would reach 2**64")
    # Work out every balance first; write only once all of it holds.
    deltas = collections.defaultdict(int)
    deltas[escrow] -= p["price"]
    deltas[miner] += p["price"] + mint
    deltas[coord] += coord_cut
    if treasury_cut:
        deltas[treasury] += treasury_cut
    deltas[tx.sender] -= tx.fee
    accounts = {}
    for addr, delta in deltas.items():
        b, n = view.account(addr)
        nb = b + delta
        if nb < 0:
            if addr == tx.sender:
                raise AitError("insufficient_balance", f"fee {tx.fee} is more than the sender has or the claim pays it")
            raise AitError("escrow_insufficient", "escrow holds less than the price")
        if nb >= U64:
            raise AitError("balance_overflow", f"{addr} would hold 2**64 or more")
        accounts[addr] = (nb, n + 1 if addr == tx.sender else n)
    if tx.sender not in accounts:
        accounts[tx.sender] = (bal, nonce + 1)
    for addr, (b, n) in accounts.items():
        view.set_account(addr, b, n)
    record = {
        "tx": tx.hash, "height": ctx.height, "job_id": p["job_id"], "client": p["client_addr"],
        "miner": miner, "compute_units": p["compute_units"], "price": p["price"],
        "payment_tx": p["client_payment_tx"], "mint": mint, "miner_paid": p["price"] + mint,
        "coordinator_cut": coord_cut, "treasury_cut": treasury_cut, "fee": tx.fee,
    }
    view.put("rcpt", p["receipt_id"], record)
    view.put("pay", p["client_payment_tx"], dict(pay, claimed=p["receipt_id"]))
    view.put("chain", "supply", new_supply)
    return {
        "receipt_id": p["receipt_id"], "minted": mint, "miner_paid": p["price"] + mint,
        "coordinator_cut": coord_cut, "treasury_cut": treasury_cut,
        "changes": [{"address": a, "delta": d} for a, d in deltas.items() if d],
    }


def pending_cost(tx):
    """What a pending claim takes from its sender's balance up front:
    nothing, as its fee comes out of what the claim pays (the miner) or
    the sender's balance (checked when the claim is applied)."""
    return 0


def unique_keys(tx):
    """Keys no two pending claims may share (see mempool.UNIQUE)."""
    p = tx.payload
    return [
        (("rcpt", p["receipt_id"]), "receipt_already_claimed", "a claim for this receipt is already pending"),
        (("pay", p["client_payment_tx"]), "payment_already_used", "a pending claim already uses this payment"),
    ]
