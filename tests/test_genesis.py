"""Tests for aitnode.genesis: the genesis document's checks and the block it derives."""

import copy
import json
import os

import cbor2

from twisted.trial.unittest import SynchronousTestCase

from aitnode.genesis import Genesis
from aitnode.encoding import ZERO_HASH
from aitnode.errors import AitError, ConfigError

from tests.common import ALICE, AUTHORITY, BOB, CHAIN_ID, GENESIS_BALANCE, genesis_doc, make_node, sha256_hex

T1 = 1_700_000_100


class GenesisValidationTests(SynchronousTestCase):
    def refused(self, doc, code="bad_genesis"):
        e = self.assertRaises(AitError, Genesis, doc)
        self.assertEqual(e.code, code)
        return e.message

    def test_valid(self):
        g = Genesis(genesis_doc())
        self.assertEqual(g.chain_id, CHAIN_ID)
        self.assertEqual(g.accounts, {ALICE.address: GENESIS_BALANCE, BOB.address: 10**6})
        self.assertEqual(g.supply, GENESIS_BALANCE + 10**6)
        self.assertEqual(g.authorities, [{"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex()}])
        # Left-out params take their defaults.
        self.assertEqual(g.params["base_fee"], 10)
        self.assertEqual(g.params["fee_per_byte"], 1)
        self.assertIs(g.params["faucet"], True)

    def test_bad_chain_id(self):
        for bad in ("", "Bad", "has space", "-lead", "x" * 65, 7, None, "ait\n"):
            doc = genesis_doc()
            doc["chain_id"] = bad
            self.assertIn("chain_id", self.refused(doc))

    def test_no_authorities(self):
        doc = genesis_doc()
        doc["authorities"] = []
        self.assertIn("authority", self.refused(doc))
        del doc["authorities"]
        self.refused(doc)

    def test_pubkey_address_mismatch(self):
        doc = genesis_doc()
        doc["authorities"] = [{"address": AUTHORITY.address, "public_key": ALICE.public_key.hex()}]
        self.assertIn("does not match", self.refused(doc))
        doc["authorities"] = [{"address": AUTHORITY.address, "public_key": AUTHORITY.public_key.hex().upper()}]
        self.refused(doc)

    def test_duplicate_authority(self):
        doc = genesis_doc(authorities=(AUTHORITY, AUTHORITY))
        self.assertIn("twice", self.refused(doc))

    def test_duplicate_account(self):
        doc = genesis_doc(accounts=[(ALICE.address, 5), (ALICE.address, 6)])
        self.assertIn("twice", self.refused(doc))

    def test_unknown_param(self):
        doc = genesis_doc()
        doc["params"]["block_reward"] = 5
        e = self.assertRaises(AitError, Genesis, doc)
        self.assertEqual(e.code, "bad_param")
        self.assertIn("block_reward", e.message)

    def test_bad_param_value(self):
        doc = genesis_doc(base_fee=-1)
        self.assertEqual(self.assertRaises(AitError, Genesis, doc).code, "bad_param")

    def test_unknown_field(self):
        doc = genesis_doc()
        doc["extra"] = 1
        self.assertIn("extra", self.refused(doc))

    def test_bad_balance(self):
        doc = genesis_doc(accounts=[(ALICE.address, 1.5)])
        self.assertEqual(self.assertRaises(AitError, Genesis, doc).code, "float_not_allowed")
        doc = genesis_doc(accounts=[(ALICE.address, 2**63), (BOB.address, 2**63)])
        self.refused(doc)

    def test_load_gives_config_error(self):
        path = os.path.abspath(self.mktemp())
        doc = genesis_doc()
        doc["chain_id"] = "BAD"
        with open(path, "w") as f:
            json.dump(doc, f)
        e = self.assertRaises(ConfigError, Genesis.load, path)
        self.assertIn(path, str(e))
        self.assertIn("chain_id", str(e))
        with open(path, "w") as f:
            f.write("{")
        self.assertRaises(ConfigError, Genesis.load, path)
        self.assertRaises(ConfigError, Genesis.load, path + ".missing")


class GenesisBlockTests(SynchronousTestCase):
    def test_deterministic(self):
        doc = genesis_doc()
        a, b = Genesis(doc), Genesis(copy.deepcopy(doc))
        self.assertEqual(a.hash, b.hash)
        self.assertEqual(a.header, b.header)
        self.assertEqual(a.header["parent"], ZERO_HASH)
        self.assertEqual(a.header["parent"], "0" * 64)
        self.assertEqual(a.header["height"], 0)
        self.assertEqual(a.header["tx_root"], ZERO_HASH)
        self.assertEqual(a.header["timestamp"], 0)
        self.assertEqual(a.header["chain_id"], CHAIN_ID)
        self.assertEqual(a.hash, sha256_hex(cbor2.dumps(a.header, canonical=True)))
        # Account order in the document does not matter.
        doc2 = copy.deepcopy(doc)
        doc2["accounts"].reverse()
        self.assertEqual(Genesis(doc2).hash, a.hash)
        # Any change does.
        self.assertNotEqual(Genesis(genesis_doc(base_fee=11)).hash, a.hash)
        self.assertNotEqual(Genesis(genesis_doc(accounts=[(ALICE.address, 5)])).hash, a.hash)

    def test_two_nodes_same_genesis_block(self):
        n1, n2 = make_node(self), make_node(self)
        self.assertEqual(n1.chain.head(), (0, Genesis(genesis_doc()).hash))
        self.assertEqual(n1.queries.get_head(), n2.queries.get_head())
        self.assertEqual(n1.store.block_at(0), n2.store.block_at(0))
