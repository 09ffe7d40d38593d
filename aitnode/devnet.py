"""The devnet in one command: `python -m aitnode.devnet [--reset]`.

Starts, as real processes on loopback: an authority node, a follower node
peered with it, the mock coordinator and the mock miner (which pays escrow
as a client and claims receipts through the follower).  Prints the URLs;
Ctrl-C stops everything cleanly.  All state lives in one folder
(devnet-state/ by default) that --reset wipes first.  Node logs go to
<state>/logs/; the console shows the miner and the devnet's own lines.
"""

import argparse
import os
import shutil
import signal
import sys

from twisted.internet import defer, protocol, task

from aitnode import launch

ROOT = launch.ROOT
ETC = os.path.join(ROOT, "etc")
STOP_GRACE = 15  # seconds from SIGTERM to SIGKILL for each child


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


def node_config(path, state, name, rpc, p2p, interval, coord, key=None, peers=()):
    """Write one devnet node's ini (its data in <state>/<name>)."""
    sections = launch.node_sections(
        "ait-devnet", data_dir=os.path.join(state, name), genesis=os.path.join(ROOT, "genesis.json"), key=key,
        rpc=f"tcp:{rpc}:interface=127.0.0.1", admin_token_file=os.path.join(ETC, "devnet", "admin.token"),
        p2p=f"tcp:{p2p}:interface=127.0.0.1", peers=peers)
    launch.merge(sections, {
        "proposer": {"interval": interval},
        "coordinator": {"url": f"http://127.0.0.1:{coord}", "allow": "127.0.0.1"},
        "verifier": {"workers": "0"},
    })
    launch.write_ini(path, sections)
    return path


async def main(reactor, args):
    state = os.path.abspath(args.state)
    if args.reset and os.path.isdir(state):
        shutil.rmtree(state)
        print(f"devnet: wiped {state}")
    logs = os.path.join(state, "logs")
    os.makedirs(logs, exist_ok=True)
    rpc_a, rpc_b, coord = args.port, args.port + 1, args.port + 10
    p2p_a, p2p_b = args.p2p_port, args.p2p_port + 1
    authority_ini = node_config(os.path.join(state, "authority.ini"), state, "authority", rpc_a, p2p_a,
                                args.interval, coord, key=os.path.join(ETC, "devnet", "authority.key.json"))
    follower_ini = node_config(os.path.join(state, "follower.ini"), state, "follower", rpc_b, p2p_b,
                               args.interval, coord, peers=[f"ws://127.0.0.1:{p2p_a}/p2p/ws"])
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
        a = spawn("authority", launch.twistd_argv(launch.node_args(authority_ini)))
        await defer.gatherResults([c.ready, a.ready], consumeErrors=True)
        b = spawn("follower", launch.twistd_argv(launch.node_args(follower_ini)))
        await b.ready
    except Exception as e:
        print(f"devnet: could not start: {getattr(e, 'subFailure', e)} (logs in {logs})", file=sys.stderr)
        await stop_all()
        return 1
    print(f"""
devnet is up (state in {state}; logs in {logs})
  client page      http://127.0.0.1:{rpc_a}/          (follower's: http://127.0.0.1:{rpc_b}/)
  authority RPC    http://127.0.0.1:{rpc_a}/rpc/getHead
  follower RPC     http://127.0.0.1:{rpc_b}/rpc/getHead
  metrics          http://127.0.0.1:{rpc_a}/rpc/metrics
  peers            http://127.0.0.1:{rpc_b}/p2p/peers
  coordinator      http://127.0.0.1:{coord}/attest/receipt
  devnet keys      {ETC}/devnet/ (alice is funded; never use these keys anywhere else)
Ctrl-C stops everything.
""", flush=True)
    if not args.no_miner:
        spawn("miner", [sys.executable, "-m", "aitnode.cli", "miner", "--node", f"http://127.0.0.1:{rpc_b}",
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


def run(argv=None):
    p = argparse.ArgumentParser(prog="devnet", description=__doc__.splitlines()[0])
    p.add_argument("--state", default=os.path.join(os.getcwd(), "devnet-state"), help="state folder (default %(default)s)")
    p.add_argument("--reset", action="store_true", help="wipe the state folder first")
    p.add_argument("--port", type=int, default=8080, help="authority RPC port; follower +1, coordinator +10")
    p.add_argument("--p2p-port", type=int, default=7070, help="authority peer port; follower +1")
    p.add_argument("--interval", type=float, default=1.0, help="block interval in seconds")
    p.add_argument("--miner-interval", type=float, default=1.0, help="seconds between mock miner jobs")
    p.add_argument("--no-miner", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))


if __name__ == "__main__":
    run()
