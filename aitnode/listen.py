"""Listeners: a StreamServerEndpointService that says where it listens.

The "NAME listening on http://HOST:PORT" log line is the readiness signal
operators, the devnet and the process tests wait for.  A listener that
cannot listen stops the reactor, so twistd exits instead of running deaf.
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

_log = Logger()


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    def __init__(self, reactor, endpoint, description, name):
        self.reactor, self.endpoint, self.description, self.name = reactor, endpoint, description, name

    def listen(self, factory):
        d = self.endpoint.listen(factory)

        def listening(port):
            addr = port.getHost()
            _log.info("{name} listening on http://{host}:{port}", name=self.name, host=addr.host, port=addr.port,
                      component="node", event="listening")
            return port

        def failed(f):
            _log.failure("cannot listen on {description}", f, description=self.description,
                         component="node", event="listen_failed")
            self.reactor.callLater(0, self.reactor.stop)
            return f

        return d.addCallbacks(listening, failed)


def listen_service(reactor, description, factory, name):
    """A service listening on an endpoint string with factory."""
    endpoint = _AnnouncingEndpoint(reactor, serverFromString(reactor, description), description, name)
    return StreamServerEndpointService(endpoint, factory)
