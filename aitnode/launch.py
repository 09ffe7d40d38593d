"""Start ``twistd aitnode`` (or ``twistd aitcoordinator``) as a child process.

The one place for what every launcher of a node process needs: the node's
folder and its node.ini, the twistd command line, the child's environment,
the log line that says a service is listening, and the way it is stopped
(SIGTERM, then SIGKILL past a grace period).

The launchers are tests/procs.py and aitnode/devnet.py (Twisted process
protocols) and bench/node.py (subprocess and a reader thread).  Each keeps
its own driver: how it reads the child's output and how it waits.  Nothing
here imports Twisted at module level; :func:`stop_spawned` imports what it
needs when it is called.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "tcp:0:interface=127.0.0.1"  # an ephemeral port on loopback
STOP_GRACE = 30.0  # seconds between SIGTERM and SIGKILL

# twistd itself: `python -m twisted` is `twist`, which has other options and
# ignores the node's [log] format.  argv[0] is set so usage messages name it.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"

# The same under cProfile with a CPU-time clock (other jobs on the machine do
# not count); argv[1] is where the stats go.  twistd re-raises SIGTERM after a
# clean stop, which would lose the dump: that step is skipped.
_PROFILED_TWISTD = """
import cProfile, sys, time
import twisted.application.app as A
A._exitWithSignal = lambda sig: None
from twisted.scripts.twistd import run
path = sys.argv[1]
sys.argv = ["twistd"] + sys.argv[2:]
prof = cProfile.Profile(time.process_time)
try:
    prof.runcall(run)
except SystemExit:
    pass
finally:
    prof.dump_stats(path)
"""

# What a node (and the coordinator) logs once a port listens, as a text
# line or inside a JSON log line's "message": "rpc listening on http://...".
LISTENING = re.compile(rb"(\w+) listening on http://([\d.]+):(\d+)")


def twistd_argv(app_args, profile=None):
    """argv for ``twistd -n --pidfile= APP ...`` run by this Python.

    ``profile``: a path; the child runs under cProfile and dumps there."""
    if profile:
        return [sys.executable, "-c", _PROFILED_TWISTD, profile, "--pidfile=", "-n", *app_args]
    return [sys.executable, "-c", TWISTD, "--pidfile=", "-n", *app_args]


def node_args(config_path):
    """The application part of a node's twistd command line."""
    return ["aitnode", "--config", config_path]


def child_env(extra=None):
    """The environment for a child: ours less AITNODE_* (a node would take
    them as overrides, and refuses unknown ones), with the repository on
    PYTHONPATH (twistd finds the plugins there) and unbuffered output."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AITNODE_")}
    old = environ.get("PYTHONPATH")
    environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(extra or {})
    return environ


def listening(output):
    """{service name: (host, port)} for every "NAME listening on" line in
    ``output`` (bytes), e.g. {"rpc": ("127.0.0.1", 4321), "p2p": ...}."""
    return {m.group(1).decode(): (m.group(2).decode(), int(m.group(3))) for m in LISTENING.finditer(output)}


# -- node.ini ----------------------------------------------------------------

def node_sections(chain_id, data_dir="data", genesis="genesis.json", key=None, rpc=LOOPBACK,
                  admin_token_file=None, p2p=None, peers=()):
    """The sections every launcher starts from: [node], [rpc], [log] (text,
    info) and, with ``p2p`` (an endpoint, or True for an ephemeral loopback
    port) or ``peers`` (ws:// URLs), [p2p].  A value of None writes no key."""
    sections = {
        "node": {"chain_id": chain_id, "data_dir": data_dir, "genesis": genesis, "key": key},
        "rpc": {"listen": rpc, "admin_token_file": admin_token_file},
        "log": {"format": "text", "level": "info"},
    }
    if p2p or peers:
        sections["p2p"] = {"listen": p2p if isinstance(p2p, str) else LOOPBACK, "peers": ", ".join(peers) or None}
    return sections


def merge(sections, more):
    """Merge {section: {key: value}} ``more`` into ``sections``; returns it."""
    for section, keys in (more or {}).items():
        sections.setdefault(section, {}).update(keys)
    return sections


def write_ini(path, sections, raw=None):
    """Write ``sections`` as an ini file (keys valued None left out);
    ``raw`` text is appended as it is (for deliberately bad files)."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in keys.items() if v is not None]
        lines.append("")
    if raw:
        lines.append(raw)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class NodeFolder:
    """A node's own folder: genesis.json, node.key.json (given a key),
    admin.token (given a token), node.ini, and data/ once it runs.

    ``sections`` are merged over :func:`node_sections`; ``chain_id``
    defaults to the genesis document's.  :meth:`write_config` merges more
    and rewrites node.ini (a restarted node reads the new one).
    """

    def __init__(self, basedir, genesis_doc, key=None, admin_token=None, sections=None,
                 p2p=False, peers=(), chain_id=None):
        self.basedir = os.path.abspath(basedir)
        os.makedirs(self.basedir, exist_ok=True)
        self.doc = genesis_doc
        self.key = key
        self.genesis_path = os.path.join(self.basedir, "genesis.json")
        self.key_path = os.path.join(self.basedir, "node.key.json")
        self.token_path = os.path.join(self.basedir, "admin.token")
        self.config_path = os.path.join(self.basedir, "node.ini")
        self.data_dir = os.path.join(self.basedir, "data")
        self.write_genesis(genesis_doc)
        if key is not None:
            key.save(self.key_path)
        if admin_token is not None:
            with open(self.token_path, "w") as f:
                f.write(admin_token + "\n")
        self.sections = node_sections(
            chain_id or genesis_doc["chain_id"], key="node.key.json" if key is not None else None,
            admin_token_file="admin.token" if admin_token is not None else None, p2p=p2p, peers=peers)
        self.write_config(sections)

    @property
    def args(self):
        return node_args(self.config_path)

    @property
    def p2p_listens(self):
        return bool(self.sections.get("p2p", {}).get("listen"))

    def write_genesis(self, doc):
        with open(self.genesis_path, "w") as f:
            json.dump(doc, f, indent=2)

    def write_config(self, sections=None, raw=None):
        merge(self.sections, sections)
        write_ini(self.config_path, self.sections, raw)


# -- stopping ------------------------------------------------------------------

def stop_popen(proc, grace=STOP_GRACE):
    """Stop a :class:`subprocess.Popen` child started with
    ``start_new_session=True``: SIGTERM, wait up to ``grace`` seconds, then
    SIGKILL its whole session (the node's verifier workers go with it)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_spawned(reactor, transport, ended, sig=signal.SIGTERM, grace=STOP_GRACE):
    """The same for a child of ``reactor.spawnProcess``: send ``sig``, and
    SIGKILL unless ``ended`` (a Deferred fired when the process has ended)
    fired within ``grace`` seconds.  A Deferred firing (None) once it ended."""
    from twisted.internet import defer
    from twisted.internet.error import ProcessExitedAlready

    if ended.called:
        return defer.succeed(None)

    def send(s):
        with contextlib.suppress(ProcessExitedAlready):
            transport.signalProcess(s)

    send(sig)
    done = defer.Deferred()
    killer = reactor.callLater(grace, send, signal.SIGKILL)

    def fired(result):
        if killer.active():
            killer.cancel()
        done.callback(None)
        return result

    ended.addBoth(fired)
    return done
