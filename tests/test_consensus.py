"""Tests for aitnode.consensus and the fork choice of chain.reorganise_steps:
the authority set as state, AUTHORITY_UPDATE, turns, the set a block
carries, evidence and jailing, and which branch wins.

Blocks are built at the chain level (Builder): each by the authority
whose turn comes first unless a test names another, with the votes of
the authorities a test lists for the head.
"""

from twisted.trial.unittest import SynchronousTestCase

from aitnode import consensus as C, evidence as E, finality as F
from aitnode.blocks import block_hash
from aitnode.errors import AitError
from aitnode.steps import run_steps
from aitnode.tx import parse_tx, sign_tx

from tests.common import CHAIN_ID, genesis_doc, key, make_node

KEYS = [key(60 + i) for i in range(4)]
A0, A1, A2, A3 = KEYS
X = key(70)  # not an authority at genesis
INTERVAL = 10  # genesis_doc's block_interval_ms
EPOCH = 4


def doc(keys=KEYS, **params):
    p = {"epoch_length": EPOCH}
    p.update(params)
    return genesis_doc(authorities=keys, **p)


def update(sender, nonce, action, who):
    return sign_tx(sender, CHAIN_ID, "AUTHORITY_UPDATE", nonce, 0,
                   {"action": action, "address": who.address, "public_key": who.public_key.hex()})


class Builder:
    """Builds and commits blocks on a node's chain (chain level: no
    pipeline, no ballot), remembering each block's transactions."""

    def __init__(self, node, keys=KEYS + [X]):
        self.node = node
        self.chain = node.chain
        self.by_address = {k.address: k for k in keys}
        self.txs = {}  # block hash -> its Transactions
        self.failed = {}

    def in_turn(self):
        """The key of the authority in turn for the next block."""
        aset = self.chain.authority_set()
        height = self.chain.head()[0] + 1
        return self.by_address[aset.active[height % len(aset.active)]]

    def votes(self, voters):
        """Wire votes of voters for the head, with its justified block as source."""
        height, head = self.chain.head()
        source = self.chain.finality().justified
        return F.block_votes([F.sign_vote(k, CHAIN_ID, height, head, source.height, source.hash) for k in voters])

    def block(self, txs=(), by=None, voters=(), evidence=()):
        by = by or self.in_turn()
        parent = self.chain.head_header()
        votes = self.votes(voters)
        block, records, view, failed = run_steps(self.chain.build_steps(
            list(txs), by, parent["timestamp"], votes=votes, evidence=list(evidence)))
        assert block["votes"] == votes, "the builder dropped the votes"
        assert block["evidence"] == list(evidence), "the builder dropped the evidence"
        self.chain.commit(block, records, view)
        self.failed = {h: e.code for h, (tx, e) in failed.items()}
        self.txs[block["hash"]] = [tx for tx in txs if tx.hash in block["txs"]]
        return block

    def dry(self, by=None, votes=(), evidence=()):
        """The block build_steps makes on the head, not committed."""
        block, _, view, _ = run_steps(self.chain.build_steps(
            [], by or self.in_turn(), 0, votes=list(votes), evidence=list(evidence)))
        view.release()
        return block

    def blocks(self, n, voters=()):
        """n blocks, each carrying the votes of voters for its parent."""
        return [self.block(voters=voters if self.chain.head()[0] else ()) for _ in range(n)]

    def entries(self, start):
        """[(block, txs)] of the blocks above height start, for another node."""
        out = []
        for h in range(start + 1, self.chain.head()[0] + 1):
            block = self.chain.store.block_at(h)
            out.append((block, self.txs.get(block["hash"], [])))
        return out

    def members(self):
        return self.chain.view().get("chain", "authorities")


def copy_to(builder, other, start=0):
    """Import builder's blocks above start into the node other (verify + commit)."""
    for block, txs in builder.entries(start):
        checked, records, view = other.chain.verify_block(block, txs)
        other.chain.commit(checked, records, view)


def resign(block, signer, **changes):
    """block with header fields changed and signed again by signer."""
    header = dict(block["header"], **changes)
    h = block_hash(header)
    return dict(block, header=header, hash=h, sig=signer.sign(bytes.fromhex(h)).hex())


def double_proposal(chain, signer, height):
    """Evidence wire of signer's block at height and a second header there."""
    block = chain.store.block_at(height)
    assert block["header"]["proposer"] == signer.address
    other = resign(block, signer, timestamp=block["header"]["timestamp"] + 1)
    return E.proposal_evidence(block["header"], block["sig"], other["header"], other["sig"]).to_wire()


# -- the set and its turns --------------------------------------------------------

class AuthoritySetTests(SynchronousTestCase):
    def members(self, jailed=()):
        return [{"address": k.address, "public_key": k.public_key.hex(), "jailed": k in jailed} for k in KEYS]

    def test_turns(self):
        aset = C.AuthoritySet(self.members())
        for height in range(1, 9):
            for i, k in enumerate(KEYS):
                r = (i - height) % 4
                self.assertEqual(aset.rank(k.address, height), r)
                self.assertEqual(aset.earliest(k.address, height, 5000, 1000), 5000 + 1000 * (1 + 2 * r))
        self.assertIsNone(aset.rank(X.address, 1))
        self.assertIsNone(aset.earliest(X.address, 1, 0, 1000))
        self.assertEqual(aset.quorum, 3)

    def test_jailed_have_no_turn_and_the_rotation_closes_up(self):
        aset = C.AuthoritySet(self.members(jailed=[A1]))
        self.assertEqual(aset.active, [A0.address, A2.address, A3.address])
        self.assertEqual(aset.jailed, {A1.address})
        self.assertIsNone(aset.earliest(A1.address, 5, 0, 1000))
        # Height 5: index 5 mod 3 = 2 of the active ones (A3) is in turn, A0 next.
        self.assertEqual([aset.rank(k.address, 5) for k in (A3, A0, A2)], [0, 1, 2])
        self.assertEqual(aset.quorum, 3)
        self.assertIn(A1.address, aset.keys)  # still an authority (its key checks its evidence)

    def test_quorum_counts_the_active(self):
        for n, q in ((1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (7, 5), (10, 7)):
            members = [{"address": key(80 + i).address, "public_key": key(80 + i).public_key.hex(), "jailed": False}
                       for i in range(n)]
            self.assertEqual(C.AuthoritySet(members).quorum, q, n)
            members.append({"address": X.address, "public_key": X.public_key.hex(), "jailed": True})
            self.assertEqual(C.AuthoritySet(members).quorum, q, n)

    def test_hash_covers_every_member_and_flag(self):
        plain = C.AuthoritySet(self.members()).hash
        self.assertNotEqual(C.AuthoritySet(self.members(jailed=[A2])).hash, plain)
        self.assertNotEqual(C.AuthoritySet(self.members()[::-1]).hash, plain)
        self.assertNotEqual(C.AuthoritySet(self.members()[:3]).hash, plain)
        self.assertEqual(C.AuthoritySet(self.members()).hash, C.authorities_hash(self.members()))


class ChainTestBase(SynchronousTestCase):
    genesis = None

    def setUp(self):
        self.node = make_node(self, doc=self.genesis or doc(), key=A0)
        self.chain = self.node.chain
        self.b = Builder(self.node)

    def other(self):
        """A second node on the same genesis."""
        return make_node(self, doc=self.genesis or doc(), key=None)

    def refused(self, block, txs=(), other=None, message=None):
        """verify_block on a node holding this chain up to block's parent refuses block."""
        with self.assertRaises(AitError) as e:
            (other or self.node).chain.verify_block(block, list(txs))
        self.assertEqual(e.exception.code, "bad_block")
        if message:
            self.assertIn(message, e.exception.message)
        return e.exception.message


# -- turns and the consensus fields, enforced at import ---------------------------------

class TurnTests(ChainTestBase):
    def setUp(self):
        super().setUp()
        self.b.blocks(2)
        self.follower = self.other()
        copy_to(self.b, self.follower)
        self.parent = self.chain.head_header()

    def built_by(self, k):
        """A block at the next height built by k (a third node's copy of the chain, so ours stays at the head)."""
        node = self.other()
        copy_to(self.b, node)
        return Builder(node).block(by=k)

    def test_in_turn_at_one_interval_backups_later(self):
        height = self.parent["height"] + 1
        for r in range(4):
            k = KEYS[(height + r) % 4]
            block = self.built_by(k)
            self.assertEqual(block["header"]["timestamp"], self.parent["timestamp"] + INTERVAL * (1 + 2 * r))
            self.follower.chain.verify_block(block, [])  # accepted
            early = resign(block, k, timestamp=block["header"]["timestamp"] - 1)
            self.refused(early, other=self.follower, message="before its proposer's turn")

    def test_proposer_no_authority_refused(self):
        block = resign(self.built_by(A0), X, proposer=X.address)
        self.refused(block, other=self.follower, message="not an authority")

    def test_wrong_authorities_hash_refused(self):
        k = self.b.in_turn()
        block = resign(self.built_by(k), k, authorities_hash="00" * 32)
        self.refused(block, other=self.follower, message="authorities_hash")

    def test_build_refuses_a_non_authority(self):
        with self.assertRaises(AitError) as e:
            self.b.block(by=X)
        self.assertEqual(e.exception.code, "not_authority")


class CarriedSetTests(ChainTestBase):
    def test_first_block_of_each_epoch_carries_the_set(self):
        blocks = self.b.blocks(2 * EPOCH + 1)
        members = self.b.members()
        for block in blocks:
            h = block["header"]["height"]
            if (h - 1) % EPOCH == 0:
                self.assertEqual(block["authorities"], members, h)
            else:
                self.assertNotIn("authorities", block, h)
            self.assertEqual(block["header"]["authorities_hash"], C.authorities_hash(members))
        follower = self.other()
        copy_to(self.b, follower)  # every one of them verifies
        self.assertEqual(follower.chain.head(), self.chain.head())

    def test_a_block_without_the_set_it_must_carry_refused(self):
        self.b.blocks(EPOCH)
        follower = self.other()
        copy_to(self.b, follower)
        block = self.b.block()  # the first of epoch 2
        self.assertIn("authorities", block)
        self.refused({k: v for k, v in block.items() if k != "authorities"}, other=follower, message="carry")
        wrong = [dict(m, jailed=True) if m["address"] == A1.address else m for m in block["authorities"]]
        self.refused(dict(block, authorities=wrong), other=follower, message="carry")
        follower.chain.verify_block(block, [])

    def test_a_block_carrying_a_set_it_need_not_refused(self):
        self.b.blocks(2)
        follower = self.other()
        copy_to(self.b, follower)
        block = self.b.block()
        self.assertNotIn("authorities", block)
        self.refused(dict(block, authorities=self.b.members()), other=follower, message="need not")


# -- evidence and jailing ----------------------------------------------------------------

class JailingTests(ChainTestBase):
    def jail(self, who=A3):
        """A block by `who`, then one carrying evidence of a second header
        at its height; returns the evidence block's height."""
        self.b.blocks(1)
        mine = self.b.block(by=who)
        ev = double_proposal(self.chain, who, mine["header"]["height"])
        block = self.b.block(by=A0, evidence=[ev])
        return block["header"]["height"]

    def test_jailed_from_the_next_block_on(self):
        j = self.jail(A3)
        view = self.chain.view()
        self.assertEqual(C.set_of(view).jailed, {A3.address})
        self.assertEqual(C.parent_set_of(view, j + 1).jailed, frozenset())  # block j's own set
        view.release()
        records = [v for _, v in self.node.store.entries("evid")]
        self.assertEqual(records, [{"height": j, "offender": A3.address, "offence": E.DOUBLE_PROPOSAL}])
        with self.assertRaises(AitError) as e:
            self.b.block(by=A3)
        self.assertEqual(e.exception.code, "not_authority")
        # Block j + 1 carries the votes for block j, whose set had A3
        # unjailed: its vote counts there.  And it carries the new set.
        follower = self.other()
        copy_to(self.b, follower)
        block = self.b.block(voters=KEYS)
        self.assertEqual(len(block["votes"]), 4)
        self.assertEqual(self.chain.finality().justified.height, j)
        self.assertEqual([m["jailed"] for m in block["authorities"]], [False, False, False, True])
        self.assertEqual(block["header"]["authorities_hash"], C.authorities_hash(block["authorities"]))
        follower.chain.commit(*follower.chain.verify_block(block, []))
        # From block j + 2 on (votes for j + 1), A3's vote does not count:
        # the builder leaves a list holding it out, a block carrying it is refused.
        four = self.b.votes(KEYS)
        self.assertEqual(self.b.dry(votes=four)["votes"], [])
        mine = Builder(follower).block(voters=(A0, A1, A2))
        signer = self.b.by_address[mine["header"]["proposer"]]
        self.refused(resign(dict(mine, votes=four), signer, votes_root=F.votes_root(four)), message="4 votes for 3")
        three = self.b.votes((A0, A1, A3))
        self.refused(resign(dict(mine, votes=three), signer, votes_root=F.votes_root(three)),
                     message="not a non-jailed authority")
        # The three active are a quorum (q = 3 of 3).
        self.assertEqual(follower.chain.finality().justified.height, j + 1)

    def test_evidence_recorded_once(self):
        j = self.jail(A3)
        ev = self.chain.store.block_at(j)["evidence"][0]
        follower = self.other()
        copy_to(self.b, follower)
        self.assertEqual(self.b.dry(evidence=[ev])["evidence"], [])  # the builder leaves it out
        block = Builder(follower).block()
        forged = resign(dict(block, evidence=[ev]), self.b.by_address[block["header"]["proposer"]],
                        evidence_root=E.evidence_root([ev]))
        self.refused(forged, message="recorded already")

    def test_the_last_active_authority_is_never_jailed(self):
        node = make_node(self, doc=doc(keys=[A0]), key=A0)
        b = Builder(node)
        b.blocks(2)
        ev = double_proposal(node.chain, A0, 2)
        b.block(evidence=[ev])
        self.assertEqual(C.set_of(node.chain.view()).jailed, frozenset())
        self.assertEqual(len(list(node.store.entries("evid"))), 1)  # recorded all the same


# -- AUTHORITY_UPDATE ----------------------------------------------------------------------

class UpdatePayloadTests(SynchronousTestCase):
    def refused(self, payload, code):
        wire = sign_tx(A0, CHAIN_ID, "AUTHORITY_UPDATE", 1, 0, payload).to_wire()
        with self.assertRaises(AitError) as e:
            parse_tx(wire, CHAIN_ID)
        self.assertEqual(e.exception.code, code, e.exception.message)

    def test_good(self):
        for action in C.ACTIONS:
            tx = update(A0, 1, action, X)
            self.assertEqual(parse_tx(tx.to_wire(), CHAIN_ID).payload["action"], action)

    def test_refusals(self):
        good = {"action": "add", "address": X.address, "public_key": X.public_key.hex()}
        self.refused(dict(good, action="promote"), "bad_authority_update")
        self.refused(dict(good, action=1), "bad_authority_update")
        self.refused(dict(good, public_key=A1.public_key.hex()), "pubkey_mismatch")
        self.refused(dict(good, public_key=X.public_key.hex().upper()), "bad_hex")
        self.refused(dict(good, public_key=X.public_key.hex()[:62]), "bad_hex")
        self.refused(dict(good, address="ait1nope"), "bad_address")
        self.refused({k: v for k, v in good.items() if k != "public_key"}, "missing_field")
        self.refused(dict(good, extra=1), "unknown_field")


class AuthorityUpdateTests(ChainTestBase):
    def apply(self, *txs, voters=()):
        """One block holding txs; {hash: code} of those refused."""
        self.b.block(txs, voters=voters)
        return self.b.failed

    def to_epoch_end(self):
        while self.chain.head()[0] % EPOCH:
            self.b.block()

    def addresses(self):
        return [m["address"] for m in self.b.members()]

    def test_add_applies_at_the_epoch_end_once_a_quorum_approved(self):
        self.b.block()  # height 1
        self.assertEqual(self.apply(update(A0, 1, "add", X), update(A1, 1, "add", X)), {})
        self.assertEqual(self.node.queries.get_authorities()["authorities"], self.b.members())
        self.to_epoch_end()  # two approvals of four (q = 3): pending
        self.assertEqual(self.addresses(), [k.address for k in KEYS])
        cid = C.change_id({"action": "add", "address": X.address, "public_key": X.public_key.hex()})
        self.assertEqual(self.chain.view().get("chain", "pending_updates"), [cid])
        self.assertEqual(self.chain.view().get("authupd", cid)["approvers"], sorted([A0.address, A1.address]))
        self.assertEqual(self.apply(update(A2, 1, "add", X)), {})  # the third, in epoch 2
        h = self.chain.head()[0]
        self.assertEqual(self.addresses(), [k.address for k in KEYS])  # not before the epoch ends
        self.to_epoch_end()
        end = self.chain.head()[0]
        self.assertEqual(end, 2 * EPOCH)
        self.assertGreater(end, h)
        self.assertEqual(self.addresses(), [k.address for k in KEYS] + [X.address])
        self.assertIsNone(self.chain.view().get("chain", "pending_updates"))
        self.assertIsNone(self.chain.view().get("authupd", cid))
        # Block `end` itself was made by the old set; the next carries the new one.
        self.assertEqual(self.chain.store.block_at(end)["header"]["authorities_hash"],
                         C.authorities_hash(C.genesis_set([{"address": k.address, "public_key": k.public_key.hex()}
                                                           for k in KEYS])))
        block = self.b.block()
        self.assertEqual(block["authorities"], self.b.members())
        self.assertEqual(block["header"]["authorities_hash"], C.authorities_hash(self.b.members()))
        out = self.node.queries.get_authorities()
        self.assertEqual((out["quorum"], len(out["authorities"])), (4, 5))
        self.assertEqual(self.node.queries.get_authorities(end)["quorum"], 3)  # block end's set
        # X has turns now, and its vote counts toward the quorum of 4 of 5.
        self.b.block(by=X)
        self.b.block(voters=(A0, A1, X))
        self.assertLess(self.chain.finality().justified.height, self.chain.head()[0] - 1)
        self.b.block(voters=(A0, A1, A2, X))
        self.assertEqual(self.chain.finality().justified.height, self.chain.head()[0] - 1)
        # Another node follows every step.
        follower = self.other()
        copy_to(self.b, follower)
        self.assertEqual(follower.chain.view().root(), self.chain.view().root())

    def test_remove(self):
        self.b.block()
        self.apply(*(update(k, 1, "remove", A3) for k in (A0, A1, A2)))
        self.to_epoch_end()
        self.assertEqual(self.addresses(), [A0.address, A1.address, A2.address])
        with self.assertRaises(AitError):
            self.b.block(by=A3)
        out = self.node.queries.get_authorities()
        self.assertEqual(out["quorum"], 3)
        # A removed authority may not approve anything any more.
        self.assertEqual(list(self.apply(update(A3, 1, "add", X)).values()), ["not_authority"])

    def test_unjail(self):
        self.b.block()
        mine = self.b.block(by=A3)
        ev = double_proposal(self.chain, A3, mine["header"]["height"])
        self.b.block(by=A0, evidence=[ev])
        self.assertEqual(C.set_of(self.chain.view()).jailed, {A3.address})
        # A jailed authority's own approval is refused; the active ones' count.
        unjail = [update(k, 1, "unjail", A3) for k in (A3, A0, A1, A2)]
        self.assertEqual(list(self.apply(*unjail).values()), ["not_authority"])
        self.to_epoch_end()
        self.assertEqual(C.set_of(self.chain.view()).jailed, frozenset())
        self.b.block()
        self.b.block(by=A3)  # its turns are back

    def test_approvals_by_authorities_jailed_since_do_not_count(self):
        self.b.block()
        self.assertEqual(self.apply(update(A3, 1, "add", X), update(A0, 1, "add", X)), {})
        mine = self.b.block(by=A3)
        self.b.block(by=A0, evidence=[double_proposal(self.chain, A3, mine["header"]["height"])])
        self.to_epoch_end()
        self.assertEqual(self.apply(update(A1, 1, "add", X)), {})
        self.to_epoch_end()  # A0, A1 and the jailed A3: two of the three active (q = 3)
        self.assertNotIn(X.address, self.addresses())
        self.apply(update(A2, 1, "add", X))
        self.to_epoch_end()
        self.assertIn(X.address, self.addresses())

    def test_refusals(self):
        self.b.block()
        codes = self.apply(
            update(A0, 1, "add", A1),  # an authority already
            update(A1, 1, "remove", X),  # no authority
            update(A2, 1, "unjail", A3),  # not jailed
            sign_tx(A3, CHAIN_ID, "AUTHORITY_UPDATE", 1, 0,  # A0's address with another key (parse_tx
                    {"action": "remove", "address": A0.address, "public_key": A1.public_key.hex()}),  # refuses it too)
            update(X, 1, "add", X),  # sent by no authority
        )
        self.assertEqual(sorted(codes.values()), sorted(
            ["authority_exists", "authority_unknown", "authority_not_jailed", "authority_unknown", "not_authority"]))
        ok = update(A0, 1, "add", X)
        self.assertEqual(self.apply(ok), {})
        self.assertEqual(list(self.apply(update(A0, 2, "add", X)).values()), ["already_approved"])

    def test_the_last_active_authority_cannot_be_removed(self):
        node = make_node(self, doc=doc(keys=[A0]), key=A0)
        b = Builder(node)
        b.block([update(A0, 1, "remove", A0)])
        self.assertEqual(list(b.failed.values()), ["last_authority"])

    def test_a_change_that_no_longer_applies_is_dropped_at_the_epoch_end(self):
        """Two changes approved in one epoch that cannot both apply: they
        apply in change-id order, and the second, no longer possible, is
        dropped (approvals and all)."""
        self.b.block()
        remove = {"action": "remove", "address": A3.address, "public_key": A3.public_key.hex()}
        add = {"action": "add", "address": X.address, "public_key": X.public_key.hex()}
        # Remove A3, and X added: both apply whatever their order.  Then
        # the same "add X" again in the next epoch no longer applies.
        self.apply(*(update(k, 1, "remove", A3) for k in (A0, A1, A2)))
        self.apply(*(update(k, 2, "add", X) for k in (A0, A1, A2)))
        self.to_epoch_end()
        self.assertEqual(self.addresses(), [A0.address, A1.address, A2.address, X.address])
        self.assertIsNone(self.chain.view().get("authupd", C.change_id(remove)))
        self.assertIsNone(self.chain.view().get("authupd", C.change_id(add)))
        # "add X" approved again cannot apply now (X is an authority): refused at once.
        self.assertEqual(list(self.apply(update(A0, 3, "add", X)).values()), ["authority_exists"])


# -- fork choice ----------------------------------------------------------------------------

class ForkChoiceTests(ChainTestBase):
    """chain.reorganise_steps: the higher justified block, then the greater
    height, then the lower head hash; never below the finalized block."""

    def setUp(self):
        super().setUp()
        self.b.blocks(3, voters=KEYS)  # block 3 carries the votes for 2 (source 1): justified 2, finalized 1
        self.assertEqual((self.chain.finality().justified.height, self.chain.finality().finalized.height), (2, 1))
        self.m = self.other()
        copy_to(self.b, self.m)
        self.mb = Builder(self.m)

    def offer(self, fork):
        """Our node runs reorganise_steps with the other node's blocks above fork."""
        return run_steps(self.chain.reorganise_steps(fork, self.mb.entries(fork)))

    def assertRefused(self, fork, code):
        before = self.chain.head()
        with self.assertRaises(AitError) as e:
            self.offer(fork)
        self.assertEqual(e.exception.code, code, e.exception.message)
        self.assertEqual(self.chain.head(), before)

    def test_a_longer_branch_with_a_lower_justified_block_loses(self):
        self.b.block(voters=KEYS)  # votes for 3: justified 3, finalized 2
        for _ in range(3):
            self.mb.block(by=A3)  # three blocks, no votes: justified stays 2
        self.assertEqual(self.m.chain.head()[0], self.chain.head()[0] + 2)
        self.assertRefused(3, "branch_not_better")

    def test_a_shorter_branch_with_a_higher_justified_block_wins(self):
        for _ in range(3):
            self.b.block(by=A3)
        theirs = self.mb.block(voters=(A0, A1, A2))
        self.assertEqual(self.m.chain.finality().justified.height, 3)
        committed, dropped = self.offer(3)
        self.assertEqual([b["hash"] for b in committed], [theirs["hash"]])
        self.assertEqual(self.chain.head(), (4, theirs["hash"]))
        self.assertEqual(self.chain.finality().justified.height, 3)
        self.assertEqual(dropped, [])

    def test_equal_justified_the_greater_height_wins(self):
        self.b.block(by=A3)
        self.mb.block(by=A2)
        self.mb.block(by=A2)
        committed, _ = self.offer(3)
        self.assertEqual(self.chain.head()[0], 5)

    def test_a_tie_goes_to_the_lower_hash(self):
        ours = self.b.block(by=A3)
        theirs = self.mb.block(by=A2)
        winner = min(ours["hash"], theirs["hash"])
        for node, offered in ((self.node, self.mb), (self.m, self.b)):
            head = node.chain.head()
            try:
                run_steps(node.chain.reorganise_steps(3, offered.entries(3)))
            except AitError as e:
                self.assertEqual(e.code, "branch_not_better")
                self.assertEqual(node.chain.head(), head)
            self.assertEqual(node.chain.head(), (4, winner))

    def node_with(self, upto):
        """Another node holding our chain up to height upto, and its Builder."""
        node = self.other()
        for block, txs in self.b.entries(0)[:upto]:
            node.chain.commit(*node.chain.verify_block(block, txs))
        return node, Builder(node)

    def assertBranchRefused(self, fork, entries, code):
        with self.assertRaises(AitError) as e:
            run_steps(self.chain.reorganise_steps(fork, entries))
        self.assertEqual(e.exception.code, code)

    def test_never_below_the_finalized_block(self):
        self.b.block(voters=KEYS)
        self.assertEqual(self.chain.finality().finalized.height, 2)
        # A branch forking at 1, however long, is refused before a single
        # block of it is checked.
        _, below = self.node_with(1)
        for _ in range(8):
            below.block(by=A3)
        self.assertBranchRefused(1, below.entries(1), "fork_below_finalized")
        self.assertBranchRefused(1, [({"header": {}}, [])], "fork_below_finalized")
        # One forking at the finalized block itself is weighed (and here loses).
        _, at = self.node_with(2)
        for _ in range(8):
            at.block(by=A3)
        self.assertBranchRefused(2, at.entries(2), "branch_not_better")
        self.assertEqual(self.chain.head()[0], 4)

    def test_a_better_branch_that_knows_less_finality_keeps_what_was_finalized(self):
        """Our chain finalized block 2 (block 4 carries the votes for 3,
        source 2).  A branch from 3 justifies its own block 4 (votes with
        source 2) without having seen 3 justified: fork choice takes it
        (justified 4 > 3), and it holds block 2, but its state knows only
        block 1 as finalized.  The node still reports block 2 finalized
        (getTx said so; it stays so) and still refuses branches below it."""
        self.b.block(voters=KEYS)
        fin = self.chain.finality()
        self.assertEqual((fin.justified.height, fin.finalized.height), (3, 2))
        self.mb.block(by=A3, voters=(A0, A1))  # two votes for 3: not justified there
        self.mb.block(by=A3, voters=(A0, A1, A2))  # its 4 justified, source 2
        theirs = self.m.chain.finality()
        self.assertEqual((theirs.justified.height, theirs.finalized.height), (4, 1))
        self.offer(3)
        self.assertEqual(self.chain.head(), self.m.chain.head())
        now = self.chain.finality()
        self.assertEqual(now.justified, theirs.justified)
        self.assertEqual(now.finalized, fin.finalized)
        self.assertEqual(self.node.queries.get_head()["finalized"], fin.finalized.to_json())
        _, below = self.node_with(1)
        for _ in range(8):
            below.block(by=A3)
        with self.assertRaises(AitError) as e:
            run_steps(self.chain.reorganise_steps(1, below.entries(1)))
        self.assertEqual(e.exception.code, "fork_below_finalized")
        # Its own blocks finalize further in time; the higher one counts.
        b = Builder(self.node)
        b.block(voters=KEYS)
        b.block(voters=KEYS)
        self.assertEqual(self.chain.finality().finalized.height, 5)
