"""The attackers of tests/test_soak.py, in a process of their own.

    python -m tests.soak_attack CONFIG_JSON      (from the repository's root)

CONFIG_JSON is {"rpc_port", "p2p_port", "seconds", "seed", "chain_id",
"genesis" (the genesis block's hash), "attacks" (a list of names below)}.

The attacks run at once, each in its own threads, on loopback only, at a
bounded rate, until ``seconds`` have passed or SIGTERM comes:

- ``rpc``: hostile HTTP requests over keep-alive connections: random JSON
  values, mutated valid transactions and claims (lone surrogates, huge
  integers, deep nesting, wrong types, unknown and duplicate members),
  random bytes, odd paths, methods and headers; now and then a valid
  transfer, escrow payment or claim (with identifiers of up to 128 code
  points of four UTF-8 bytes each), so the paths past admission are used
  too.  Each thread pays from a funded genesis account of its own (PAYERS).
- ``garbage``: WebSocket clients on /p2p/ws, from rotating loopback
  addresses, that send random frames, text frames, non-CBOR, valid CBOR
  that is not a message, messages before hello, second hellos, bad auths,
  and, once authenticated with a fresh key, junk of every message type;
  then they read what comes, close and connect again.
- ``flood``: a peer that does the real handshake (hello, then auth signed
  with its own ed25519 key), then sends hundreds of small ``get_blocks``
  and never reads its socket (its receive buffer is made small).  When the
  node drops it, or after a while, it connects again.
- ``slow``: uploads that declare a large Content-Length on POST
  /rpc/sendTxs and trickle a byte at a time, headers that never end, and
  whole requests sent a byte at a time.

Every HTTP answer's status is counted; a 5xx is kept as a sample.  At the
end one JSON line with the counts is printed to stdout.  Blocking sockets
with timeouts, in threads of this process: a stalled node stalls an
attacker, never the trial process that measures the node.
"""

import base64
import collections
import copy
import http.client
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

import cbor2

from aitnode.crypto import KeyPair
from aitnode.p2p.wire import auth_bytes, encode
from aitnode.receipts import CLAIM, sign_claim
from aitnode.tx import sign_tx
from tests.common import BOB, ESCROW, key

ATTACKS = ("rpc", "garbage", "flood", "slow")

# RPC fuzzing: threads (one keep-alive connection each) and the most
# requests each sends a second.
RPC_THREADS = 4
RPC_RATE = 40
PAYERS = [key(60 + i) for i in range(RPC_THREADS)]  # funded in the soak's genesis
MINERS = [key(70 + i) for i in range(RPC_THREADS)]  # unfunded: a claim pays its own fee
PAYMENT = 5000

# Garbage peers: threads, a pause between connections, the addresses they
# come from (the node may back off an address that misbehaved).
GARBAGE_THREADS = 3
GARBAGE_PAUSE = 0.1
GARBAGE_DRAIN = 0.2  # how long a garbage peer reads before it closes
GARBAGE_SOURCES = [f"127.0.0.{i}" for i in range(10, 26)]


def fresh_source(n):
    """A loopback address of its own for the n-th connection (127.1.0.1 on)."""
    return f"127.1.{n // 250 % 250}.{n % 250 + 1}"


# The get_blocks flood: per connection, the requests sent (in bursts of
# FLOOD_BURST every FLOOD_EVERY s) and how long it is kept.
FLOOD_SOURCE = "127.0.0.2"
FLOOD_PAUSE = 0.2  # between connections
FLOOD_PER_CONN = 400
FLOOD_BURST = 20
FLOOD_EVERY = 0.1
FLOOD_CONN_SECONDS = 15.0

# Slow clients: how many of each kind, and the pause between their bytes.
SLOW_BODIES = 40
SLOW_HEADERS = 8
SLOW_REQUESTS = 4
SLOW_EVERY = 0.25
SLOW_LENGTH = 16_000_000  # under [rpc] max_batch_bytes: the node takes the headers and waits

STOP = threading.Event()
OPEN = set()  # every socket open, shut down at the stop so that no thread waits on one
OPEN_LOCK = threading.Lock()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.server_errors = []

    def count(self, name, n=1):
        with self.lock:
            self.counts[name] += n

    def status(self, attack, status, what, body=b""):
        self.count(f"{attack}.status.{status}")
        if status >= 500:
            with self.lock:
                self.counts["server_errors"] += 1
                if len(self.server_errors) < 20:
                    self.server_errors.append({"attack": attack, "status": status, "request": repr(what)[:300],
                                               "body": body[:300].decode("utf-8", "replace")})


def pause(seconds):
    """Sleep, waking at once on stop; False once the attack is over."""
    return not STOP.wait(seconds)


class Pacer:
    def __init__(self, rate):
        self.every = 1.0 / rate
        self.next = time.monotonic()

    def wait(self):
        self.next = max(self.next + self.every, time.monotonic() - 1.0)
        return pause(max(0.0, self.next - time.monotonic()))


class Socket(socket.socket):
    def close(self):
        with OPEN_LOCK:
            OPEN.discard(self)
        super().close()


def connect(port, source="127.0.0.1", timeout=5.0, rcvbuf=None):
    s = Socket(socket.AF_INET, socket.SOCK_STREAM)
    with OPEN_LOCK:
        OPEN.add(s)
    try:
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
    except BaseException:
        s.close()
        raise
    return s


def abort(s):
    """Close with a reset, as a vanished client does."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def shut_all():
    """Wake every thread blocked on a socket: the attack is over."""
    with OPEN_LOCK:
        socks = list(OPEN)
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- random values -------------------------------------------------------------

SURROGATES = ["\ud800", "\udfff", "a\udc80b", "\ud83d", "\ud800\ud800"]
HUGE_INTS = [-1, 0, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -2**64, 10**30, 10**300]
ODD_TEXTS = ["", " ", "\x00", "null", "[]", "ait1", "é" * 129, "𝄞" * 128, "中" * 200, "a" * 5000, "\u202e\u0000"]


def rand_text(rng):
    pick = rng.randrange(6)
    if pick == 0:
        return rng.choice(ODD_TEXTS)
    if pick == 1:
        return rng.choice(SURROGATES)
    if pick == 2:
        return "".join(chr(rng.randrange(0x20, 0x7f)) for _ in range(rng.randrange(20)))
    if pick == 3:
        return "".join(chr(rng.randrange(0x10ffff)) for _ in range(rng.randrange(10)))
    if pick == 4:
        return rng.randbytes(rng.choice((20, 32, 64))).hex()
    return rng.choice(["TRANSFER", "MINT", "PARAM_UPDATE", CLAIM, "ait-test", BOB.address, ESCROW.address])


def rand_value(rng, depth=0):
    pick = rng.randrange(10 if depth < 3 else 7)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice((True, False))
    if pick == 2:
        return rng.choice(HUGE_INTS + [rng.randrange(-1000, 1000)])
    if pick == 3:
        return rng.choice((0.5, -0.0, 1e308, float("nan"), float("inf"), 1.0))
    if pick in (4, 5, 6):
        return rand_text(rng)
    if pick in (7, 8):
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rand_text(rng): rand_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def deep(n):
    v = []
    for i in range(n):
        v = [v] if i % 2 else {"a": v}
    return v


def mutate(rng, wire):
    w = copy.deepcopy(wire)
    for _ in range(rng.randint(1, 3)):
        target = w["payload"] if type(w.get("payload")) is dict and rng.random() < 0.5 else w
        keys = list(target)
        op = rng.randrange(8)
        if op == 0 and keys:
            target[rng.choice(keys)] = rand_value(rng)
        elif op == 1 and keys:
            del target[rng.choice(keys)]
        elif op == 2:
            target[rand_text(rng)] = rand_value(rng)
        elif op == 3 and keys:
            target[rng.choice(keys)] = rng.choice(SURROGATES + ODD_TEXTS)
        elif op == 4 and keys:
            target[rng.choice(keys)] = rng.choice(HUGE_INTS)
        elif op == 5 and keys:
            target[rng.choice(keys)] = deep(rng.randint(20, 120))
        elif op == 6:
            w["type"] = rng.choice(({}, [], {"type": "TRANSFER"}, ["TRANSFER"], 7, None))
        elif op == 7 and keys:
            k = rng.choice(keys)
            if type(target[k]) is str and target[k]:
                s = target[k]
                i = rng.randrange(len(s))
                target[k] = s[:i] + rng.choice("0af\ud800Z") + s[i + 1:]
    return w


def json_bytes(rng, value):
    text = json.dumps(value, ensure_ascii=rng.random() < 0.7)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes bytes that are not UTF-8


# -- RPC fuzzing -----------------------------------------------------------------

POST_ROUTES = ["/rpc/sendTx", "/rpc/sendTxs", "/rpc/submitReceipt", "/rpc/estimateFee", "/rpc/attest",
               "/rpc/attest/receipt", "/admin/mintFaucet", "/admin/paramSet", "/admin/peers/add"]
TX_ROUTES = ["/rpc/sendTx", "/rpc/sendTxs", "/rpc/submitReceipt", "/rpc/estimateFee"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "FOO", "get", "CONNECT"]


class _Kept:
    """What http.client.HTTPResponse needs from a socket: one buffered
    reader, kept across the answers of a keep-alive connection (an answer
    read to its end closes its reader; this one stays open)."""

    def __init__(self, f):
        self.f = f

    def makefile(self, *args, **kw):
        return self

    def close(self):
        pass

    def __getattr__(self, name):
        return getattr(self.f, name)


class Fuzzer:
    def __init__(self, cfg, stats, index):
        self.cfg = cfg
        self.stats = stats
        self.rng = random.Random(f"{cfg['seed']}-rpc-{index}")
        self.index = index
        self.payer = PAYERS[index]
        self.miner = MINERS[index]
        self.payer_nonce = 1
        self.miner_nonce = 1
        self.payments = collections.deque()  # (tx hash, sent at) of escrow payments
        self.claims = 0
        self.sock = None
        self.file = None

    # -- valid bases ---------------------------------------------------------
    def wire(self, tx):
        w = tx.to_wire()
        if self.rng.random() < 0.9:
            del w["chain_id"]
        return w

    def transfer(self, to=None, amount=None):
        to = to or self.rng.choice([BOB.address, self.miner.address, KeyPair(self.rng.randbytes(32)).address])
        amount = amount or self.rng.randint(1, 50)
        return sign_tx(self.payer, self.cfg["chain_id"], "TRANSFER", self.payer_nonce, 1000, {"to": to, "amount": amount})

    def receipt_id(self):
        self.claims += 1
        n = self.claims + 1000 * self.index
        pick = self.rng.randrange(4)
        if pick == 0:
            return f"soak-{self.index}-{n}"
        if pick == 1:  # 128 code points of 4 UTF-8 bytes: 512 bytes
            return "𝄞" * 127 + chr(0x10000 + n)
        if pick == 2:
            return "中" * 127 + chr(0x4e00 + n)
        return "é" * self.rng.randrange(1, 128) + str(n)

    def claim(self):
        now = time.monotonic()
        payment = self.payments[0][0] if self.payments and now - self.payments[0][1] > 3 else self.rng.randbytes(32).hex()
        job = f"job_{100_000 * (self.index + 1) + self.claims}"
        payload = sign_claim(
            self.miner, self.cfg["chain_id"], receipt_id=self.receipt_id(), job_id=job,
            client_addr=self.payer.address, miner_addr=self.miner.address, compute_units=self.rng.randint(1, 10),
            price=self.rng.randint(0, PAYMENT), output_hash="sha256:" + self.rng.randbytes(32).hex(),
            client_payment_tx=payment)
        return sign_tx(self.miner, self.cfg["chain_id"], CLAIM, self.miner_nonce, 5000, payload)

    def base(self):
        return self.claim() if self.rng.random() < 0.4 else self.transfer()

    # -- one request -----------------------------------------------------------
    def next_request(self):
        """(method, target, headers, body, note, on_answer): one request."""
        rng = self.rng
        pick = rng.randrange(100)
        headers = {"Host": f"127.0.0.1:{self.cfg['rpc_port']}", "Content-Type": "application/json"}
        if pick < 12:  # valid: a transfer, an escrow payment or a claim
            kind = rng.choice(("transfer", "payment", "claim", "claim"))
            if kind == "claim":
                tx = self.claim()
                route = rng.choice(("/rpc/submitReceipt", "/rpc/sendTx"))
            else:
                tx = self.transfer(ESCROW.address, PAYMENT) if kind == "payment" else self.transfer()
                route = "/rpc/sendTx"
            return "POST", route, headers, json_bytes(rng, self.wire(tx)), ("valid", kind), self.valid_answer(kind, tx)
        if pick < 40:  # a mutated transaction or claim
            w = mutate(rng, self.wire(self.base()))
            route = rng.choice(TX_ROUTES)
            if route == "/rpc/sendTxs" or rng.random() < 0.1:
                w = [w] + [mutate(rng, self.wire(self.base())) for _ in range(rng.randrange(8))]
                if rng.random() < 0.3:
                    w.insert(rng.randrange(len(w)), self.wire(self.transfer(amount=1)))
            body = json_bytes(rng, w)
            if rng.random() < 0.15:  # a repeated member, or an integer of thousands of digits
                body = body.replace(b"{", b'{"nonce": 1, ', 1) if rng.random() < 0.5 else \
                    body.replace(b'"fee": ', b'"fee": ' + b"9" * rng.choice((30, 5000)), 1)
            return "POST", route, headers, body, ("mutated", route), None
        if pick < 52:  # any JSON value to any POST route
            route = rng.choice(POST_ROUTES)
            if rng.random() < 0.5:
                headers["Authorization"] = "Bearer " + rand_text(rng).encode("ascii", "replace").decode()
            return "POST", route, headers, json_bytes(rng, rand_value(rng)), ("json", route), None
        if pick < 58:  # deep nesting, or random bytes, as a body
            route = rng.choice(POST_ROUTES)
            if rng.random() < 0.5:
                n = rng.choice((65, 500, 5000, 30000))
                body = (b"[" * n + b"]" * n) if rng.random() < 0.5 else (b'{"a":' * n + b"1" + b"}" * n)
            else:
                body = rng.randbytes(rng.randrange(1, 2000))
            return "POST", route, headers, body, ("bytes", route), None
        if pick < 74:  # GET routes with odd arguments
            return "GET", self.odd_path(), headers, b"", ("get",), None
        if pick < 84:  # odd methods on every route
            method = rng.choice(METHODS)
            route = rng.choice(POST_ROUTES + ["/rpc/getHead", "/rpc/getSupply", "/", "/static/app.js", "/static/x"])
            body = json_bytes(rng, rand_value(rng)) if rng.random() < 0.5 else b""
            return method, route, headers, body, ("method", method), None
        if pick < 94:  # odd headers
            return self.odd_headers(headers)
        # raw bytes where a request belongs
        raw = rng.randbytes(rng.randrange(1, 300)) + b"\r\n\r\n"
        return None, raw, None, None, ("raw",), None

    def odd_path(self):
        rng = self.rng
        pick = rng.randrange(12)
        hexes = [rng.randbytes(32).hex(), "00" * 32, "AB" * 32, "zz", "", "a" * 63]
        if pick == 0:
            return "/rpc/getTx/" + rng.choice(hexes)
        if pick == 1:
            return "/rpc/getBlock/" + rng.choice(["0", "1", "-1", "99999999999999999999999", "%ff", "1.5", "0x1", "%00"] + hexes)
        if pick == 2:
            return f"/rpc/getBalance/{rng.choice([BOB.address, 'ait1', 'AIT1' + 'q' * 38, '%ff%fe', rand_text(rng).encode('utf-8', 'surrogatepass').hex()])}"
        if pick == 3:
            limit = rng.choice(["0", "1", "500", "501", "-1", "abc", "1e3", "99999999999999999999", ""])
            return f"/rpc/getHistory/{BOB.address}?limit={limit}"
        if pick == 4:
            return "/rpc/getReceipt/" + rng.choice(["%F0%9D%84%9E" * 200, "soak-0-1", "%ff", "x" * 600, "%ed%a0%80"])
        if pick == 5:
            return rng.choice(["/rpc/getHead", "/rpc/getSupply", "/rpc/getParams", "/rpc/metrics", "/p2p/peers",
                               "/", "/static/app.js", "/rpc/getHead/", "/rpc//getHead", "/rpc/getHead?x=1"])
        if pick == 6:
            return "/" + "a" * rng.choice((300, 5000, 20000))
        if pick == 7:
            return rng.choice(["/%2e%2e/%2e%2e/etc/passwd", "/static/../../etc/passwd", "/static/%00", "*",
                               "http://evil.example/rpc/getHead", "/rpc/getHead#frag", "//", "/rpc/%ff%fe"])
        if pick == 8:
            return "/rpc/getTx/" + "".join(chr(rng.randrange(0x80, 0x800)) for _ in range(10))
        if pick == 9:
            return "/rpc/getHead?" + "&".join(f"{rand_text(rng)[:8]}=1" for _ in range(rng.randrange(1, 50)))
        if pick == 10:
            return "/rpc/" + rng.randbytes(8).hex()
        return "/admin/" + rng.choice(["mintFaucet", "paramSet", "peers/add", "nope"])

    def odd_headers(self, headers):
        rng = self.rng
        body = json_bytes(rng, self.wire(self.transfer(amount=1)))
        pick = rng.randrange(9)
        route = rng.choice(["/rpc/sendTx", "/rpc/getHead", "/rpc/estimateFee"])
        method = "GET" if route == "/rpc/getHead" else "POST"
        if pick == 0:
            headers["Host"] = b"\xff\xfe.example"
        elif pick == 1:
            del headers["Host"]
        elif pick == 2:
            headers["X-Big"] = "x" * rng.choice((1000, 8000, 60000))
        elif pick == 3:
            for i in range(rng.choice((50, 200))):
                headers[f"X-H{i}"] = str(i)
        elif pick == 4:
            headers["Content-Length"] = rng.choice(["-1", "abc", "1e3", "99999999999999999999", "0x10"])
        elif pick == 5:
            headers["Content-Length"] = str(rng.choice((70_000, 1 << 30)))  # over the route's limit: 413 at once
            return method, route, headers, b"", ("declared too large",), None
        elif pick == 6:
            headers["Transfer-Encoding"] = "chunked"
            if rng.random() < 0.5:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            else:
                body = rng.choice([b"zz\r\n", b"ffffffffffffffffff\r\n", b"5\r\nab\r\n0\r\n\r\n"])
            return "POST", "/rpc/sendTx", headers, body, ("chunked",), None
        elif pick == 7:
            headers["Content-Type"] = rng.choice(["text/plain", "application/json; charset=latin-1", "\x00", "a" * 3000])
        else:
            headers["Expect"] = "100-continue"
        return method, route, headers, body, ("headers", pick), None

    def valid_answer(self, kind, tx):
        def answered(status, body):
            code = None
            if status != 200:
                try:
                    code = json.loads(body)["error"]["code"]
                except Exception:
                    pass
            self.stats.count(f"rpc.valid.{kind}.{status}" + (f".{code}" if code else ""))
            if kind == "claim":
                if status == 200 or code in ("nonce_too_low", "replacement_fee_too_low"):
                    self.miner_nonce += 1
                if status == 200 or code in ("payment_already_used", "payment_wrong_client"):
                    if self.payments and self.payments[0][0] == tx.payload["client_payment_tx"]:
                        self.payments.popleft()
            elif status == 200 or code in ("nonce_too_low", "replacement_fee_too_low"):
                self.payer_nonce += 1
                if status == 200 and kind == "payment":
                    self.payments.append((tx.hash, time.monotonic()))
        return answered

    # -- the connection -------------------------------------------------------
    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = self.file = None

    def send(self, method, target, headers, body, note=()):
        if self.sock is None:
            self.sock = connect(self.cfg["rpc_port"], timeout=10.0)
            self.file = self.sock.makefile("rb")
            self.stats.count("rpc.connections")
        if method is None:
            raw = target
        else:
            t = target.encode("utf-8", "surrogatepass") if isinstance(target, str) else target
            lines = [method.encode() + b" " + t + b" HTTP/1.1"]
            if body and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                headers["Content-Length"] = str(len(body))
            for k, v in headers.items():
                lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass")))
            raw = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
        try:
            self.sock.sendall(raw)
        except OSError:
            self.stats.count("rpc.send_failed")  # the node may have answered (413) and closed: read on
        resp = http.client.HTTPResponse(_Kept(self.file), method=method if method in ("HEAD", "GET", "POST") else None)
        try:
            resp.begin()
            content = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.stats.count(f"rpc.no_answer.{type(e).__name__}.{note[0] if note else '?'}")
            self.close()
            return None, b""
        if resp.will_close:
            self.close()
        return resp.status, content

    def run(self):
        pacer = Pacer(RPC_RATE)
        while pacer.wait():
            method, target, headers, body, note, on_answer = self.next_request()
            self.stats.count("rpc.requests")
            try:
                status, content = self.send(method, target, headers, body, note)
            except OSError as e:
                self.stats.count(f"rpc.connect_failed.{type(e).__name__}")
                self.close()
                pause(0.2)
                continue
            if status is None:
                continue
            self.stats.status("rpc", status, (method, target if len(str(target)) < 200 else str(target)[:200], note), content)
            if on_answer is not None:
                on_answer(status, content)
        self.close()


# -- peers -----------------------------------------------------------------------

def ws_frame(opcode, payload, fin=True, mask=True, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    k = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((k * (n // 4 + 1))[:n], "big")).to_bytes(n, "big") if n else b""
    return head + k + masked


class Peer:
    """A WebSocket client made by hand on a blocking socket."""

    def __init__(self, cfg, source, rcvbuf=None, timeout=3.0):
        self.cfg = cfg
        self.sock = connect(cfg["p2p_port"], source, timeout=timeout, rcvbuf=rcvbuf)
        self.buf = b""
        self.key = None

    def upgrade(self):
        """Send the opening handshake; the HTTP status of the answer."""
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET /p2p/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.cfg["p2p_port"], key))
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return int(head.split(b" ", 2)[1])

    def _more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("closed")
        self.buf += chunk

    def frame(self):
        """(opcode, payload) of the next frame from the node."""
        while len(self.buf) < 2:
            self._more()
        n, off = self.buf[1] & 0x7F, 2
        if n == 126:
            while len(self.buf) < 4:
                self._more()
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            while len(self.buf) < 10:
                self._more()
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        while len(self.buf) < off + n:
            self._more()
        op, payload = self.buf[0] & 0x0F, self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return op, payload

    def message(self):
        """The next message (skipping pings); None on a close frame."""
        while True:
            op, payload = self.frame()
            if op == 8:
                return None
            if op in (1, 2):
                return cbor2.loads(payload)

    def send(self, mtype, data):
        self.sock.sendall(ws_frame(2, encode(cbor_safe(mtype), cbor_safe(data))))

    def raw(self, data):
        self.sock.sendall(data)

    def hello(self, node_hello, key=None, height=0, head=None, **over):
        self.key = key or KeyPair(os.urandom(32))
        d = {"chain_id": self.cfg["chain_id"], "genesis": self.cfg["genesis"], "version": 1,
             "node_id": self.key.public_key.hex(), "challenge": os.urandom(32).hex(),
             "height": height, "head": head or self.cfg["genesis"]}
        d.update(over)
        self.send("hello", d)
        return d

    def auth(self, node_hello):
        node_id = self.key.public_key.hex()
        sig = self.key.sign(auth_bytes(self.cfg["chain_id"], node_hello["data"]["challenge"], node_id))
        self.send("auth", {"sig": sig.hex()})

    def drain(self, seconds):
        """Read until the node closes or ``seconds`` pass; the close code or a word."""
        self.sock.settimeout(0.1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                op, payload = self.frame()
            except socket.timeout:
                continue
            except (EOFError, OSError):
                return "dropped"
            if op == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else "empty"
        return "open"

    def close(self, rng):
        if rng.random() < 0.5:
            abort(self.sock)
        else:
            self.sock.close()


def cbor_safe(value):
    """value with every lone surrogate replaced (CBOR text is UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [cbor_safe(v) for v in value]
    if isinstance(value, dict):
        return {cbor_safe(k): cbor_safe(v) for k, v in value.items()}
    return value


def junk_messages(rng, cfg):
    """Well-framed messages of every type with data of the wrong shape."""
    hexes = [os.urandom(32).hex(), "zz", 5, None]
    return [
        ("status", {"height": rng.choice(HUGE_INTS + [10**6]), "head": rng.choice(hexes)}),
        ("status", rand_value(rng)),
        ("tx", {"tx": rand_value(rng)}),
        ("tx", {"tx": {"type": {}, "sender": [], "nonce": 2**70}, "attestation": rand_value(rng)}),
        ("block", {"block": {"header": rand_value(rng), "hash": rng.choice(hexes)}, "txs": rand_value(rng)}),
        ("block", rand_value(rng)),
        ("blocks", {"blocks": [rand_value(rng)], "height": rng.choice(HUGE_INTS)}),
        ("get_blocks", {"from": rng.choice(HUGE_INTS), "limit": rng.choice(HUGE_INTS)}),
        ("get_blocks", {"locator": [rng.choice(hexes) for _ in range(rng.choice((1, 65, 500)))]}),
        ("get_blocks", rand_value(rng)),
        (rand_text(rng), rand_value(rng)),
        ("reject", {"reason": rand_text(rng)}),
    ]


def garbage_scenario(peer, rng, cfg):
    """One of the ways a garbage peer misbehaves; returns its name."""
    pick = rng.randrange(12)
    node_hello = peer.message()  # the node speaks first
    if node_hello is None:
        return "closed_at_once"
    if pick == 0:
        peer.raw(ws_frame(2, rng.randbytes(rng.randrange(1, 4000))))
        return "random_binary"
    if pick == 1:
        peer.raw(ws_frame(1, json.dumps({"type": "hello", "data": {}}).encode()))
        return "text_frame"
    if pick == 2:
        peer.raw(ws_frame(2, b"\xff\x00 not cbor" + rng.randbytes(20)))
        return "not_cbor"
    if pick == 3:
        value = cbor_safe(rand_value(rng))
        peer.raw(ws_frame(2, cbor2.dumps(rng.choice([value, cbor2.CBORTag(rng.randrange(1000), value),
                                                      {1: 2, b"type": "x"}, rng.randbytes(40)]))))
        return "cbor_not_a_message"
    if pick == 4:
        for mtype, data in rng.sample(junk_messages(rng, cfg), 4):
            peer.send(mtype, data)
        return "before_hello"
    if pick == 5:
        peer.hello(node_hello)
        peer.hello(node_hello)
        return "second_hello_unauthenticated"
    if pick == 6:
        peer.hello(node_hello)
        peer.send("auth", rng.choice([{"sig": "00" * 64}, {"sig": "zz"}, {}, rand_value(rng)]))
        return "bad_auth"
    if pick == 7:
        peer.hello(node_hello, **rng.choice([{"chain_id": "other"}, {"version": 2}, {"height": 2**64 + 1},
                                             {"node_id": "zz"}, {"challenge": 5}, {"head": None},
                                             {"genesis": "00" * 32}, {"height": -1}]))
        return "bad_hello"
    if pick == 8:  # authenticated, then a second hello claiming another id
        peer.hello(node_hello)
        peer.auth(node_hello)
        peer.hello(node_hello, key=KeyPair(os.urandom(32)))
        return "second_hello_authenticated"
    if pick == 9:  # authenticated, then junk of every type
        peer.hello(node_hello, height=rng.choice((0, 10**6, 2**63)))
        peer.auth(node_hello)
        for mtype, data in junk_messages(rng, cfg):
            peer.send(mtype, data)
        return "authenticated_junk"
    if pick == 10:  # frames no client may send
        peer.raw(rng.choice([
            ws_frame(3, b"reserved opcode"), ws_frame(2, b"rsv", rsv=7), ws_frame(2, b"unmasked", mask=False),
            ws_frame(0, b"continuation without a start"), ws_frame(9, b"p" * 200),  # control frame over 125
            ws_frame(8, b"\x03\xe7bad close code"), ws_frame(2, b"x", fin=False) + ws_frame(2, b"y"),
        ]))
        return "bad_frame"
    # a frame that declares far more than it sends
    peer.raw(bytes([0x82, 0xFF]) + struct.pack("!Q", rng.choice((1 << 25, 1 << 62))) + os.urandom(4) + b"abc")
    return "declared_huge"


def garbage(cfg, stats, index):
    rng = random.Random(f"{cfg['seed']}-garbage-{index}")
    n = 0
    while pause(GARBAGE_PAUSE):
        # Half from a few addresses (which the node may back off), half each
        # from an address of its own, as an attacker with many would.
        i = n * GARBAGE_THREADS + index
        source = GARBAGE_SOURCES[i % len(GARBAGE_SOURCES)] if n % 2 else fresh_source(i)
        n += 1
        try:
            peer = Peer(cfg, source)
        except OSError as e:
            stats.count(f"garbage.connect_failed.{type(e).__name__}")
            continue
        stats.count("garbage.connections")
        try:
            if rng.random() < 0.05:  # not a WebSocket at all
                peer.raw(rng.choice([b"GET /p2p/ws HTTP/1.1\r\nHost: x\r\n\r\n", rng.randbytes(100) + b"\r\n\r\n",
                                     b"POST /p2p/ws HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]))
                peer.sock.settimeout(1.0)
                while b"\r\n" not in peer.buf:
                    peer._more()
                line = peer.buf.split(b"\r\n", 1)[0].split(b" ")
                if len(line) > 1 and line[1].isdigit():
                    stats.status("garbage", int(line[1]), "plain http on /p2p/ws", peer.buf)
                continue
            status = peer.upgrade()
            if status != 101:
                stats.status("garbage", status, "upgrade", peer.buf)
                continue
            name = garbage_scenario(peer, rng, cfg)
            stats.count(f"garbage.sent.{name}")
            stats.count(f"garbage.ended.{peer.drain(GARBAGE_DRAIN)}")
        except (OSError, EOFError, ValueError, cbor2.CBORDecodeError) as e:
            stats.count(f"garbage.broken.{type(e).__name__}")
        finally:
            peer.close(rng)


def flood(cfg, stats):
    """An authenticated peer that asks for blocks and never reads.  Each
    connection proves a new node id (ids cost nothing), so a ban of one id
    does not end the flood."""
    rng = random.Random(f"{cfg['seed']}-flood")
    while pause(FLOOD_PAUSE):
        try:
            peer = Peer(cfg, FLOOD_SOURCE, rcvbuf=4096, timeout=5.0)
            status = peer.upgrade()
            if status != 101:
                stats.status("flood", status, "upgrade", peer.buf)
                peer.close(rng)
                pause(1.0)
                continue
            node_hello = peer.message()
            if node_hello is None:
                stats.count("flood.refused")
                peer.close(rng)
                pause(1.0)
                continue
            peer.hello(node_hello, key=KeyPair(rng.randbytes(32)))
            peer.auth(node_hello)
        except (OSError, EOFError, ValueError, cbor2.CBORDecodeError) as e:
            stats.count(f"flood.handshake_failed.{type(e).__name__}")
            pause(1.0)
            continue
        stats.count("flood.handshakes")
        # From here on the socket is never read.
        opened, sent, ended = time.monotonic(), 0, "age"
        peer.sock.settimeout(2.0)
        try:
            while not STOP.is_set() and time.monotonic() - opened < FLOOD_CONN_SECONDS:
                burst = FLOOD_BURST if sent < FLOOD_PER_CONN else 1
                for _ in range(burst):
                    ask = rng.choice([{"from": 1, "limit": 512}, {"locator": [cfg["genesis"]], "limit": 512},
                                      {"from": rng.randint(1, 20), "limit": 512}])
                    peer.send("get_blocks", ask)
                sent += burst
                pause(FLOOD_EVERY if sent < FLOOD_PER_CONN else 1.0)
            ended = "stop" if STOP.is_set() else "age"
        except socket.timeout:
            ended = "send_blocked"  # the node stopped reading this peer
        except OSError:
            ended = "dropped"  # the node dropped it
        stats.count("flood.get_blocks", sent)
        stats.count(f"flood.ended.{ended}")
        abort(peer.sock)


class SlowClient:
    def __init__(self, kind, rng):
        self.kind = kind
        self.rng = rng
        self.sock = None

    def open(self, cfg):
        self.sock = connect(cfg["rpc_port"], timeout=2.0)
        self.sock.setblocking(False)
        host = f"Host: 127.0.0.1:{cfg['rpc_port']}\r\n".encode()
        if self.kind == "body":
            self.todo = (b"POST /rpc/sendTxs HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n[" % SLOW_LENGTH)
            self.sock.send(self.todo)  # the headers at once, then the body a byte at a time
            self.todo = None
        elif self.kind == "headers":
            self.todo = b"GET /rpc/getHead HTTP/1.1\r\n" + host + b"X-Slow: "
        else:
            self.todo = b"GET /rpc/getHead HTTP/1.1\r\n" + host + b"\r\n"
        self.answer = b""

    def next_byte(self):
        if self.todo:
            byte, self.todo = self.todo[:1], self.todo[1:]
            return byte
        return b" " if self.kind == "body" else (b"a" if self.kind == "headers" else b"")

    def tick(self, cfg, stats):
        """Send one byte and read what came; False once the node closed it."""
        if self.sock is None:
            self.open(cfg)
            stats.count(f"slow.{self.kind}.connections")
            return True
        try:
            byte = self.next_byte()
            if byte:
                self.sock.send(byte)
        except BlockingIOError:
            pass
        except OSError:
            pass  # closed: read what the node said
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return self.closed(stats)
                self.answer += chunk
        except BlockingIOError:
            pass
        except OSError:
            return self.closed(stats)
        if self.kind == "request" and b"\r\n\r\n" in self.answer:
            return self.closed(stats)  # answered: start again
        return True

    def closed(self, stats):
        line = self.answer.split(b"\r\n", 1)[0].split(b" ")
        if len(line) > 1 and line[1].isdigit():
            stats.status(f"slow.{self.kind}", int(line[1]), self.kind, self.answer)
        else:
            stats.count(f"slow.{self.kind}.closed_without_answer")
        self.sock.close()
        self.sock = None
        return False


def slow(cfg, stats):
    rng = random.Random(f"{cfg['seed']}-slow")
    clients = ([SlowClient("body", rng) for _ in range(SLOW_BODIES)]
               + [SlowClient("headers", rng) for _ in range(SLOW_HEADERS)]
               + [SlowClient("request", rng) for _ in range(SLOW_REQUESTS)])
    while pause(SLOW_EVERY):
        for c in clients:
            try:
                c.tick(cfg, stats)
            except OSError as e:
                stats.count(f"slow.connect_failed.{type(e).__name__}")
                if c.sock is not None:
                    c.sock.close()
                    c.sock = None
    for c in clients:
        if c.sock is not None:
            c.sock.close()


def main(argv):
    cfg = json.loads(argv[1])
    stats = Stats()
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    attacks = cfg.get("attacks") or ATTACKS
    threads = []
    if "rpc" in attacks:
        threads += [threading.Thread(target=Fuzzer(cfg, stats, i).run, name=f"rpc{i}") for i in range(RPC_THREADS)]
    if "garbage" in attacks:
        threads += [threading.Thread(target=garbage, args=(cfg, stats, i), name=f"garbage{i}") for i in range(GARBAGE_THREADS)]
    if "flood" in attacks:
        threads.append(threading.Thread(target=flood, args=(cfg, stats), name="flood"))
    if "slow" in attacks:
        threads.append(threading.Thread(target=slow, args=(cfg, stats), name="slow"))
    failed = []

    def guarded(target):
        def run():
            try:
                target()
            except BaseException as e:  # an attacker's own bug: report it, stop the rest
                failed.append(f"{threading.current_thread().name}: {type(e).__name__}: {e}")
                STOP.set()
                raise
        return run

    for t in threads:
        t.run = guarded(t.run)
        t.daemon = True
        t.start()
    sys.stderr.write(f"attack started: {', '.join(attacks)}\n")
    STOP.wait(cfg["seconds"])
    STOP.set()
    shut_all()
    deadline = time.monotonic() + 15
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    print(json.dumps({"counts": dict(sorted(stats.counts.items())), "server_errors": stats.server_errors,
                      "failed": failed, "stuck": stuck}), flush=True)
    return 1 if failed or stuck else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
