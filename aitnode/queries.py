"""The read side: what RPC answers about blocks, transactions and state.

Queries read the chain (through its Store API), the node-local tables and
the mempool; they never change anything.
"""

from aitnode import consensus as C, proofs
from aitnode.params import min_fee
from aitnode.state import StateView
from aitnode.tx import parse_tx


class Queries:
    def __init__(self, chain, mempool, local):
        self.chain = chain
        self.store = chain.store
        self.mempool = mempool
        self.local = local
        self.trees = proofs.TreeCache()

    def get_head(self):
        height, h = self.chain.head()
        fin = self.chain.finality()
        return {"height": height, "hash": h, "justified": fin.justified.to_json(), "finalized": fin.finalized.to_json()}

    # -- for clients that check what they are told (aitnode/proofs.py) -----
    def get_headers(self, start, limit=proofs.DEFAULT_HEADERS):
        return proofs.headers(self.chain, start, limit)

    def get_tx_proof(self, tx_hash):
        return proofs.tx_proof(self.chain, tx_hash, self.trees)

    def get_proof(self, ns, key, height=None):
        return proofs.state_proof(self.chain, ns, key, height)

    def get_authorities(self, height=None):
        """The authority set in effect for block height (the next block's by
        default; a past one while its undo data is kept), None if unknown."""
        head = self.chain.head()[0]
        if height is None or height == head + 1:
            view = self.chain.view()
            height = head + 1
        elif 1 <= height <= head and head - (height - 1) <= self.store.undo_depth():
            overlay, base = self.store.state_at(height - 1, tree=False)
            view = StateView(self.store, base=base, overlay=overlay)
        else:
            return None
        aset = C.set_of(view)
        epoch_length = view.param("epoch_length")
        view.release()
        return {"height": height, "epoch": (height - 1) // epoch_length, "quorum": aset.quorum,
                "authorities": [dict(m) for m in aset.members]}

    def get_block(self, ref, full=False):
        if type(ref) is int or (isinstance(ref, str) and ref.isdigit() and len(ref) < 21):
            block = self.store.block_at(int(ref))
        else:
            block = self.store.block_by_hash(ref)
        if block is None:
            return None
        out = dict(block["header"])
        out["hash"] = block["hash"]
        out["sig"] = block["sig"]
        if full:
            out["txs"] = [self.store.tx_record(h)["tx"] for h in block["txs"]]
            out["attestations"] = block.get("attestations", {})
        else:
            out["txs"] = list(block["txs"])
        out["votes"] = block.get("votes", [])
        out["evidence"] = block.get("evidence", [])
        if "authorities" in block:
            out["authorities"] = block["authorities"]
        return out

    def get_tx(self, tx_hash):
        rec = self.store.tx_record(tx_hash)
        if rec is not None:
            out = {
                "status": "included",
                "tx": rec["tx"],
                "block": {"height": rec["height"], "hash": rec["block"], "index": rec["index"]},
                "receipt": rec["result"],
            }
            if "attestation" in rec:
                out["attestation"] = rec["attestation"]
            out["finalized"] = rec["height"] <= self.chain.finality().finalized.height
            return out
        tx = self.mempool.get(tx_hash)
        if tx is not None:
            out = {"status": "pending", "tx": tx.to_wire()}
            att = self.mempool.attestation(tx_hash)
            if att is not None:
                out["attestation"] = att
            return out
        rec = self.local.failed_record(tx_hash)
        if rec is not None:
            return {"status": "failed", "tx": rec["tx"], "receipt": {"error": rec["error"]}}
        return None

    def get_balance(self, address):
        balance, nonce = self.chain.view().account(address)
        return {"balance": balance, "nonce": nonce}

    def get_receipt(self, receipt_id):
        rec = self.chain.view().get("rcpt", receipt_id)
        if rec is None:
            return None
        txrec = self.store.tx_record(rec["tx"])
        return {
            "receipt_id": receipt_id,
            "status": "included",
            "claim": txrec["tx"],
            "attestation": txrec.get("attestation"),
            "block": {"height": txrec["height"], "hash": txrec["block"]},
            "paid": rec,
        }

    def get_history(self, address, limit=50):
        """Included transactions touching address, newest first, with what
        the address gained or lost in each."""
        out = []
        for h in self.store.history(address, limit=limit):
            rec = self.store.tx_record(h)
            delta = sum(c["delta"] for c in rec["result"].get("changes", []) if c["address"] == address)
            out.append({
                "txHash": h, "height": rec["height"], "index": rec["index"], "type": rec["tx"]["type"],
                "sender": rec["tx"]["sender"], "payload": rec["tx"]["payload"], "fee": rec["tx"]["fee"],
                "delta": delta,
            })
        pending = [
            {"txHash": tx.hash, "status": "pending", "type": tx.type, "sender": tx.sender, "payload": tx.payload, "fee": tx.fee}
            for tx in self.mempool.by_sender.get(address, {}).values()
        ]
        return {"address": address, "txs": out, "pending": pending}

    def get_supply(self):
        supply = self.chain.view().get("chain", "supply")
        return dict(supply, total=sum(supply.values()))

    def get_params(self):
        return dict(self.chain.params())

    def estimate_fee(self, obj):
        """The least fee obj needs; its fee, nonce, pubkey and sig are optional."""
        if type(obj) is dict:
            obj = dict({"fee": 0, "nonce": 1}, **obj)
        tx = parse_tx(obj, self.chain.chain_id, require_sig=False)
        return min_fee(self.chain.params(), tx.type, tx.payload_size)
