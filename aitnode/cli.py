"""The `ait` command: keys, genesis files, and a small client.

    ait keygen --out FILE
    ait genesis --chain-id ID --authority KEYFILE [--account ADDR=BALANCE]... [--faucet] [--out FILE]
    ait head | balance ADDR | block REF | tx HASH        [--node URL] [--json]
    ait transfer --key FILE --to ADDR --amount N [--fee N] [--wait] [--node URL] [--json]
    ait sign --key FILE --to ADDR --amount N [--nonce N] [--fee N]   (prints the signed JSON)
    ait miner --key MINER_KEY --client-key CLIENT_KEY [--jobs N] [--node URL]
    ait verify balance ADDR | tx HASH | receipt ID   --genesis FILE | --trust HEIGHT:HASH [--cache PATH] [--node URL] [--json]

Every error prints one line on stderr and exits non-zero.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from aitnode import cli_verify
from aitnode.genesis import Genesis, make_genesis
from aitnode.crypto import KeyPair, check_address
from aitnode.errors import AitError, ConfigError
from aitnode.light import LightError
from aitnode.tx import sign_tx

DEFAULT_NODE = os.environ.get("AIT_NODE", "http://127.0.0.1:8080")


class CliError(Exception):
    pass


def call(node, path, body=None):
    """GET (or POST JSON) a node route; the decoded answer or CliError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(node.rstrip("/") + path, data=data, method="GET" if body is None else "POST")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            err = json.load(e)["error"]
            raise CliError(f"{err['code']}: {err['message']}")
        except (ValueError, KeyError, TypeError):
            raise CliError(f"HTTP {e.code} from {node}")
    except (urllib.error.URLError, OSError) as e:
        raise CliError(f"cannot reach {node}: {getattr(e, 'reason', e)}")


def cmd_keygen(args):
    if os.path.exists(args.out) and not args.force:
        raise CliError(f"{args.out} exists; pass --force to overwrite it")
    key = KeyPair.generate()
    key.save(args.out)
    return {"address": key.address, "public_key": key.public_key.hex(), "file": args.out}


def cmd_genesis(args):
    auths = [KeyPair.load(path) for path in args.authority]
    accounts = []
    for spec in args.account:
        addr, _, bal = spec.partition("=")
        try:
            check_address(addr)
            accounts.append((addr, int(bal)))
        except (AitError, ValueError):
            raise CliError(f"--account takes ADDRESS=BALANCE, got {spec!r}")
    params = {"faucet": args.faucet}
    if args.escrow:
        params["escrow"] = args.escrow
    doc = make_genesis(args.chain_id, auths, accounts, params, timestamp=args.timestamp or int(time.time() * 1000))
    try:
        Genesis(doc)
    except AitError as e:
        raise CliError(e.message)
    text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        return {"file": args.out, "chain_id": args.chain_id}
    sys.stdout.write(text)
    return None


def cmd_head(args):
    return call(args.node, "/rpc/getHead")


def cmd_balance(args):
    return call(args.node, f"/rpc/getBalance/{args.address}")


def cmd_block(args):
    return call(args.node, f"/rpc/getBlock/{args.ref}" + ("?full=true" if args.full else ""))


def cmd_tx(args):
    return call(args.node, f"/rpc/getTx/{args.hash}")


def _signed_transfer(args):
    key = KeyPair.load(args.key)
    try:
        check_address(args.to, "--to")
    except AitError as e:
        raise CliError(e.message)
    payload = {"to": args.to, "amount": args.amount}
    nonce = args.nonce if args.nonce is not None else call(args.node, f"/rpc/getBalance/{key.address}")["nonce"] + 1
    fee = args.fee
    if fee is None:
        fee = call(args.node, "/rpc/estimateFee", {"type": "TRANSFER", "sender": key.address, "nonce": nonce, "fee": 0, "payload": payload})["fee"]
    chain_id = args.chain_id or call(args.node, "/rpc/getBlock/0")["chain_id"]
    return sign_tx(key, chain_id, "TRANSFER", nonce, fee, payload)


def cmd_transfer(args):
    tx = _signed_transfer(args)
    out = call(args.node, "/rpc/sendTx", tx.to_wire())
    if args.wait:
        got = _wait_included(args.node, out["txHash"])
        out.update(status="included", height=got["block"]["height"])
    return out


def cmd_sign(args):
    """Print a signed TRANSFER as JSON (for curl -d @file), sending nothing."""
    wire = _signed_transfer(args).to_wire()
    print(json.dumps(wire, indent=None if args.json else 2))
    return None


def _wait_included(node, tx_hash, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out = call(node, f"/rpc/getTx/{tx_hash}")
        except CliError:
            out = {"status": "unknown"}
        if out["status"] == "included":
            return out
        if out["status"] == "failed":
            raise CliError(f"transaction {tx_hash} failed: {out['receipt']['error']['message']}")
        time.sleep(0.2)
    raise CliError(f"transaction {tx_hash} was not included within {timeout:.0f} s")


def _send(node, key, chain_id, ttype, payload, route="/rpc/sendTx"):
    nonce = call(node, f"/rpc/getBalance/{key.address}")["nonce"] + 1
    fee = call(node, "/rpc/estimateFee", {"type": ttype, "sender": key.address, "nonce": nonce, "fee": 0, "payload": payload})["fee"]
    tx = sign_tx(key, chain_id, ttype, nonce, fee, payload)
    return call(node, route, tx.to_wire())["txHash"], fee


def cmd_miner(args):
    """A mock miner: per job, the client pays escrow, the miner claims."""
    from aitnode.receipts import sign_claim

    miner = KeyPair.load(args.key)
    client = KeyPair.load(args.client_key)
    chain_id = call(args.node, "/rpc/getBlock/0")["chain_id"]
    escrow = call(args.node, "/rpc/getParams").get("escrow")
    if not escrow:
        raise CliError("this chain has no escrow (genesis params.escrow): receipts are off")
    start = call(args.node, f"/rpc/getBalance/{miner.address}")["balance"]
    job = args.first_job
    done = 0
    while args.jobs == 0 or done < args.jobs:
        pay_hash, _ = _send(args.node, client, chain_id, "TRANSFER", {"to": escrow, "amount": args.price})
        _wait_included(args.node, pay_hash)
        receipt_id = f"rcpt-{job}-{miner.address[4:12]}"
        payload = sign_claim(
            miner, chain_id, receipt_id=receipt_id, job_id=f"job_{job}", client_addr=client.address,
            miner_addr=miner.address, compute_units=args.units, price=args.price,
            output_hash="sha256:" + os.urandom(32).hex(), client_payment_tx=pay_hash,
        )
        claim_hash, fee = _send(args.node, miner, chain_id, "RECEIPT_CLAIM", payload, route="/rpc/submitReceipt")
        included = _wait_included(args.node, claim_hash)
        result = included["receipt"]
        balance = call(args.node, f"/rpc/getBalance/{miner.address}")["balance"]
        line = {
            "job": f"job_{job}", "receipt_id": receipt_id, "height": included["block"]["height"],
            "minted": result["minted"], "paid": result["miner_paid"], "fee": fee,
            "earned_total": balance - start, "balance": balance,
        }
        print(json.dumps(line) if args.json else
              f"job_{job}: block {line['height']} minted {line['minted']} paid {line['paid']} fee {fee}"
              f" -> earned {line['earned_total']} in all, balance {balance} (receipt {receipt_id})", flush=True)
        done += 1
        job += 1
        if args.interval:
            time.sleep(args.interval)
    return None


def parser():
    p = argparse.ArgumentParser(prog="ait", description="aitnode command line")
    sub = p.add_subparsers(dest="command", required=True)

    def with_node(sp):
        sp.add_argument("--node", default=DEFAULT_NODE, help="node RPC URL (default %(default)s, or $AIT_NODE)")
        sp.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sp

    s = sub.add_parser("keygen", help="write a new ed25519 key file (mode 0600)")
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("genesis", help="write a genesis file")
    s.add_argument("--chain-id", required=True)
    s.add_argument("--authority", action="append", required=True, help="authority key file (repeat for several)")
    s.add_argument("--account", action="append", default=[], help="ADDRESS=BALANCE (repeatable)")
    s.add_argument("--faucet", action="store_true", help="allow MINT (devnet faucet)")
    s.add_argument("--escrow", help="escrow address for compute payments")
    s.add_argument("--timestamp", type=int)
    s.add_argument("--out")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_genesis)

    with_node(sub.add_parser("head", help="the head block")).set_defaults(func=cmd_head)
    s = with_node(sub.add_parser("balance", help="an account's balance and nonce"))
    s.add_argument("address")
    s.set_defaults(func=cmd_balance)
    s = with_node(sub.add_parser("block", help="a block by height or hash"))
    s.add_argument("ref")
    s.add_argument("--full", action="store_true")
    s.set_defaults(func=cmd_block)
    s = with_node(sub.add_parser("tx", help="a transaction by hash"))
    s.add_argument("hash")
    s.set_defaults(func=cmd_tx)
    for name, func, help_ in (("transfer", cmd_transfer, "sign and send a TRANSFER"),
                              ("sign", cmd_sign, "print a signed TRANSFER as JSON, without sending it")):
        s = with_node(sub.add_parser(name, help=help_))
        s.add_argument("--key", required=True, help="the sender's key file")
        s.add_argument("--to", required=True)
        s.add_argument("--amount", type=int, required=True)
        s.add_argument("--fee", type=int, help="default: the minimum the node asks (estimateFee)")
        s.add_argument("--nonce", type=int, help="default: the account's nonce + 1")
        s.add_argument("--chain-id", help="default: the node's")
        if name == "transfer":
            s.add_argument("--wait", action="store_true", help="wait until it is included")
        s.set_defaults(func=func)
    s = with_node(sub.add_parser("miner", help="mock miner: pay escrow as a client, claim receipts, print earnings"))
    s.add_argument("--key", required=True, help="the miner's key file")
    s.add_argument("--client-key", required=True, help="a funded client's key file (pays escrow)")
    s.add_argument("--jobs", type=int, default=0, help="how many jobs (0: until stopped)")
    s.add_argument("--first-job", type=int, default=int(time.time()) % 900_000 + 1)
    s.add_argument("--price", type=int, default=5000)
    s.add_argument("--units", type=int, default=10)
    s.add_argument("--interval", type=float, default=0.0, help="seconds between jobs")
    s.set_defaults(func=cmd_miner)
    cli_verify.add_commands(sub, with_node)
    return p


def show(result, as_json):
    if result is None:
        return
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        show(args.func(args), getattr(args, "json", False))
    except (CliError, ConfigError, LightError) as e:
        print(f"ait: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
