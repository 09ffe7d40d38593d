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
import re
import shutil
import signal
import sys

from twisted.internet import defer, protocol, task

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ETC = os.path.join(ROOT, "etc")
READY = re.compile(rb"(\w+) listening on http://([\d.]+):(\d+)")


NODE_INI = """\
[node]
chain_id = ait-devnet
data_dir = {data}
genesis = {root}/genesis.json
{key_line}

[rpc]
listen = tcp:{rpc}:interface=127.0.0.1
admin_token_file = {etc}/devnet/admin.token

[p2p]
listen = tcp:{p2p}:interface=127.0.0.1
{peers_line}

[proposer]
interval = {interval}

[coordinator]
url = http://127.0.0.1:{coord}
allow = 127.0.0.1

[verifier]
workers = 0

[log]
format = {log_format}
"""


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
        if not self.ready.called and READY.search(self.buffer):
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


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


async def main(reactor, args):
    state = os.path.abspath(args.state)
    if args.reset and os.path.isdir(state):
        shutil.rmtree(state)
        print(f"devnet: wiped {state}")
    logs = os.path.join(state, "logs")
    os.makedirs(logs, exist_ok=True)
    rpc_a, rpc_b, coord = args.port, args.port + 1, args.port + 10
    p2p_a, p2p_b = args.p2p_port, args.p2p_port + 1
    common = dict(root=ROOT, etc=ETC, coord=coord, interval=args.interval, log_format="text")
    write(os.path.join(state, "authority.ini"), NODE_INI.format(
        data=os.path.join(state, "authority"), key_line=f"key = {ETC}/devnet/authority.key.json",
        rpc=rpc_a, p2p=p2p_a, peers_line="", **common))
    write(os.path.join(state, "follower.ini"), NODE_INI.format(
        data=os.path.join(state, "follower"), key_line="",
        rpc=rpc_b, p2p=p2p_b, peers_line=f"peers = ws://127.0.0.1:{p2p_a}/p2p/ws", **common))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    children = []

    def spawn(name, argv, echo=False):
        child = Child(name, open(os.path.join(logs, f"{name}.log"), "ab"), echo)
        reactor.spawnProcess(child, sys.executable, [sys.executable] + argv, env=env, path=state)
        children.append(child)
        return child

    async def stop_all():
        for child in reversed(children):
            if child.running:
                child.transport.signalProcess("TERM")
        waits = [c.ended for c in children if c.running]
        if waits:
            done = defer.DeferredList(waits)
            timer = reactor.callLater(15, lambda: [c.transport.signalProcess("KILL") for c in children if c.running])
            await done
            if timer.active():
                timer.cancel()

    stopping = defer.Deferred()
    shutting_down = []

    def on_shutdown():
        shutting_down.append(True)
        return defer.ensureDeferred(stop_all())

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    # twistd itself (`python -m twisted` would be `twist`, with other options)
    twistd = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
              "--nodaemon", "--pidfile="]
    try:
        c = spawn("coordinator", twistd + ["aitcoordinator", "--listen", f"tcp:{coord}:interface=127.0.0.1",
                                           "--key", f"{ETC}/devnet/coordinator.key.json", "--chain-id", "ait-devnet"])
        a = spawn("authority", twistd + ["aitnode", "--config", os.path.join(state, "authority.ini")])
        await defer.gatherResults([c.ready, a.ready], consumeErrors=True)
        b = spawn("follower", twistd + ["aitnode", "--config", os.path.join(state, "follower.ini")])
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
        spawn("miner", ["-m", "aitnode.cli", "miner", "--node", f"http://127.0.0.1:{rpc_b}",
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
