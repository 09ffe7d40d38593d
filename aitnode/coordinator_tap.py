"""`twistd aitcoordinator --listen ENDPOINT --key FILE --chain-id ID`."""

import sys

from twisted.application import service
from twisted.python import usage

from aitnode.coordinator import MockCoordinator
from aitnode.crypto import KeyPair
from aitnode.errors import ConfigError
from aitnode.listen import listen_service
from aitnode.web import Root, make_site


class Options(usage.Options):
    synopsis = "--listen ENDPOINT --key FILE --chain-id ID"
    optParameters = [
        ["listen", "l", "tcp:8090:interface=127.0.0.1", "endpoint to serve POST /attest/receipt on"],
        ["key", "k", None, "the coordinator's key file (its public key is genesis params.coordinator)"],
        ["chain-id", "c", None, "chain id the attestations are signed for"],
    ]

    def postOptions(self):
        for name in ("key", "chain-id"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    try:
        key = KeyPair.load(options["key"])
    except ConfigError as e:
        print(f"aitcoordinator: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1)
    coordinator = MockCoordinator(key, options["chain-id"])
    site = make_site(Root(coordinator.resource()), 65536, reactor, request_deadline=30)
    top = service.MultiService()
    listen_service(reactor, options["listen"], site, "coordinator").setServiceParent(top)
    top.coordinator = coordinator
    return top
