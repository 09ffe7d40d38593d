"""Genesis: the checked genesis document, and the state and block it derives."""

import re

from aitnode import crypto, params as P
from aitnode.encoding import U64, ZERO_HASH, canonical, is_hex, require_int, sha256_hex
from aitnode.errors import AitError, ConfigError, read_json_file
from aitnode.consensus import authorities_hash, genesis_set
from aitnode.jmt import root_of_entries

_CHAIN_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")


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
        self.members = genesis_set(self.authorities)
        self.entries = self._entries()
        self.header = {
            "chain_id": self.chain_id,
            "parent": ZERO_HASH,
            "height": 0,
            "timestamp": self.timestamp,
            "proposer": "",
            "tx_root": ZERO_HASH,
            "state_root": root_of_entries(self.entries).hex(),
            "votes_root": ZERO_HASH,
            "evidence_root": ZERO_HASH,
            "authorities_hash": authorities_hash(self.members),
        }
        self.hash = sha256_hex(canonical(self.header))

    def _entries(self):
        out = [("acct", addr, [bal, 0]) for addr, bal in sorted(self.accounts.items()) if bal]
        out += [("param", k, v) for k, v in sorted(self.params.items())]
        out.append(("chain", "authorities", self.members))
        out += [("authkey", a["address"], a["public_key"]) for a in self.authorities]
        out.append(("chain", "supply", new_supply(self.supply)))
        return out

    @classmethod
    def load(cls, path):
        doc = read_json_file(path, "genesis")
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
