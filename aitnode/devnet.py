"""The devnet in one command: `python -m aitnode.devnet [--authorities N] [--reset]`.

Starts, as real processes on loopback: N authority nodes (1 by default), a
follower node, the mock coordinator and the mock miner (which pays escrow
as a client and claims receipts through the follower).  Every node peers
with every other.  Prints the URLs; Ctrl-C stops everything cleanly.  All
state lives in one folder (devnet-state/ by default) that --reset wipes
first: the chain's genesis (the repository's genesis.json listing the N
authorities), the keys of authorities 2..N (made on first start; the first
uses the public devnet key in etc/devnet/), each node's data, and the logs
in <state>/logs/; the console shows the miner and the devnet's own lines.
"""

import argparse
import json
import os
import shutil
import signal
import sys

from twisted.internet import defer, protocol, task

from aitnode import config, launch
from aitnode.crypto import KeyPair
from aitnode.errors import ConfigError

ROOT = launch.ROOT
ETC = os.path.join(ROOT, "etc")
STOP_GRACE = 15  # seconds from SIGTERM to SIGKILL for each child
# Authority k listens on base port + k (k >= 2); +1 is the follower's and
# +10 the coordinator's, so at most 9 authorities fit below it.
MAX_AUTHORITIES = 9


class Child(protocol.ProcessProtocol):
    def __init__(self, name, logfile=None, echo=False):
        self.name = name
        self.logfile = logfile
        self.echo = echo
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.buffer = b""
        self._partial = b""
        self.running = False

    def connectionMade(self):
        self.running = True

    def outReceived(self, data):
        if self.logfile:
            self.logfile.write(data)
            self.logfile.flush()
        self.buffer = (self.buffer + data)[-65536:]
        if not self.ready.called and launch.LISTENING.search(self.buffer):
            self.ready.callback(self)
        if self.echo:
            self._partial += data
            *lines, self._partial = self._partial.split(b"\n")
            for line in lines:
                if line.strip():
                    print(f"[{self.name}] {line.decode('utf-8', 'replace')}", flush=True)

    errReceived = outReceived

    def processEnded(self, reason):
        self.running = False
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"{self.name} exited before it was ready; see its log"))
            self.ready.addErrback(lambda _: None)  # reported by whoever waited, if anyone did
        self.ended.callback(reason.value.exitCode)


class Layout:
    """Names and ports of the devnet's nodes.

    Authority 1 is "authority" (RPC on the base port, peers on the base
    peer port), authority k >= 2 is "authorityK" (base + k); the follower
    takes base + 1 and the coordinator the base RPC port + 10.  Authority k
    dials authorities 1..k-1 and the follower dials every authority, so
    each pair of nodes has one connection.
    """

    def __init__(self, n, port, p2p_port):
        self.n = n
        self.authorities = [("authority" if k == 1 else f"authority{k}", port + (0 if k == 1 else k),
                             p2p_port + (0 if k == 1 else k)) for k in range(1, n + 1)]
        self.follower = ("follower", port + 1, p2p_port + 1)
        self.coordinator = port + 10

    @staticmethod
    def ws(p2p):
        return f"ws://127.0.0.1:{p2p}/p2p/ws"

    def authority_peers(self, k):
        """The peer URLs authority k (1-based) dials."""
        return [self.ws(p2p) for _, _, p2p in self.authorities[:k - 1]]

    def follower_peers(self):
        return [self.ws(p2p) for _, _, p2p in self.authorities]


def authority_keys(state, n):
    """The key files of the n authorities: etc/devnet's public key first,
    the others made in <state>/keys on first start (mode 0600) and kept."""
    paths = [os.path.join(ETC, "devnet", "authority.key.json")]
    keys = os.path.join(state, "keys")
    for k in range(2, n + 1):
        path = os.path.join(keys, f"authority{k}.key.json")
        if not os.path.exists(path):
            os.makedirs(keys, mode=0o700, exist_ok=True)
            KeyPair.generate().save(path)
        paths.append(path)
    return paths


def devnet_genesis(state, key_paths, interval):
    """<state>/genesis.json: the repository's genesis.json listing these
    authorities, written on first start and kept.  ConfigError when the
    state was made with other authorities (--reset starts over)."""
    path = os.path.join(state, "genesis.json")
    authorities = []
    for key_path in key_paths:
        key = KeyPair.load(key_path)
        authorities.append({"address": key.address, "public_key": key.public_key.hex()})
    if os.path.exists(path):
        with open(path) as f:
            listed = json.load(f).get("authorities")
        if listed != authorities:
            raise ConfigError(f"{state} holds a devnet of {len(listed or [])} authorities, not {len(authorities)};"
                              " pass --reset to start a new one")
        return path
    if os.path.isdir(os.path.join(state, "follower")) and len(authorities) > 1:
        # made before the state folder held its genesis: one authority
        raise ConfigError(f"{state} holds a devnet of 1 authority, not {len(authorities)};"
                          " pass --reset to start a new one")
    with open(os.path.join(ROOT, "genesis.json")) as f:
        doc = json.load(f)
    doc["authorities"] = authorities
    params = doc.setdefault("params", {})
    if "block_interval_ms" in params:  # the block interval as a chain parameter
        params["block_interval_ms"] = round(interval * 1000)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def node_config(path, state, name, rpc, p2p, interval, coord, genesis, key=None, peers=()):
    """Write one devnet node's ini (its data in <state>/<name>)."""
    sections = launch.node_sections(
        "ait-devnet", data_dir=os.path.join(state, name), genesis=genesis, key=key,
        rpc=f"tcp:{rpc}:interface=127.0.0.1", admin_token_file=os.path.join(ETC, "devnet", "admin.token"),
        p2p=f"tcp:{p2p}:interface=127.0.0.1", peers=peers)
    launch.merge(sections, {
        "coordinator": {"url": f"http://127.0.0.1:{coord}", "allow": "127.0.0.1"},
        "verifier": {"workers": "0"},
    })
    if "interval" in config.SCHEMA.get("proposer", {}):  # node-local until the chain carries it
        launch.merge(sections, {"proposer": {"interval": interval}})
    launch.write_ini(path, sections)
    return path


async def main(reactor, args):
    state = os.path.abspath(args.state)
    if args.reset and os.path.isdir(state):
        shutil.rmtree(state)
        print(f"devnet: wiped {state}")
    logs = os.path.join(state, "logs")
    os.makedirs(logs, exist_ok=True)
    layout = Layout(args.authorities, args.port, args.p2p_port)
    keys = authority_keys(state, args.authorities)
    try:
        genesis = devnet_genesis(state, keys, args.interval)
    except ConfigError as e:
        print(f"devnet: {e}", file=sys.stderr)
        return 1
    coord = layout.coordinator
    inis = []
    for k, (name, rpc, p2p) in enumerate(layout.authorities, 1):
        inis.append((name, node_config(os.path.join(state, f"{name}.ini"), state, name, rpc, p2p, args.interval,
                                       coord, genesis, key=keys[k - 1], peers=layout.authority_peers(k))))
    name, rpc_f, p2p_f = layout.follower
    follower_ini = node_config(os.path.join(state, "follower.ini"), state, name, rpc_f, p2p_f, args.interval,
                               coord, genesis, peers=layout.follower_peers())
    env = launch.child_env()
    children = []

    def spawn(name, argv, echo=False):
        child = Child(name, open(os.path.join(logs, f"{name}.log"), "ab"), echo)
        reactor.spawnProcess(child, argv[0], argv, env=env, path=state)
        children.append(child)
        return child

    async def stop_all():
        await defer.DeferredList([launch.stop_spawned(reactor, c.transport, c.ended, grace=STOP_GRACE)
                                  for c in reversed(children) if c.running])

    stopping = defer.Deferred()
    shutting_down = []

    def on_shutdown():
        shutting_down.append(True)
        return defer.ensureDeferred(stop_all())

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        c = spawn("coordinator", launch.twistd_argv([
            "aitcoordinator", "--listen", f"tcp:{coord}:interface=127.0.0.1",
            "--key", f"{ETC}/devnet/coordinator.key.json", "--chain-id", "ait-devnet"]))
        started = [spawn(name, launch.twistd_argv(launch.node_args(ini))) for name, ini in inis]
        await defer.gatherResults([c.ready] + [a.ready for a in started], consumeErrors=True)
        b = spawn("follower", launch.twistd_argv(launch.node_args(follower_ini)))
        await b.ready
    except Exception as e:
        print(f"devnet: could not start: {getattr(e, 'subFailure', e)} (logs in {logs})", file=sys.stderr)
        await stop_all()
        return 1
    print(banner(layout, state, logs), flush=True)
    if not args.no_miner:
        spawn("miner", [sys.executable, "-m", "aitnode.cli", "miner", "--node", f"http://127.0.0.1:{rpc_f}",
                        "--key", f"{ETC}/devnet/miner.key.json", "--client-key", f"{ETC}/devnet/alice.key.json",
                        "--interval", str(args.miner_interval)], echo=True)
    # Run until Ctrl-C (the reactor's SIGINT handler stops it, and the
    # shutdown trigger above stops the children) or a node dies.
    def ended(code, name):
        if name != "miner" and not stopping.called and not shutting_down:
            stopping.callback(name)

    for child in children:
        child.ended.addCallback(ended, child.name)
    name = await stopping
    print(f"devnet: {name} exited; stopping (see {logs}/{name}.log)", file=sys.stderr)
    return 1


def banner(layout, state, logs):
    rpc_a, rpc_b = layout.authorities[0][1], layout.follower[1]
    lines = [
        "",
        f"devnet is up: {layout.n} authorit{'y' if layout.n == 1 else 'ies'} and a follower"
        f" (state in {state}; logs in {logs})",
        f"  client page      http://127.0.0.1:{rpc_a}/          (follower's: http://127.0.0.1:{rpc_b}/)",
    ]
    for name, rpc, p2p in layout.authorities:
        lines.append(f"  {name + ' RPC':<16} http://127.0.0.1:{rpc}/rpc/getHead   (metrics /rpc/metrics,"
                     f" peers ws://127.0.0.1:{p2p}/p2p/ws)")
    lines += [
        f"  follower RPC     http://127.0.0.1:{rpc_b}/rpc/getHead",
        f"  metrics          http://127.0.0.1:{rpc_a}/rpc/metrics",
        f"  peers            http://127.0.0.1:{rpc_b}/p2p/peers",
        f"  coordinator      http://127.0.0.1:{layout.coordinator}/attest/receipt",
        f"  genesis          {state}/genesis.json   (ait verify balance|tx|receipt ... --genesis it)",
        f"  devnet keys      {ETC}/devnet/ (alice is funded; never use these keys anywhere else)",
    ]
    if layout.n > 1:
        lines.append(f"  authority keys   {ETC}/devnet/authority.key.json and {state}/keys/ (made for this devnet)")
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run(argv=None):
    p = argparse.ArgumentParser(prog="devnet", description=__doc__.splitlines()[0])
    p.add_argument("--state", default=os.path.join(os.getcwd(), "devnet-state"), help="state folder (default %(default)s)")
    p.add_argument("--reset", action="store_true", help="wipe the state folder first")
    p.add_argument("--authorities", type=int, default=1, metavar="N",
                   help=f"authority nodes, 1 to {MAX_AUTHORITIES} (default %(default)s)")
    p.add_argument("--port", type=int, default=8080,
                   help="first authority's RPC port; follower +1, authority K +K, coordinator +10")
    p.add_argument("--p2p-port", type=int, default=7070, help="first authority's peer port; follower +1, authority K +K")
    p.add_argument("--interval", type=float, default=1.0, help="block interval in seconds")
    p.add_argument("--miner-interval", type=float, default=1.0, help="seconds between mock miner jobs")
    p.add_argument("--no-miner", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.authorities <= MAX_AUTHORITIES:
        p.error(f"--authorities must be from 1 to {MAX_AUTHORITIES}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))


if __name__ == "__main__":
    run()
