"""The `ait` command: keys, genesis files, and a small client.

    ait keygen --out FILE
    ait genesis --chain-id ID --authority KEYFILE [--account ADDR=BALANCE]... [--faucet] [--out FILE]
    ait head | balance ADDR | block REF | tx HASH        [--node URL] [--json]
    ait transfer --key FILE --to ADDR --amount N [--fee N] [--node URL] [--json]

Every error prints one line on stderr and exits non-zero.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from aitnode.chain import Genesis, make_genesis
from aitnode.crypto import KeyPair, check_address
from aitnode.errors import AitError, ConfigError
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
    doc = make_genesis(args.chain_id, auths, accounts, params, timestamp=args.timestamp or int(time.time()))
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


def cmd_transfer(args):
    key = KeyPair.load(args.key)
    head = call(args.node, "/rpc/getHead")
    params = call(args.node, "/rpc/getParams")
    nonce = call(args.node, f"/rpc/getBalance/{key.address}")["nonce"] + 1
    payload = {"to": args.to, "amount": args.amount}
    fee = args.fee
    if fee is None:
        fee = call(args.node, "/rpc/estimateFee", {"type": "TRANSFER", "sender": key.address, "nonce": nonce, "fee": 0, "payload": payload})["fee"]
    chain_id = args.chain_id or call(args.node, f"/rpc/getBlock/0")["chain_id"]
    del head, params
    tx = sign_tx(key, chain_id, "TRANSFER", nonce, fee, payload)
    return call(args.node, "/rpc/sendTx", tx.to_wire())


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
    s = with_node(sub.add_parser("transfer", help="sign and send a TRANSFER"))
    s.add_argument("--key", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--amount", type=int, required=True)
    s.add_argument("--fee", type=int)
    s.add_argument("--chain-id")
    s.set_defaults(func=cmd_transfer)
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
    except (CliError, ConfigError) as e:
        print(f"ait: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
