"""One exception type for every refusal the node can give.

Each refusal carries a stable snake_case ``code`` (part of the wire
contract, listed in docs/protocol.md), a message a person can act on, and
the HTTP status the RPC layer answers with.
"""

import json


class AitError(Exception):
    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_json(self):
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self):
        return f"AitError({self.code!r}, {self.message!r}, {self.status})"


class ConfigError(Exception):
    """The node cannot start; the message says what to fix."""


def read_json_file(path, what):
    """The JSON value in the file at path; ConfigError naming what it is
    (a key file, a genesis) when it cannot be read or is not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}")
    except ValueError as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}")
