"""Genesis, transaction rules, and building, checking and committing blocks.

Block header: {"chain_id", "parent", "height", "timestamp", "proposer",
"tx_root", "state_root"}; block hash = sha256(canonical(header)); the
proposer signs the 32 hash bytes.  Transactions of a block are applied in
order; the fees they pay are credited to the proposer after the last one.
"""

import json

from aitnode import crypto, params as P
from aitnode.encoding import U64, ZERO_HASH, canonical, is_hex, merkle_root, sha256_hex
from aitnode.errors import AitError, ConfigError
from aitnode.state import ACC_MOD, StateView, encode_tx_records, leaf_hash, root_of, run_steps

SLICE = 256  # transactions applied between two chances for the reactor to run
from aitnode.tx import AUTHORITY_TYPES, parse_tx, require_int

import re

_CHAIN_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")


# -- genesis ---------------------------------------------------------------

class Genesis:
    """A checked genesis document and the state and block it derives."""

    def __init__(self, doc):
        if type(doc) is not dict:
            raise AitError("bad_genesis", "genesis must be a JSON object")
        allowed = {"chain_id", "timestamp", "authorities", "accounts", "params"}
        for k in doc:
            if k not in allowed:
                raise AitError("bad_genesis", f"unknown genesis field {k!r}")
        chain_id = doc.get("chain_id")
        if type(chain_id) is not str or not _CHAIN_ID.match(chain_id):
            raise AitError("bad_genesis", "chain_id must be 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
        self.chain_id = chain_id
        self.timestamp = require_int(doc.get("timestamp"), "genesis timestamp")
        auths = doc.get("authorities")
        if type(auths) is not list or not auths:
            raise AitError("bad_genesis", "genesis needs at least one authority")
        self.authorities = []
        for a in auths:
            if type(a) is not dict or set(a) != {"address", "public_key"}:
                raise AitError("bad_genesis", "each authority is {\"address\", \"public_key\"}")
            crypto.check_address(a["address"], "authority address")
            pk = bytes.fromhex(a["public_key"]) if is_hex(a["public_key"], 32) else None
            if pk is None or pk.hex() != a["public_key"] or not crypto.pubkey_matches(pk, a["address"]):
                raise AitError("bad_genesis", f"authority {a['address']}: public_key does not match its address")
            self.authorities.append({"address": a["address"], "public_key": a["public_key"]})
        if len({a["address"] for a in self.authorities}) != len(self.authorities):
            raise AitError("bad_genesis", "an authority is listed twice")
        self.accounts = {}
        if type(doc.get("accounts", [])) is not list:
            raise AitError("bad_genesis", "genesis accounts must be a list")
        for acct in doc.get("accounts", []):
            if type(acct) is not dict or set(acct) != {"address", "balance"}:
                raise AitError("bad_genesis", "each account is {\"address\", \"balance\"}")
            crypto.check_address(acct["address"], "account address")
            if acct["address"] in self.accounts:
                raise AitError("bad_genesis", f"account {acct['address']} is listed twice")
            self.accounts[acct["address"]] = require_int(acct["balance"], "account balance")
        self.params = P.defaults_applied(doc.get("params", {}))
        self.supply = sum(self.accounts.values())
        if self.supply >= U64:
            raise AitError("bad_genesis", "total genesis balance must be below 2**64")
        self.doc = doc
        self.entries = self._entries()
        acc = 0
        for ns, key, value in self.entries:
            acc += leaf_hash(ns, key, value)
        self.acc = acc % ACC_MOD
        self.header = {
            "chain_id": self.chain_id,
            "parent": ZERO_HASH,
            "height": 0,
            "timestamp": self.timestamp,
            "proposer": "",
            "tx_root": ZERO_HASH,
            "state_root": root_of(self.acc),
        }
        self.hash = sha256_hex(canonical(self.header))

    def _entries(self):
        out = [("acct", addr, [bal, 0]) for addr, bal in sorted(self.accounts.items()) if bal]
        out += [("param", k, v) for k, v in sorted(self.params.items())]
        out.append(("chain", "authorities", self.authorities))
        out.append(("chain", "supply", new_supply(self.supply)))
        return out

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                doc = json.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read genesis {path}: {e.strerror}")
        except ValueError as e:
            raise ConfigError(f"genesis {path} is not valid JSON: {e}")
        try:
            return cls(doc)
        except AitError as e:
            raise ConfigError(f"genesis {path}: {e.message}")


def new_supply(genesis_total):
    return {"genesis": genesis_total, "faucet": 0, "receipts": 0, "coordinator": 0, "treasury": 0}


def make_genesis(chain_id, authorities, accounts=(), params=None, timestamp=0):
    """A genesis document (as written by `ait genesis`)."""
    return {
        "chain_id": chain_id,
        "timestamp": timestamp,
        "authorities": [{"address": k.address, "public_key": k.public_key.hex()} for k in authorities],
        "accounts": [{"address": a, "balance": b} for a, b in accounts],
        "params": dict(params or {}),
    }


# -- transaction rules -----------------------------------------------------

class BlockContext:
    """What a transaction sees of the block it is applied in."""

    def __init__(self, chain, view, proposer, height, timestamp):
        self.chain = chain
        self.view = view
        self.proposer = proposer
        self.height = height
        self.timestamp = timestamp
        self.params = view.params()
        self.fees = 0
        self.attestations = {}  # claim txHash -> coordinator attestation


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


def _require_authority(ctx, tx):
    if not ctx.chain.is_authority(tx.sender):
        raise AitError("not_authority", f"only an authority may send {tx.type}")


def _pay_fee_only(ctx, tx, bal, nonce):
    if bal < tx.fee:
        raise AitError("insufficient_balance", f"balance {bal} does not cover fee {tx.fee}")
    ctx.view.set_account(tx.sender, bal - tx.fee, nonce + 1)


def _apply_mint(ctx, tx, bal, nonce):
    _require_authority(ctx, tx)
    if not ctx.params.get("faucet"):
        raise AitError("faucet_disabled", "MINT is allowed only while genesis params.faucet is true")
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
    _require_authority(ctx, tx)
    _pay_fee_only(ctx, tx, bal, nonce)
    ctx.view.put("param", tx.payload["key"], tx.payload["value"])
    ctx.params[tx.payload["key"]] = tx.payload["value"]
    return {"param": {tx.payload["key"]: tx.payload["value"]}, "changes": _changes((tx.sender, -tx.fee))}


def _changes(*pairs):
    merged = {}
    for addr, delta in pairs:
        merged[addr] = merged.get(addr, 0) + delta
    return [{"address": a, "delta": d} for a, d in merged.items() if d]


EXECUTORS = {
    "TRANSFER": _apply_transfer,
    "MINT": _apply_mint,
    "PARAM_UPDATE": _apply_param_update,
}


def register_executor(ttype, fn):
    EXECUTORS[ttype] = fn


def check_nonce(tx, account_nonce):
    if tx.nonce <= account_nonce:
        raise AitError("nonce_too_low", f"nonce {tx.nonce} is used; the next is {account_nonce + 1}")
    if tx.nonce != account_nonce + 1:
        raise AitError("nonce_too_far_ahead", f"nonce {tx.nonce} is ahead; the next is {account_nonce + 1}")


def check_fee(tx, params):
    need = P.min_fee(params, tx.type, tx.payload_size)
    if tx.fee < need:
        raise AitError("fee_too_low", f"fee {tx.fee} is below the minimum {need}")


def apply_tx(ctx, tx):
    """Apply one transaction to ctx.view, or raise AitError and change nothing."""
    bal, nonce = ctx.view.account(tx.sender)
    check_nonce(tx, nonce)
    check_fee(tx, ctx.params)
    if tx.type in AUTHORITY_TYPES:
        _require_authority(ctx, tx)
    result = EXECUTORS[tx.type](ctx, tx, bal, nonce)
    ctx.fees += tx.fee
    result["fee"] = tx.fee
    return result


# -- blocks ----------------------------------------------------------------

def block_hash(header):
    return sha256_hex(canonical(header))


def tx_leaf(tx_hash, attestation=None):
    """A transaction's tx_root leaf input: its hash, or for a claim the
    hash of [txHash, attestation], so the block hash covers the attestation."""
    if attestation is None:
        return tx_hash
    return sha256_hex(canonical([tx_hash, attestation]))


def tx_root(tx_hashes, attestations=None):
    attestations = attestations or {}
    return merkle_root([tx_leaf(h, attestations.get(h)) for h in tx_hashes])


class Chain:
    """The chain on one Store: genesis, head, and block application."""

    def __init__(self, store, genesis):
        self.store = store
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self._params_at = None
        self._params = None
        self._init_or_check()
        self._authorities = {a["address"]: bytes.fromhex(a["public_key"]) for a in genesis.authorities}
        self.authority_list = [a["address"] for a in genesis.authorities]

    def _init_or_check(self):
        store, g = self.store, self.genesis
        if store.is_empty():
            view = StateView(store, acc=0)
            for ns, key, value in g.entries:
                view.put(ns, key, value)
            acc, changes = view.finish()
            assert acc == g.acc
            block = {"header": g.header, "hash": g.hash, "sig": "", "txs": []}
            store.commit_block(block, [], changes, acc, genesis_hash=g.hash)
            return
        have = store.meta("genesis_hash")
        if have != g.hash:
            raise ConfigError(
                f"data_dir {store.path} was made with another genesis ({have[:16]}..., "
                f"this genesis is {g.hash[:16]}...): point [node] data_dir at a new folder or use the matching genesis"
            )

    def params(self):
        """The params at the head (cached per head; do not mutate)."""
        head = self.store.head()
        if self._params_at != head:
            self._params = dict(self.store.entries("param"))
            self._params_at = head
        return self._params

    def is_authority(self, address):
        return address in self._authorities

    def head(self):
        return self.store.head()

    def head_header(self):
        height, h = self.store.head()
        return self.store.block_by_hash(h)["header"]

    def view(self):
        return StateView(self.store)

    def context(self, view, proposer, height, timestamp):
        return BlockContext(self, view, proposer, height, timestamp)

    def build_block(self, candidates, key, timestamp, max_txs=None, attestations=None):
        """Apply candidates in order on the head; keep those that apply.

        Returns (block, tx_records, view, failed) where failed maps the
        hash of each transaction left out to its AitError.
        """
        return run_steps(self.build_steps(candidates, key, timestamp, max_txs, attestations))

    def build_steps(self, candidates, key, timestamp, max_txs=None, attestations=None, slice_size=SLICE):
        """build_block as a generator yielding every slice_size transactions
        (run it with state.run_steps, or run_steps_async to keep the reactor
        answering while a large block is built)."""
        parent = self.head_header()
        height = parent["height"] + 1
        timestamp = max(timestamp, parent["timestamp"])
        view = self.view()
        ctx = self.context(view, key.address, height, timestamp)
        ctx.attestations = attestations or {}
        if max_txs is None:
            max_txs = ctx.params["max_block_txs"]
        included, records, failed = [], [], {}
        for n, tx in enumerate(candidates, 1):
            if len(included) >= max_txs:
                break
            if n % slice_size == 0:
                yield
            try:
                result = apply_tx(ctx, tx)
            except AitError as e:
                failed[tx.hash] = (tx, e)
                continue
            included.append(tx)
            records.append((tx, result))
        self._finish(ctx)
        yield from view.finish_steps(slice_size)
        hashes = [tx.hash for tx in included]
        atts = {h: ctx.attestations[h] for h in hashes if h in ctx.attestations}
        header = {
            "chain_id": self.chain_id,
            "parent": self.store.hash_at(parent["height"]),
            "height": height,
            "timestamp": timestamp,
            "proposer": key.address,
            "tx_root": tx_root(hashes, atts),
            "state_root": view.root(),
        }
        h = block_hash(header)
        block = {"header": header, "hash": h, "sig": key.sign(bytes.fromhex(h)).hex(), "txs": hashes, "attestations": atts}
        tx_records = self._tx_records(block, records)
        encoded = []
        for i in range(0, len(tx_records), slice_size):
            encoded += encode_tx_records(tx_records[i:i + slice_size])
            yield
        return block, encoded, view, failed

    def _finish(self, ctx):
        if ctx.fees:
            _credit(ctx.view, ctx.proposer, ctx.fees)

    @staticmethod
    def _tx_records(block, applied):
        height = block["header"]["height"]
        atts = block.get("attestations", {})
        out = []
        for i, (tx, result) in enumerate(applied):
            rec = {"tx": tx.to_wire(), "height": height, "block": block["hash"], "index": i, "result": result}
            if tx.hash in atts:
                rec["attestation"] = atts[tx.hash]
            out.append((tx.hash, rec))
        return out

    def verify_block(self, block, txs):
        """Check a block from elsewhere against the head; return what to commit.

        txs are parsed Transactions whose signatures the caller checked.
        Raises AitError("bad_block", ...) naming the first problem.
        """
        header = block.get("header")
        if type(header) is not dict or set(header) != {"chain_id", "parent", "height", "timestamp", "proposer", "tx_root", "state_root"}:
            raise AitError("bad_block", "block header fields are wrong")
        parent = self.head_header()
        head_height, head_hash = self.head()
        if header["chain_id"] != self.chain_id:
            raise AitError("bad_block", "block is for another chain")
        if header["parent"] != head_hash or header["height"] != head_height + 1:
            raise AitError("bad_block", "block does not extend the head")
        if type(header["timestamp"]) is not int or header["timestamp"] < parent["timestamp"]:
            raise AitError("bad_block", "block timestamp is before its parent's")
        h = block_hash(header)
        if block.get("hash") not in (None, h):
            raise AitError("bad_block", "block hash does not match its header")
        pk = self._authorities.get(header["proposer"])
        if pk is None:
            raise AitError("bad_block", "block proposer is not an authority")
        try:
            sig = bytes.fromhex(block["sig"])
        except (KeyError, TypeError, ValueError):
            raise AitError("bad_block", "block sig is not hex")
        if not crypto.verify(pk, sig, bytes.fromhex(h)):
            raise AitError("bad_block", "block signature is not the proposer's")
        if [tx.hash for tx in txs] != block.get("txs", [tx.hash for tx in txs]):
            raise AitError("bad_block", "block transaction list does not match")
        atts = block.get("attestations") or {}
        # Only a claim carries an attestation: nothing else rides in the block.
        if type(atts) is not dict or not set(atts) <= {tx.hash for tx in txs if tx.type == "RECEIPT_CLAIM"}:
            raise AitError("bad_block", "block attestations do not belong to its claims")
        if tx_root([tx.hash for tx in txs], atts) != header["tx_root"]:
            raise AitError("bad_block", "tx_root does not match the transactions")
        view = self.view()
        ctx = self.context(view, header["proposer"], header["height"], header["timestamp"])
        ctx.attestations = atts
        records = []
        for tx in txs:
            try:
                records.append((tx, apply_tx(ctx, tx)))
            except AitError as e:
                raise AitError("bad_block", f"transaction {tx.hash} is invalid: {e.message}")
        self._finish(ctx)
        if view.root() != header["state_root"]:
            raise AitError("bad_block", "state_root does not match the state after the block")
        out = {"header": header, "hash": h, "sig": block["sig"], "txs": [tx.hash for tx in txs], "attestations": atts}
        return out, self._tx_records(out, records), view

    def commit(self, block, tx_records, view):
        acc, changes = view.finish()
        view.release()
        self.store.commit_block(block, tx_records, changes, acc)

    def parse_stored_tx(self, wire):
        return parse_tx(wire, self.chain_id)
