"""What a light client checks of balances, transactions and receipts, each
against a block it verified (aitnode.light): state proofs against the
finalized block's state_root, transaction proofs against the tx_root of a
block linked to it.  Each verify_* returns what was proven and a list of
the checks made; anything that does not verify raises LightError.
"""

import urllib.parse

from aitnode import crypto, receipts as R
from aitnode.blocks import block_hash, tx_leaf
from aitnode.encoding import is_hex, verify_merkle_branch
from aitnode.errors import AitError
from aitnode.light import PAGE, LightError, NotYet, guard
from aitnode.tx import parse_tx


def header_at(client, height):
    """The header of block height at or below the verified finalized
    block, linked to it by parent hashes (one getHeaders page per 256)."""
    top = client.point
    if not 0 <= height <= top.height:
        raise LightError(f"block {height} is not finalized (finalized {top.height})")
    if height == top.height:
        return top.header
    first, prev, h = None, None, height
    while h <= top.height:
        entries = guard(lambda: client.fetch(f"/rpc/getHeaders?from={h}&limit={min(PAGE, top.height - h + 1)}")
                         ["headers"], "getHeaders")
        if not entries:
            raise LightError(f"node serves no header at height {h}")
        for e in entries[:top.height - h + 1]:
            header = e["header"]
            if type(header) is not dict or header.get("height") != h or (
                    prev is not None and header.get("parent") != prev):
                raise LightError(f"header {h} does not link block {height} to finalized block {top.height}")
            prev = guard(lambda: block_hash(header), "getHeaders")
            first = first or header
            h += 1
    if prev != top.hash:
        raise LightError(f"header {height} does not link to finalized block {top.height}")
    return first


def verify_balance(client, address):
    try:
        crypto.check_address(address)
    except AitError as e:
        raise LightError(e.message)
    point = client.point
    value = client.prove("acct", address, "balance")
    if value is None:
        balance, nonce = 0, 0
    elif type(value) is list and len(value) == 2 and all(type(x) is int for x in value):
        balance, nonce = value
    else:
        raise LightError(f"balance proof: acct/{address} holds no [balance, nonce]")
    return {"address": address, "balance": balance, "nonce": nonce, **_at(point), "checked": [
        f"headers followed to finalized block {point.height}",
        f"acct/{address} {'present' if value is not None else 'absent'} in its state (proof against state_root)"]}


def verify_tx(client, tx_hash):
    """The transaction's inclusion in a finalized block (its branch to the
    block's tx_root; the block linked to the verified finalized one)."""
    if not is_hex(tx_hash, 32):
        raise LightError("a transaction hash is 64 lowercase hex characters")
    answer = client.fetch(f"/rpc/getTxProof/{tx_hash}")
    return guard(lambda: _check_tx(client, tx_hash, answer), "getTxProof")


def _check_tx(client, tx_hash, answer):
    point = client.point
    height = answer["height"]
    if type(height) is not int or height > point.height:
        raise NotYet(f"tx {tx_hash}: its block {height} is not finalized (finalized {point.height})")
    header = header_at(client, height)
    if answer["block_hash"] != block_hash(header):
        raise LightError(f"tx proof names another block than block {height} of the verified chain")
    try:
        tx = parse_tx(answer["tx"], client.chain_id)
    except AitError as e:
        raise LightError(f"tx proof: {e.message}")
    if tx.hash != tx_hash:
        raise LightError(f"tx proof: the transaction served hashes to {tx.hash}, not {tx_hash}")
    attestation = answer.get("attestation") if tx.type == R.CLAIM else None
    leaf = tx_leaf(tx_hash, attestation)
    if answer["leaf"] != leaf:
        raise LightError(f"tx proof: its leaf is not the transaction's{' (with its attestation)' if attestation else ''}")
    if not verify_merkle_branch(leaf, answer["index"], answer["count"], answer["branch"], header["tx_root"]):
        raise LightError(f"tx proof does not match tx_root of block {height}")
    return {"tx_hash": tx_hash, "type": tx.type, "sender": tx.sender, "payload": tx.payload,
            "block": {"height": height, "hash": block_hash(header), "index": answer["index"]},
            "attestation": attestation, **_at(point), "checked": [
                f"headers followed to finalized block {point.height}",
                f"block {height} linked to it by parent hashes",
                f"tx {tx_hash} is leaf {answer['index']} of {answer['count']} of block {height}'s tx_root"
                + (" (with its attestation)" if attestation else "")]}


def verify_receipt(client, receipt_id):
    """A receipt: its record in the state, the claim's inclusion, the
    coordinator's attestation (its key proven in the state), the miner's
    signature, and its payment spent on this receipt and no other."""
    point = client.point
    quoted = urllib.parse.quote(receipt_id, safe="")
    record = client.prove("rcpt", receipt_id, "receipt")
    if record is None:
        raise NotYet(f"receipt {receipt_id!r} is not recorded at finalized block {point.height} "
                         "(absence proven)")
    out = guard(lambda: _check_receipt(client, receipt_id, record), "the receipt")
    out["checked"].insert(0, f"rcpt/{quoted} present in the state of finalized block {point.height}")
    return out


def _check_receipt(client, receipt_id, record):
    point = client.point
    tx = verify_tx(client, record["tx"])
    p = tx["payload"]
    if tx["type"] != R.CLAIM or p["receipt_id"] != receipt_id:
        raise LightError(f"receipt {receipt_id!r}: its transaction is not a claim of it")
    if tx["block"]["height"] != record["height"] or record["payment_tx"] != p["client_payment_tx"] or any(
            record[k] != p[v] for k, v in (("miner", "miner_addr"), ("client", "client_addr"), ("job_id", "job_id"),
                                           ("compute_units", "compute_units"), ("price", "price"))):
        raise LightError(f"receipt {receipt_id!r}: its record does not match the included claim")
    coordinator = client.prove("param", "coordinator", "coordinator key")
    if coordinator is None:
        raise LightError("this chain has no coordinator (param coordinator absent, proven)")
    try:
        R.check_attestation(tx["attestation"], p, {"coordinator": coordinator}, client.chain_id)
    except AitError as e:
        raise LightError(f"receipt {receipt_id!r}: attestation: {e.message}")
    pubkey = bytes.fromhex(p["miner_pubkey"])
    if not crypto.pubkey_matches(pubkey, p["miner_addr"]) or not crypto.verify(
            pubkey, bytes.fromhex(p["miner_sig"]), R.miner_sign_bytes(p, client.chain_id)):
        raise LightError(f"receipt {receipt_id!r}: miner_sig is not the miner's signature")
    pay = client.prove("pay", p["client_payment_tx"], "payment")
    if pay is None or pay["claimed"] != receipt_id:
        raise LightError(f"receipt {receipt_id!r}: its payment {p['client_payment_tx']} is not spent on it "
                         f"at finalized block {point.height}")
    checked = tx["checked"][1:] + [
        f"coordinator key {coordinator['address']} proven in the state (param/coordinator)",
        "the attestation is signed by that key and matches the claim",
        f"miner_sig is {p['miner_addr']}'s signature of the claim",
        f"pay/{p['client_payment_tx']} claimed by this receipt and no other (proof against state_root)",
    ]
    return {"receipt_id": receipt_id, "claim": tx["tx_hash"], "block": tx["block"], "miner": p["miner_addr"],
            "client": p["client_addr"], "mint": record["mint"], "miner_paid": record["miner_paid"],
            "payment_tx": p["client_payment_tx"], **_at(point),
            "checked": [f"headers followed to finalized block {point.height}"] + checked}


def _at(point):
    return {"finalized": {"height": point.height, "hash": point.hash}}
