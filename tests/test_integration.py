"""Integration tests: the real `twistd aitnode` in a subprocess, over HTTP.

Each test starts one or more node processes on loopback with
tests.procs.NodeProcess (ephemeral ports, a fresh folder per test) and
drives them with real HTTP requests.  Waits are bounded polls, never
sleeps that correctness depends on.
"""

import json
import os
import random
import signal

from twisted.trial import unittest

from tests.common import ALICE, AUTHORITY, BOB, CAROL, GENESIS_BALANCE, genesis_doc, key, transfer, wire
from tests.procs import NodeProcess, inline, many, sleep

SUPPLY = GENESIS_BALANCE + 10**6  # genesis_doc(): ALICE 10**12, BOB 10**6


class IntegrationTestCase(unittest.TestCase):
    timeout = 120

    def assertError(self, answer, status, code):
        got_status, body = answer
        self.assertEqual(got_status, status, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(set(body), {"error"}, body)
        self.assertEqual(body["error"]["code"], code, body)
        self.assertTrue(body["error"]["message"], body)

    async def send(self, node, tx):
        status, body = await node.post("/rpc/sendTx", wire(tx))
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"txHash": tx.hash})
        return tx.hash

    async def send_many(self, node, txs):
        status, body = await node.post("/rpc/sendTxs", [wire(tx) for tx in txs])
        self.assertEqual(status, 200, body)
        self.assertEqual(body["results"], [{"txHash": tx.hash} for tx in txs])
        return [tx.hash for tx in txs]

    async def balance(self, node, who):
        address = who.address if hasattr(who, "address") else who
        status, body = await node.get(f"/rpc/getBalance/{address}")
        self.assertEqual(status, 200, body)
        return body


class TransferTests(IntegrationTestCase):
    @inline
    async def test_blocks_and_transfer(self):
        """Blocks come; a signed transfer over HTTP moves balances exactly."""
        node = NodeProcess(self, interval=0.1)
        await node.start()
        head = await node.head()
        await node.wait_height(head["height"] + 2)

        tx = transfer(ALICE, 1, BOB, 12_345, fee=1_000)
        tx_hash = await self.send(node, tx)
        got = (await node.wait_included([tx_hash]))[tx_hash]
        self.assertEqual(got["status"], "included")
        self.assertEqual(got["tx"]["sender"], ALICE.address)
        height = got["block"]["height"]
        self.assertGreaterEqual(height, 1)

        status, block = await node.get(f"/rpc/getBlock/{height}")
        self.assertEqual(status, 200, block)
        self.assertEqual(block["hash"], got["block"]["hash"])
        self.assertEqual(block["proposer"], AUTHORITY.address)
        self.assertIn(tx_hash, block["txs"])

        self.assertEqual(await self.balance(node, ALICE), {"balance": GENESIS_BALANCE - 12_345 - 1_000, "nonce": 1})
        self.assertEqual(await self.balance(node, BOB), {"balance": 10**6 + 12_345, "nonce": 0})
        self.assertEqual(await self.balance(node, AUTHORITY), {"balance": 1_000, "nonce": 0})

        # and blocks keep coming after it
        await node.wait_height(height + 2)
        await node.stop()

    @inline
    async def test_admin_faucet_mint(self):
        """POST /admin/mintFaucet with the bearer token mints to an address."""
        node = NodeProcess(self, interval=0.1)
        await node.start()
        body = {"address": CAROL.address, "amount": 5_000}
        self.assertError(await node.post("/admin/mintFaucet", body), 401, "unauthorized")
        self.assertError(
            await node.post("/admin/mintFaucet", body, headers={"Authorization": "Bearer not-the-token-at-all"}),
            401, "unauthorized")
        status, answer = await node.admin("/admin/mintFaucet", body)
        self.assertEqual(status, 200, answer)
        got = (await node.wait_included([answer["txHash"]]))[answer["txHash"]]
        self.assertEqual(got["tx"]["type"], "MINT")
        self.assertEqual(got["tx"]["sender"], AUTHORITY.address)
        self.assertEqual(await self.balance(node, CAROL), {"balance": 5_000, "nonce": 0})

    @inline
    async def test_bad_inputs_get_4xx_and_blocks_continue(self):
        """Bad requests over real HTTP get their JSON 4xx; production goes on."""
        node = NodeProcess(self, interval=0.1, sections={"rpc": {"max_body_bytes": "1024"}})
        await node.start()
        head = await node.wait_height(1)

        self.assertError(await node.post("/rpc/sendTx", raw=b'{"type": "TRANSFER",'), 400, "malformed_json")
        self.assertError(await node.post("/rpc/sendTx", raw=b"\xff\xfe"), 400, "malformed_json")
        floaty = wire(transfer(ALICE, 1, BOB, 10))
        floaty["fee"] = 1000.0
        self.assertError(await node.post("/rpc/sendTx", floaty), 400, "float_not_allowed")
        self.assertError(await node.post("/rpc/sendTx", raw=b"[" + b"1," * 2000 + b"1]"), 413, "body_too_large")
        bad_sig = wire(transfer(ALICE, 1, BOB, 10))
        bad_sig["sig"] = wire(transfer(ALICE, 1, BOB, 11))["sig"]
        self.assertError(await node.post("/rpc/sendTx", bad_sig), 400, "bad_signature")
        self.assertError(await node.post("/rpc/sendTx", wire(transfer(ALICE, 5, BOB, 10))), 400, "nonce_too_far_ahead")
        self.assertError(await node.post("/rpc/sendTx", wire(transfer(ALICE, 1, BOB, 10, fee=1))), 400, "fee_too_low")
        self.assertError(await node.post("/rpc/sendTx", wire(transfer(ALICE, 1, BOB, 10, chain_id="ait-other"))),
                         400, "bad_signature")
        self.assertError(await node.get("/rpc/getBalance/ait1notanaddress"), 400, "bad_address")
        self.assertError(await node.get("/rpc/getTx/" + "ab" * 32), 404, "not_found")
        self.assertError(await node.get("/rpc/nowhere"), 404, "not_found")

        # the node still makes blocks and takes a good transaction
        await node.wait_height(head["height"] + 3)
        tx_hash = await self.send(node, transfer(ALICE, 1, BOB, 10))
        await node.wait_included([tx_hash])
        self.assertNotIn("Traceback", node.output)


class CrashTests(IntegrationTestCase):
    RECIPIENTS = [BOB, CAROL] + [key(n) for n in range(10, 15)]

    async def next_nonce(self, node, who):
        return (await self.balance(node, who))["nonce"] + 1

    async def statuses(self, node, tx_hashes):
        """{txHash: getTx answer or None when unknown}."""
        answers = await many([lambda h=h: node.get(f"/rpc/getTx/{h}") for h in tx_hashes])
        out = {}
        for h, (status, got) in zip(tx_hashes, answers):
            self.assertIn(status, (200, 404), got)
            out[h] = got if status == 200 else None
        return out

    async def block_hashes(self, node, top):
        answers = await many([lambda n=n: node.get(f"/rpc/getBlock/{n}") for n in range(top + 1)])
        for status, block in answers:
            self.assertEqual(status, 200, block)
        return {block["height"]: block["hash"] for _, block in answers}

    async def replay(self, node):
        """Walk every block from genesis: balances, nonces, fees and supply agree.

        No transaction may be pending here (so the balances cannot move
        while they are compared).  Returns (height walked to, nonces).
        """
        top = (await node.head())["height"]
        accounts = {a.address: 0 for a in [AUTHORITY, ALICE] + self.RECIPIENTS}
        accounts[ALICE.address] = GENESIS_BALANCE
        accounts[BOB.address] = 10**6
        nonces = {ALICE.address: 0, BOB.address: 0}
        fees = 0
        blocks = await many([lambda n=n: node.get(f"/rpc/getBlock/{n}?full=true") for n in range(top + 1)])
        parent = blocks[0][1]["hash"]
        for status, block in blocks[1:]:
            self.assertEqual(status, 200, block)
            self.assertEqual(block["parent"], parent)
            parent = block["hash"]
            for tx in block["txs"]:
                self.assertEqual(tx["type"], "TRANSFER")
                self.assertEqual(tx["nonce"], nonces[tx["sender"]] + 1)
                nonces[tx["sender"]] = tx["nonce"]
                amount = tx["payload"]["amount"]
                accounts[tx["sender"]] -= amount + tx["fee"]
                accounts[tx["payload"]["to"]] += amount
                accounts[block["proposer"]] += tx["fee"]
                fees += tx["fee"]
        self.assertEqual(sum(accounts.values()), SUPPLY)
        self.assertEqual(accounts[AUTHORITY.address], fees)
        balances = await many([lambda a=a: self.balance(node, a) for a in accounts])
        for (address, expected), got in zip(accounts.items(), balances):
            self.assertEqual(got, {"balance": expected, "nonce": nonces.get(address, 0)}, address)
        return top, nonces

    @inline
    async def test_sigkill_during_block_production_loses_nothing_committed(self):
        """kill -9 while blocks are being made; restart on the same data_dir.

        A stream of 300 transfers from two senders goes in while blocks
        come every 0.05 s; what a client saw committed is recorded; then a
        burst goes in and SIGKILL lands at a random moment while it is
        admitted and made into blocks.  After the restart every block up
        to the last head seen is the same, every transaction seen included
        is included in the same block, replaying the chain gives the
        balances served, and blocks and transactions keep coming.
        """
        node = NodeProcess(self, interval=0.05)
        await node.start()
        recipients = self.RECIPIENTS
        stream = []
        for i in range(240):
            stream.append(transfer(ALICE, 1 + i, recipients[i % len(recipients)], 1_000 + i))
            if i % 4 == 3:
                stream.append(transfer(BOB, 1 + i // 4, CAROL, 100))
        self.assertEqual(len(stream), 300)
        burst = [transfer(ALICE, 241 + i, recipients[i % len(recipients)], 7 + i) for i in range(300)]

        sent = []
        for start in range(0, len(stream), 50):
            sent += await self.send_many(node, stream[start:start + 50])
            await sleep(0.03)
        seen = await self.statuses(node, sent)
        included = {h: got["block"] for h, got in seen.items() if got["status"] == "included"}
        self.assertTrue(included)
        self.assertTrue(all(got["status"] in ("pending", "included") for got in seen.values()))
        head = await node.head()
        hashes = await self.block_hashes(node, head["height"])
        self.assertEqual(hashes[head["height"]], head["hash"])

        outcome = []
        d = node.post("/rpc/sendTxs", [wire(tx) for tx in burst], timeout=30)
        d.addBoth(outcome.append)  # answered, or cut off by the kill
        await sleep(random.uniform(0.0, 0.25))
        await node.stop(signal.SIGKILL)
        self.assertEqual(node.proto.exit_signal, signal.SIGKILL)
        await d

        await node.start()
        self.assertGreaterEqual((await node.head())["height"], head["height"])
        self.assertEqual(await self.block_hashes(node, head["height"]), hashes)
        after = await self.statuses(node, list(included))
        for h, where in included.items():
            self.assertEqual(after[h]["status"], "included", after[h])
            self.assertEqual(after[h]["block"], where)
        top, nonces = await self.replay(node)
        last_seen = max(t.nonce for t in stream if t.hash in included and t.sender == ALICE.address)
        self.assertGreaterEqual(nonces[ALICE.address], last_seen)
        self.assertLessEqual(nonces[ALICE.address], 540)

        await node.wait_height(top + 2)
        nxt = transfer(ALICE, nonces[ALICE.address] + 1, CAROL, 7)
        await node.wait_included([await self.send(node, nxt)])
        self.assertEqual((await self.balance(node, ALICE))["nonce"], nonces[ALICE.address] + 1)

    @inline
    async def test_sigkill_during_a_big_block_commits_all_or_nothing(self):
        """kill -9 while the node builds and commits a block of 900 transfers.

        900 transfers wait in a saved mempool (proposer paused, then
        SIGTERM); the node restarts proposing, restores them and builds
        one big block at its first tick, and SIGKILL lands around then.
        After the restart the block is there whole or not at all.
        """
        node = NodeProcess(self, interval=0.05)
        await node.start(env={"AITNODE_PROPOSER_INTERVAL": "1000"})
        burst = [transfer(ALICE, 1 + i, self.RECIPIENTS[i % len(self.RECIPIENTS)], 7 + i) for i in range(900)]
        await self.send_many(node, burst)
        await node.stop(signal.SIGTERM)
        self.assertIn("mempool of 900 saved", node.output)

        await node.start()  # proposes every 0.05 s: the first block takes them all
        self.assertIn("restored=900", node.output)
        await sleep(random.uniform(0.0, 0.15))
        await node.stop(signal.SIGKILL)
        self.assertEqual(node.proto.exit_signal, signal.SIGKILL)

        await node.start()
        got = await self.statuses(node, [burst[0].hash, burst[-1].hash])
        first, last = got[burst[0].hash], got[burst[-1].hash]
        top, nonces = await self.replay(node)
        if nonces[ALICE.address] == 900:
            self.assertEqual(first["status"], "included")
            self.assertEqual(last["status"], "included")
            self.assertEqual(last["block"]["hash"], first["block"]["hash"])
            self.assertEqual((first["block"]["index"], last["block"]["index"]), (0, 899))
        else:
            self.assertEqual(nonces[ALICE.address], 0)
            self.assertIsNone(first)
            self.assertIsNone(last)
        await node.wait_height(top + 2)

    @inline
    async def test_sigterm_saves_and_restores_mempool(self):
        """A graceful stop keeps pending transactions for the next start."""
        node = NodeProcess(self, interval=1000)  # the proposer never fires
        await node.start()
        pending = [await self.send(node, transfer(ALICE, n, BOB, 100 + n)) for n in range(1, 6)]
        pending.append(await self.send(node, transfer(BOB, 1, CAROL, 50)))
        for h in pending:
            status, got = await node.get(f"/rpc/getTx/{h}")
            self.assertEqual((status, got["status"]), (200, "pending"), got)
        self.assertEqual((await node.head())["height"], 0)
        await node.stop(signal.SIGTERM)
        self.assertIn("mempool of 6 saved", node.output)

        await node.start()
        self.assertIn("restored=6", node.output)
        self.assertEqual((await node.head())["height"], 0)
        for h in pending:
            status, got = await node.get(f"/rpc/getTx/{h}")
            self.assertEqual((status, got["status"]), (200, "pending"), got)
        await node.stop(signal.SIGTERM)

        # again, now proposing: they are included, with the right balances
        await node.start(env={"AITNODE_PROPOSER_INTERVAL": "0.2"})
        self.assertIn("restored=6", node.output)
        await node.wait_included(pending)
        self.assertEqual(await self.balance(node, ALICE),
                         {"balance": GENESIS_BALANCE - sum(100 + n for n in range(1, 6)) - 5 * 1_000, "nonce": 5})
        self.assertEqual(await self.balance(node, CAROL), {"balance": 50, "nonce": 0})
        await node.stop(signal.SIGTERM)
        self.assertIn("mempool of 0 saved", node.output)


class RefusalTests(IntegrationTestCase):
    async def assertRefuses(self, node, *words, env=None):
        code, output = await node.run_to_exit(env=env)
        self.assertNotEqual(code, 0, output)
        self.assertIsNotNone(code, output)
        lines = [line for line in output.splitlines() if line.startswith("aitnode: cannot start: ")]
        self.assertEqual(len(lines), 1, output)
        for word in words:
            self.assertIn(word, lines[0])
        self.assertNotIn("Traceback", output)
        self.assertNotIn("listening on", output)
        return lines[0]

    @inline
    async def test_unknown_config_key(self):
        node = NodeProcess(self, sections={"node": {"colour": "blue"}})
        await self.assertRefuses(node, "unknown key", "colour", "[node]")

    @inline
    async def test_unknown_config_section(self):
        node = NodeProcess(self, sections={"nodes": {"chain_id": "ait-test"}})
        await self.assertRefuses(node, "unknown section", "[nodes]")

    @inline
    async def test_unknown_environment_variable(self):
        node = NodeProcess(self)
        await self.assertRefuses(node, "AITNODE_PROPOSER_INTERVALL", env={"AITNODE_PROPOSER_INTERVALL": "1"})

    @inline
    async def test_missing_genesis(self):
        node = NodeProcess(self)
        os.remove(node.genesis_path)
        await self.assertRefuses(node, "genesis", node.genesis_path)

    @inline
    async def test_key_file_address_mismatch(self):
        node = NodeProcess(self)
        data = AUTHORITY.to_json()
        data["address"] = BOB.address
        with open(node.key_path, "w") as f:
            json.dump(data, f)
        await self.assertRefuses(node, "key file", "does not match")

    @inline
    async def test_data_dir_of_another_genesis(self):
        node = NodeProcess(self, interval=0.1)
        await node.start()
        await node.wait_height(1)
        await node.stop()
        node.write_genesis(genesis_doc(accounts=[(ALICE.address, 5)]))
        await self.assertRefuses(node, "another genesis", "data_dir")
        # with its own genesis back, the same data_dir starts again
        node.write_genesis(node.doc)
        await node.start()
        self.assertGreaterEqual((await node.head())["height"], 1)

    @inline
    async def test_chain_id_mismatch(self):
        node = NodeProcess(self, chain_id="ait-other")
        await self.assertRefuses(node, "chain_id", "ait-other", "ait-test")

    @inline
    async def test_bad_config_value(self):
        node = NodeProcess(self, sections={"proposer": {"interval": "soon"}})
        await self.assertRefuses(node, "proposer.interval", "soon")


class EnvironmentTests(IntegrationTestCase):
    @inline
    async def test_environment_overrides_the_file(self):
        """AITNODE_<SECTION>_<KEY> beats node.ini."""
        node = NodeProcess(self, interval=1000, sections={"rpc": {"max_body_bytes": "65536"}})
        await node.start(env={
            "AITNODE_PROPOSER_INTERVAL": "0.1",
            "AITNODE_RPC_MAX_BODY_BYTES": "200",
        })
        await node.wait_height(3)
        self.assertError(await node.post("/rpc/sendTx", wire(transfer(ALICE, 1, BOB, 10))), 413, "body_too_large")
        await node.stop()

        # without the overrides the file's values hold again
        await node.start()
        head = await node.head()
        await self.send(node, transfer(ALICE, 1, BOB, 10))
        await sleep(0.5)
        self.assertEqual((await node.head())["height"], head["height"])

    @inline
    async def test_node_without_key_serves_but_does_not_propose(self):
        """A node with no [node] key answers queries and makes no blocks."""
        node = NodeProcess(self, key=None, interval=0.05)
        await node.start()
        self.assertIn("proposer=False", node.output)
        status, balance = await node.get(f"/rpc/getBalance/{ALICE.address}")
        self.assertEqual((status, balance), (200, {"balance": GENESIS_BALANCE, "nonce": 0}))
        self.assertError(await node.admin("/admin/mintFaucet", {"address": BOB.address, "amount": 1}),
                         403, "not_authority")
        await sleep(0.3)
        self.assertEqual((await node.head())["height"], 0)
