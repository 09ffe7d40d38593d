"""`ait verify balance ADDR | tx HASH | receipt RECEIPT_ID`: answers of one
node checked by the light client (aitnode.light), from the genesis file or
a trusted HEIGHT:HASH, with what was verified kept in a cache file.

Prints what it checked and at which finalized height; anything that does
not verify is one line on stderr and a non-zero exit (cli.main).
"""

import json
import os
import time
import urllib.error
import urllib.request

from aitnode.errors import AitError, ConfigError
from aitnode.genesis import Genesis
from aitnode.light import LightClient, LightError, NotYet, parse_trust
from aitnode.light_proofs import verify_balance, verify_receipt, verify_tx

TIMEOUT = 30  # seconds per request
MAX_ANSWER = 64 << 20  # bytes: a getHeaders page of 256 headers with their votes and sets is far below
MAX_SAID = 300  # characters of a node's error code and message repeated in ours


def http_fetch(node):
    """fetch(path) for the light client: GET node + path, decoded JSON;
    an error answer or no answer is LightError."""
    base = node.rstrip("/")

    def fetch(path):
        try:
            with urllib.request.urlopen(base + path, timeout=TIMEOUT) as resp:
                return answer(path, resp.status, resp.read(MAX_ANSWER + 1))
        except urllib.error.HTTPError as e:
            with e:
                return answer(path, e.code, e.read(MAX_ANSWER + 1))
        except (urllib.error.URLError, OSError) as e:
            raise LightError(f"cannot reach {node}: {getattr(e, 'reason', e)}")

    return fetch


def answer(path, status, data):
    """The decoded JSON of a node's answer to path (status, body bytes);
    LightError for an error status, naming the node's error code and
    message on one line, or for a body too large or not JSON."""
    if len(data) > MAX_ANSWER:
        raise LightError(f"node: answer to {path} is over {MAX_ANSWER} bytes")
    if status != 200:
        try:
            err = json.loads(data)["error"]
            said = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            raise LightError(f"node: HTTP {status} for {path}")
        # The node's words, on one line and not too many of them.
        raise LightError(f"node: {' '.join(said.split())[:MAX_SAID]}")
    try:
        return json.loads(data)
    except ValueError:
        raise LightError(f"node: answer to {path} is not JSON")


def cache_dir():
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aitnode-light")


def client_for(args, fetch):
    """The LightClient the options name: --genesis, --trust or a --cache alone."""
    if args.genesis and args.trust:
        raise LightError("pass --genesis or --trust, not both")
    if args.genesis:
        try:
            genesis = Genesis.load(args.genesis)
        except (ConfigError, AitError) as e:
            raise LightError(str(e))
        cache = args.cache or os.path.join(cache_dir(), f"{genesis.chain_id}.json")
        return LightClient.from_genesis(fetch, genesis, cache)
    if args.trust:
        height, h = parse_trust(args.trust)
        cache = args.cache or os.path.join(cache_dir(), f"trust-{height}-{h[:16]}.json")
        return LightClient.from_trust(fetch, height, h, cache)
    if args.cache:
        return LightClient.from_cache(fetch, args.cache)
    raise LightError("pass --genesis FILE or --trust HEIGHT:HASH (or the --cache of an earlier run)")


VERIFY = {"balance": verify_balance, "tx": verify_tx, "receipt": verify_receipt}


def cmd_verify(args):
    client = client_for(args, http_fetch(args.node))
    deadline = time.monotonic() + args.wait
    while True:
        client.sync()
        try:
            out = VERIFY[args.what](client, args.ref)
            break
        except NotYet:
            # Not in a finalized block yet: with --wait, follow the chain
            # until it is, or the time is up (then the last reason stands).
            if time.monotonic() + 1 > deadline:
                raise
            time.sleep(1)
    if args.json:
        print(json.dumps(out))
        return None
    fin = out["finalized"]
    print(f"verified at finalized block {fin['height']} ({fin['hash']}):")
    if args.what == "balance":
        print(f"  {out['address']}: balance {out['balance']}, nonce {out['nonce']}")
    elif args.what == "tx":
        b = out["block"]
        print(f"  {out['type']} {out['tx_hash']} in block {b['height']} at index {b['index']}")
    else:
        print(f"  receipt {out['receipt_id']}: claim {out['claim']} in block {out['block']['height']}, "
              f"miner {out['miner']} paid {out['miner_paid']} (minted {out['mint']})")
    for line in out["checked"]:
        print(f"  checked: {line}")
    return None


def add_commands(sub, with_node):
    """The verify subcommands, on cli.parser()'s subparsers."""
    s = with_node(sub.add_parser("verify", help="check a balance, a transaction or a receipt without trusting the node"))
    s.add_argument("what", choices=sorted(VERIFY))
    s.add_argument("ref", help="an address, a txHash or a receipt id")
    s.add_argument("--genesis", help="the chain's genesis file (the trusted checkpoint)")
    s.add_argument("--trust", help="HEIGHT:HASH of a block you trust (instead of the genesis file)")
    s.add_argument("--cache", help=f"where what was verified is kept (default {cache_dir()}/<chain>.json)")
    s.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="a transaction or receipt not final yet: follow the chain up to this long for it")
    s.set_defaults(func=cmd_verify)
