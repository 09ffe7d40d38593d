"""Run real ``twistd aitnode`` processes on loopback from trial tests.

Modelled on Tahoe-LAFS's integration/util.py: a :class:`NodeProcess`
writes a node folder (genesis.json, key file, admin token, node.ini) under
the test's temp dir, spawns twistd in it with ``reactor.spawnProcess``,
waits for the "rpc listening on http://127.0.0.1:PORT" line, and exposes
``.url``.  The folder, the command line, the environment, that line and
the stop sequence come from :mod:`aitnode.launch`, shared with the devnet
and the benchmark.  Everything it starts is killed in the test's cleanup, so trial's
reactor stays clean whatever the test did.

The HTTP helpers use treq with a non-persistent connection pool (no
connection outlives its request), and :func:`wait_for` polls a condition
with ``deferLater`` up to a deadline instead of sleeping.

Every helper that waits returns a Deferred, so it can be awaited from an
``async def`` or given callbacks; decorate ``async def`` test methods with
:func:`inline` so trial gets a Deferred.
"""

import functools
import json
import os
import signal
import sys

import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from aitnode import launch
from aitnode.launch import child_env as twistd_environ, twistd_argv  # noqa: F401 (twistd_environ: for tests)
from tests.common import ADMIN_TOKEN, AUTHORITY, CHAIN_ID, genesis_doc

REPO_ROOT = launch.ROOT  # for tests that run the tree's own scripts


def inline(fn):
    """Make an ``async def`` return a Deferred when called.

    Use it on trial test methods written as ``async def``; the helpers
    below use it too, so they can be awaited or given callbacks.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        return defer.Deferred.fromCoroutine(fn(*args, **kw))
    return wrapper


class WaitTimeout(AssertionError):
    pass


@inline
async def wait_for(predicate, timeout=20.0, interval=0.1, message=None):
    """Poll ``predicate`` (plain or async; a true result ends the wait).

    Returns the predicate's first true result.  After ``timeout`` seconds
    raises WaitTimeout with ``message`` (a string, or a callable giving one).
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = predicate()
        if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return result
        if reactor.seconds() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"gave up after {timeout} s waiting for {text or predicate!r}")
        await deferLater(reactor, interval, lambda: None)


def many(calls, limit=8):
    """Run zero-argument callables (each giving a Deferred or coroutine), at
    most ``limit`` at a time; a Deferred firing with their results in order."""
    sem = defer.DeferredSemaphore(limit)

    def one(call):
        return defer.ensureDeferred(call())

    d = defer.gatherResults([sem.run(one, c) for c in calls], consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
    return d


def sleep(seconds):
    """A Deferred that fires after ``seconds`` (pacing only, never correctness)."""
    return deferLater(reactor, seconds, lambda: None)


# -- HTTP ------------------------------------------------------------------

_pool = None


def pool():
    """One non-persistent pool: each request opens and closes its connection."""
    global _pool
    if _pool is None:
        _pool = HTTPConnectionPool(reactor, persistent=False)
        _pool.retryAutomatically = False
    return _pool


@inline
async def request(method, url, body=None, headers=None, raw=None, timeout=15):
    """One HTTP request; returns (status, decoded JSON body or None).

    ``body`` is JSON-encoded; ``raw`` (bytes) is sent as it is.
    """
    hdrs = {b"Content-Type": [b"application/json"]}
    for k, v in (headers or {}).items():
        hdrs[k.encode() if isinstance(k, str) else k] = [v.encode() if isinstance(v, str) else v]
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    resp = await treq.request(method, url, data=data, headers=hdrs, pool=pool(), timeout=timeout)
    content = await treq.content(resp)
    try:
        decoded = json.loads(content) if content else None
    except ValueError:
        decoded = {"_raw": content.decode("utf-8", "replace")}
    return resp.code, decoded


def get(url, **kw):
    return request("GET", url, **kw)


def post(url, body=None, **kw):
    return request("POST", url, body=body, **kw)


# -- node processes ------------------------------------------------------

def turns_doc(interval, **kw):
    """A genesis (tests.common.genesis_doc) whose turns are ``interval``
    seconds apart (block_interval_ms), the proposer interval its nodes run
    with.  Several authorities need it: with the 10 ms turns of
    genesis_doc, every authority's turn has long come each time its
    proposer looks, so all of them propose at every height and fork."""
    return genesis_doc(block_interval_ms=round(interval * 1000), **kw)


def stop_process(proto, sig=signal.SIGTERM, timeout=launch.STOP_GRACE):
    """Send sig to a child; a Deferred firing with its protocol once it
    ended (SIGKILL past timeout seconds)."""
    if proto is None:
        return defer.succeed(proto)
    d = launch.stop_spawned(reactor, proto.transport, proto.ended, sig, timeout)
    return d.addCallback(lambda _: proto)


class _NodeProtocol(ProcessProtocol):
    def __init__(self, owner):
        self.owner = owner
        self.out = bytearray()
        self.err = bytearray()
        self.ended = defer.Deferred()
        self.exit_code = None
        self.exit_signal = None
        self.done = False

    def outReceived(self, data):
        self.out += data
        if self.owner.verbose:
            sys.stderr.write(data.decode("utf-8", "replace"))

    def errReceived(self, data):
        self.err += data
        if self.owner.verbose:
            sys.stderr.write(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exit_signal = getattr(reason.value, "signal", None)
        if isinstance(reason.value, ProcessDone):
            self.exit_code = 0
        self.done = True
        self.ended.callback(self)


class NodeProcess(launch.NodeFolder):
    """One aitnode node folder (:class:`aitnode.launch.NodeFolder`), and the
    twistd process running on it.

    ``sections`` is {section: {key: value}} merged over the defaults (a
    value of None drops that key); ``env`` is added to every start's
    environment.  The folder lives under ``testcase.mktemp()`` unless
    ``basedir`` is given.  Restarting (stop, then start) keeps the folder
    and its data_dir; each start gets a new ephemeral port.

    ``p2p=True`` adds ``[p2p] listen`` on an ephemeral loopback port and
    ``peers`` (ws:// URLs, e.g. another node's ``p2p_url``) as ``[p2p]
    peers``; start() then also waits for the "p2p listening" line and sets
    ``p2p_port`` and ``p2p_url``.
    """

    def __init__(self, testcase, doc=None, key=AUTHORITY, sections=None, env=None,
                 basedir=None, admin_token=ADMIN_TOKEN, chain_id=None, interval=0.2, verbose=False,
                 p2p=False, peers=()):
        self.testcase = testcase
        doc = genesis_doc() if doc is None else doc
        self.admin_token = admin_token
        self.env = dict(env or {})
        self.verbose = verbose or bool(os.environ.get("AITNODE_TEST_VERBOSE_NODES"))
        self.proto = None
        self.runs = []  # every _NodeProtocol, oldest first
        self.url = None
        self.port = None
        self.p2p_port = None
        self.p2p_url = None
        defaults = {"proposer": {"interval": repr(interval)}, "verifier": {"workers": "0"}}
        super().__init__(basedir or testcase.mktemp(), doc, key=key, admin_token=admin_token,
                         sections=launch.merge(defaults, sections), p2p=p2p, peers=peers,
                         chain_id=chain_id or doc.get("chain_id", CHAIN_ID))
        testcase.addCleanup(self._cleanup)

    # -- process -------------------------------------------------------
    @property
    def running(self):
        return self.proto is not None and not self.proto.done

    @property
    def output(self):
        """This run's stdout and stderr, decoded."""
        if self.proto is None:
            return ""
        return (bytes(self.proto.out) + bytes(self.proto.err)).decode("utf-8", "replace")

    @property
    def exit_code(self):
        return None if self.proto is None else self.proto.exit_code

    def spawn(self, env=None):
        """Start twistd without waiting; returns the run's protocol."""
        assert not self.running, "node is already running"
        environ = twistd_environ(self.env)
        environ.update(env or {})
        args = twistd_argv(self.args)
        self.url = self.port = None
        self.p2p_port = self.p2p_url = None
        self.proto = _NodeProtocol(self)
        self.runs.append(self.proto)
        reactor.spawnProcess(self.proto, args[0], args, env=environ, path=self.basedir)
        return self.proto

    def _ready(self):
        ports = launch.listening(bytes(self.proto.out))
        if "rpc" in ports:
            host, self.port = ports["rpc"]
            self.url = f"http://{host}:{self.port}"
        if "p2p" in ports:
            host, self.p2p_port = ports["p2p"]
            self.p2p_url = f"ws://{host}:{self.p2p_port}/p2p/ws"
        return self.url and (not self.p2p_listens or self.p2p_url)

    @inline
    async def start(self, env=None, timeout=30):
        """Start and wait until the RPC port (and the p2p port, if any)
        listens; returns self."""
        proto = self.spawn(env)
        await wait_for(lambda: proto.done or self._ready(), timeout=timeout, interval=0.05,
                       message=lambda: f"node to listen; output so far:\n{self.output}")
        if not self._ready():
            raise AssertionError(
                f"node exited (code {proto.exit_code}, signal {proto.exit_signal}) before listening:\n{self.output}")
        return self

    @inline
    async def run_to_exit(self, env=None, timeout=30):
        """Start, expecting the node to exit by itself; returns (exit code, output)."""
        proto = self.spawn(env)
        try:
            await wait_for(lambda: proto.done, timeout=timeout, interval=0.05,
                           message=lambda: f"node to exit; output so far:\n{self.output}")
        finally:
            if not proto.done:
                await self.stop(signal.SIGKILL)
        return proto.exit_code, self.output

    def stop(self, sig=signal.SIGTERM, timeout=launch.STOP_GRACE):
        """Send ``sig``; a Deferred firing with the run's protocol once it ended.

        Past ``timeout`` seconds the process is SIGKILLed (and the Deferred
        still fires when it ends)."""
        return stop_process(self.proto, sig, timeout)

    def kill(self):
        return self.stop(signal.SIGKILL)

    def _cleanup(self):
        self.url = None
        if self.running:
            return self.kill()

    # -- HTTP shortcuts -------------------------------------------------
    def rpc(self, path):
        assert self.url is not None, "node is not listening"
        return self.url + path

    def get(self, path, **kw):
        return get(self.rpc(path), **kw)

    def post(self, path, body=None, **kw):
        return post(self.rpc(path), body, **kw)

    def admin(self, path, body):
        return post(self.rpc(path), body, headers={"Authorization": f"Bearer {self.admin_token}"})

    @inline
    async def head(self):
        status, body = await self.get("/rpc/getHead")
        assert status == 200, (status, body)
        return body

    @inline
    async def wait_height(self, height, timeout=20):
        """Wait until the head is at least ``height``; returns the head."""
        last = {}

        async def reached():
            last.update(await self.head())
            return last if last["height"] >= height else None

        return await wait_for(reached, timeout=timeout,
                              message=lambda: f"height {height} (head is {last})")

    @inline
    async def wait_included(self, tx_hashes, timeout=20):
        """Wait until every hash is included; returns {hash: getTx answer}."""
        done, pending = {}, list(tx_hashes)

        async def check():
            while pending:
                status, body = await self.get(f"/rpc/getTx/{pending[0]}")
                if status != 200 or body["status"] != "included":
                    assert status != 200 or body["status"] != "failed", body
                    return False
                done[pending.pop(0)] = body
            return True

        await wait_for(check, timeout=timeout,
                       message=lambda: f"{len(pending)} transactions to be included")
        return done
