"""Read the node's ini configuration file.

The file is parsed with :class:`configparser.ConfigParser` (no
interpolation) and checked against a whitelist (:data:`SCHEMA`): every
section and key has a type and a default, and an unknown section or key is
refused with one line that names the file and lists what is allowed, so a
typo never goes silently ignored.

Any key may be overridden from the environment as
``AITNODE_<SECTION>_<KEY>`` (upper case), e.g. ``AITNODE_RPC_LISTEN`` or
``AITNODE_NODE_DATA_DIR``.  The environment beats the file.  An
``AITNODE_`` variable that names no known key is refused as well.

Relative paths (type ``path``) in the file, and path defaults such as
``data_dir = data``, are resolved against the folder holding the config
file; relative paths given in the environment are
resolved against the current working directory.  Absolute paths are kept.
Nothing here checks that the files exist; the node does that later.
"""

import configparser
import os
from types import SimpleNamespace
from urllib.parse import urlsplit

from aitnode.errors import ConfigError

REQUIRED = object()
ENV_PREFIX = "AITNODE_"

# section -> key -> (type, default, check); check is (predicate, wording) or None.
_POS = (lambda v: v > 0, "must be > 0")
_NONNEG = (lambda v: v >= 0, "must be >= 0")
_ONE = (lambda v: v >= 1, "must be >= 1")


def _one_of(*choices):
    return (lambda v: v in choices, "must be one of " + ", ".join(choices))


SCHEMA = {
    "node": {
        "chain_id": ("str", REQUIRED, None),
        "data_dir": ("path", "data", None),
        "genesis": ("path", REQUIRED, None),
        "key": ("path", None, None),
        "map_size": ("int", 17179869184, _ONE),
        # blocks below the finalized one whose state tree is kept for proofs
        "state_history": ("int", 256, (lambda v: v >= 0, "must be 0 or more")),
        # the proposer's state-tree updates in a child process (off the reactor)
        "tree_worker": ("bool", True, None),
    },
    "rpc": {
        "listen": ("str", "tcp:8080:interface=127.0.0.1", None),
        "admin_token_file": ("path", None, None),
        "max_body_bytes": ("int", 65536, _ONE),
        "max_batch_bytes": ("int", 16777216, _ONE),
        "max_batch_items": ("int", 20000, _ONE),
        "request_deadline": ("float", 30.0, _POS),  # seconds for a request to arrive whole
        "max_connections": ("int", 512, _ONE),  # lowered to stay under the open-files limit
    },
    "p2p": {
        "listen": ("str", None, None),
        "peers": ("peers", [], None),
    },
    "proposer": {
        "interval": ("float", 0.02, _POS),
    },
    "coordinator": {
        "url": ("str", None, None),
        "allow": ("list", [], None),
        "timeout": ("float", 5.0, _POS),
        "max_in_flight": ("int", 32, _ONE),
        "serve_mock": ("bool", False, None),
        "mock_key": ("path", None, None),
    },
    "mempool": {
        "max_size": ("int", 200000, _ONE),
        "max_per_sender": ("int", 1024, _ONE),
    },
    "verifier": {
        "workers": ("int", 2, _NONNEG),  # 0 means verify in process
    },
    "log": {
        "format": ("str", "text", _one_of("json", "text")),
        "level": ("str", "info", _one_of("debug", "info", "warn", "error")),
    },
    "ratelimit": {
        "rate": ("float", 0.0, _NONNEG),  # tokens/s per client; 0 = off
        "burst": ("int", 1000, _ONE),
    },
}

_BOOLS = {"1": True, "yes": True, "true": True, "on": True,
          "0": False, "no": False, "false": False, "off": False}


def _split(raw):
    return [item.strip() for item in raw.split(",") if item.strip()]


def _convert(kind, raw, base_dir):
    """Turn the string ``raw`` into a value of ``kind``; ValueError if bad."""
    raw = raw.strip()
    if kind == "str":
        return raw
    if kind == "path":
        if not raw:
            raise ValueError("empty path")
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(raw)))
    if kind == "int":
        return int(raw)
    if kind == "float":
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return value
    if kind == "bool":
        if raw.lower() not in _BOOLS:
            raise ValueError("not a boolean (true/false, yes/no, on/off, 1/0)")
        return _BOOLS[raw.lower()]
    if kind == "list":
        return _split(raw)
    if kind == "peers":
        peers = _split(raw)
        for peer in peers:
            url = urlsplit(peer)
            if url.scheme not in ("ws", "wss") or not url.netloc:
                raise ValueError(f"peer {peer!r} is not a ws:// or wss:// URL")
        return peers
    raise AssertionError(kind)


class Config:
    """Typed settings: ``cfg.get("rpc", "listen")`` or ``cfg.rpc.listen``.

    ``path`` is the config file (None when built from a string) and
    ``base_dir`` the folder relative paths in the file were resolved against.
    """

    def __init__(self, values, path, base_dir):
        self._values = values
        self.path = path
        self.base_dir = base_dir
        for section, keys in values.items():
            setattr(self, section, SimpleNamespace(**keys))

    def get(self, section, key):
        try:
            return self._values[section][key]
        except KeyError:
            raise KeyError(f"no config setting [{section}] {key}") from None

    def as_dict(self):
        return {s: dict(keys) for s, keys in self._values.items()}


def _parse(parser, source, base_dir, environ):
    """Check ``parser``'s contents and ``environ`` against SCHEMA."""
    environ = os.environ if environ is None else environ
    sections = (["DEFAULT"] if parser.defaults() else []) + parser.sections()
    for section in sections:
        if section not in SCHEMA:
            raise ConfigError(
                f"{source}: unknown section [{section}]; allowed sections: "
                + ", ".join(SCHEMA))
        for key in parser[section]:
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"{source}: unknown key {key!r} in section [{section}]; "
                    f"allowed keys: " + ", ".join(SCHEMA[section]))

    env_names = {f"{ENV_PREFIX}{s}_{k}".upper(): (s, k)
                 for s, keys in SCHEMA.items() for k in keys}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in env_names:
            raise ConfigError(
                f"unknown environment variable {name}; allowed: "
                + ", ".join(sorted(env_names)))
    from_env = {pair: name for name, pair in env_names.items() if name in environ}

    values, missing = {}, []
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, (kind, default, check) in keys.items():
            if (section, key) in from_env:
                name = from_env[(section, key)]
                raw, origin, base = environ[name], f"environment variable {name}", os.getcwd()
            elif parser.has_option(section, key):
                raw, origin, base = parser.get(section, key), source, base_dir
            else:
                if default is REQUIRED:
                    missing.append(f"[{section}] {key}")
                if kind == "path" and isinstance(default, str):
                    default = _convert(kind, default, base_dir)
                values[section][key] = list(default) if isinstance(default, list) else default
                continue
            if default is None and not raw.strip():
                values[section][key] = None  # an optional setting left empty
                continue
            try:
                value = _convert(kind, raw, base)
                if check is not None and not check[0](value):
                    raise ValueError(check[1])
            except ValueError as e:
                raise ConfigError(
                    f"bad value {raw.strip()!r} for {section}.{key} (expected {kind}) "
                    f"from {origin}: {e}") from None
            values[section][key] = value
    if missing:
        raise ConfigError(f"{source}: missing required setting(s): " + ", ".join(missing))
    return values


def config_from_string(text, base_dir, environ=None):
    """Build a Config from ini ``text``; relative paths resolve against ``base_dir``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source="<string>")
    except configparser.Error as e:
        raise ConfigError(f"<string>: cannot parse config: {e}".replace("\n", " ")) from None
    base_dir = os.path.abspath(base_dir)
    return Config(_parse(parser, "<string>", base_dir, environ), None, base_dir)


def load_config(path, environ=None):
    """Read the config file at ``path`` (see the module docstring for the rules)."""
    path = os.path.abspath(path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse config: {e}".replace("\n", " ")) from None
    base_dir = os.path.dirname(path)
    return Config(_parse(parser, path, base_dir, environ), path, base_dir)
