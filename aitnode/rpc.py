"""JSON RPC over HTTP (Klein).

Every answer is JSON.  Every refusal is ``{"error": {"code", "message"}}``
with a 4xx status; the codes are listed in docs/protocol.md.
"""

import hmac

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from aitnode import crypto
from aitnode.encoding import U64, is_hex, require_fields, require_int, require_text
from aitnode.errors import AitError
from aitnode.metrics import CONTENT_TYPE, RouteTemplates
from aitnode.httpjson import FastRoute, add_json_error_handlers, json_response, loads_json
from aitnode.proofs import DEFAULT_HEADERS, MAX_HEADERS

def found(request, out, missing):
    """out as the JSON answer, or 404 not_found saying what is missing."""
    if out is None:
        raise AitError("not_found", missing, status=404)
    return json_response(request, out)


def query_int(request, name, code, low, high, what, default=None, required=False):
    """Query argument name as an integer from low to high (ASCII decimal),
    default when absent and not required, else 400 code."""
    raw = request.args.get(name.encode(), [None])[0]
    if raw is None and not required:
        return default
    if raw is None or not raw.isdigit() or len(raw) > 20 or not low <= int(raw) <= high:
        raise AitError(code, f"{name} must be {what}")
    return int(raw)


class RPC:
    """The node's RPC routes, bound to one Node: admission for what is
    sent, queries for what is read.  Errors render in web."""

    app = Klein()
    _log = Logger()

    def __init__(self, node, admin_token=None, max_body=65536, max_batch_bytes=16 << 20, max_batch_items=20000,
                 mock_coordinator=None, limiter=None, p2p=None):
        self.node = node
        self.admission = node.admission
        self.queries = node.queries
        self.limiter = limiter
        self.mock_coordinator = mock_coordinator
        self.p2p = p2p  # the peer manager, when the node has peers
        self.admin_token = admin_token.encode() if admin_token else None
        self.max_body = max_body
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_items = max_batch_items

    def resource(self):
        return self.app.resource()

    def observer(self):
        """observe(request, seconds) for web.Root: counts requests by route."""
        templates = RouteTemplates(self.app, [p.decode() for p in self.fast_routes()])
        metrics = self.node.metrics

        def observe(request, seconds):
            metrics.observe_request(templates(request.path.decode("utf-8", "replace")), request.code, seconds)

        return observe

    # -- plumbing -------------------------------------------------------
    add_json_error_handlers(app)

    def body(self, request, limit=None):
        limit = self.max_body if limit is None else limit
        # The channel (web.LimitedChannel) refused a body over its route's
        # limit before reading it; this checks bodies that came another way.
        data = request.content.read()
        if len(data) > limit:
            raise AitError("body_too_large", f"request body is over {limit} bytes", status=413)
        return loads_json(data)

    def require_admin(self, request):
        if self.admin_token is None:
            raise AitError("admin_disabled", "admin routes are off: set [rpc] admin_token_file", status=403)
        auth = request.getHeader(b"authorization") or b""
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.admin_token):
            raise AitError("unauthorized", "send Authorization: Bearer <admin token>", status=401)

    # -- public routes --------------------------------------------------
    def limit(self, request, n=1):
        if self.limiter is not None:
            self.limiter.take(request.getClientAddress().host, n)

    def body_limits(self):
        """Routes whose body may exceed max_body (web.QuietSite.body_limits)."""
        return {b"/rpc/sendTxs": self.max_batch_bytes}

    def fast_routes(self):
        """The hot routes as plain twisted.web resources (web.Root.fast).

        Klein's routing costs about as much as admitting a transaction, so
        sendTx, sendTxs and getHead skip it; errors render the same way.
        """
        return {
            b"/rpc/sendTx": FastRoute(self.send_tx, b"POST"),
            b"/rpc/sendTxs": FastRoute(self.send_txs, b"POST"),
            b"/rpc/getHead": FastRoute(self.get_head, b"GET"),
        }

    def send_tx(self, request):
        self.limit(request)
        try:
            obj = self.body(request)
        except AitError as e:
            self.admission.refused(None, e)
            raise
        return self._submitted(request, self.admission.submit(obj))

    @app.route("/rpc/submitReceipt", methods=["POST"])
    def submit_receipt(self, request):
        self.limit(request)
        return self._submitted(request, self.admission.submit(self.body(request), claims_only=True))

    @staticmethod
    def _submitted(request, tx_hash):
        # A Deferred for a claim (the coordinator is asked) or a transaction
        # whose signature a batch is checking right now.
        if isinstance(tx_hash, Deferred):
            return tx_hash.addCallback(lambda h: json_response(request, {"txHash": h}))
        return json_response(request, {"txHash": tx_hash})

    @app.route("/rpc/getReceipt/<receipt_id>", methods=["GET"])
    def get_receipt(self, request, receipt_id):
        return found(request, self.queries.get_receipt(receipt_id), f"no included receipt {receipt_id!r}")

    @app.route("/rpc/getSupply", methods=["GET"])
    def get_supply(self, request):
        return json_response(request, self.queries.get_supply())

    @app.route("/rpc/attest", methods=["POST"])
    @app.route("/rpc/attest/receipt", methods=["POST"])
    def attest(self, request):
        if self.mock_coordinator is None:
            raise AitError("not_found", "this node serves no mock coordinator ([coordinator] serve_mock)", status=404)
        return json_response(request, self.mock_coordinator.attest(self.body(request)))

    def send_txs(self, request):
        items = self.body(request, self.max_batch_bytes)
        if type(items) is not list:
            raise AitError("wrong_type", "sendTxs takes a JSON list of transactions")
        if len(items) > self.max_batch_items:
            raise AitError("batch_too_large", f"at most {self.max_batch_items} transactions per call", status=413)
        self.limit(request, max(1, len(items)))
        d = Deferred.fromCoroutine(self.admission.submit_batch(items))
        d.addCallback(lambda results: json_response(request, {"results": results}))
        return d

    @app.route("/rpc/getTx/<tx_hash>", methods=["GET"])
    def get_tx(self, request, tx_hash):
        if not is_hex(tx_hash, 32):
            raise AitError("bad_hex", "txHash must be 64 lowercase hex characters")
        return found(request, self.queries.get_tx(tx_hash), f"no transaction {tx_hash}")

    @app.route("/rpc/getBlock/<ref>", methods=["GET"])
    def get_block(self, request, ref):
        # A height is ASCII decimal below 2**64 (str.isdigit alone admits "²").
        is_height = ref.isascii() and ref.isdigit() and len(ref) < 21 and int(ref) < 2**64
        if not is_height and not is_hex(ref, 32):
            raise AitError("bad_block_ref", "give a height (decimal) or a block hash (64 lowercase hex)")
        full = request.args.get(b"full", [b"false"])[0].lower() in (b"true", b"1")
        return found(request, self.queries.get_block(ref, full=full), f"no block {ref}")

    def get_head(self, request):
        return json_response(request, self.queries.get_head())

    @app.route("/rpc/getBalance/<address>", methods=["GET"])
    def get_balance(self, request, address):
        crypto.check_address(address)
        return json_response(request, self.queries.get_balance(address))

    @app.route("/rpc/getHistory/<address>", methods=["GET"])
    def get_history(self, request, address):
        crypto.check_address(address)
        raw = request.args.get(b"limit", [b"50"])[0]
        if not raw.isdigit() or not 1 <= int(raw) <= 500:
            raise AitError("bad_limit", "limit must be an integer from 1 to 500")
        return json_response(request, self.queries.get_history(address, int(raw)))

    @app.route("/rpc/estimateFee", methods=["POST"])
    def estimate_fee(self, request):
        return json_response(request, {"fee": self.queries.estimate_fee(self.body(request))})

    @app.route("/rpc/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE)
        return self.node.metrics.render()

    @app.route("/rpc/getAuthorities", methods=["GET"])
    def get_authorities(self, request):
        raw = request.args.get(b"height", [None])[0]
        height = None
        if raw is not None:
            if not raw.isdigit() or len(raw) > 20 or int(raw) < 1:
                raise AitError("bad_height", "height must be a block height (an integer from 1)")
            height = int(raw)
        return found(request, self.queries.get_authorities(height), f"no authority set known for height {height}")

    @app.route("/rpc/getHeaders", methods=["GET"])
    def get_headers(self, request):
        start = query_int(request, "from", "bad_height", 0, U64 - 1, "a block height (decimal, from 0)", required=True)
        limit = query_int(request, "limit", "bad_limit", 1, MAX_HEADERS, f"an integer from 1 to {MAX_HEADERS}",
                          default=DEFAULT_HEADERS)
        return json_response(request, self.queries.get_headers(start, limit))

    @app.route("/rpc/getTxProof/<tx_hash>", methods=["GET"])
    def get_tx_proof(self, request, tx_hash):
        if not is_hex(tx_hash, 32):
            raise AitError("bad_hex", "txHash must be 64 lowercase hex characters")
        out = self.queries.get_tx_proof(tx_hash)
        if out is None:
            raise AitError("unknown_tx", f"transaction {tx_hash} is in no block of this node's chain", status=404)
        return json_response(request, out)

    @app.route("/rpc/getProof/<ns>/<path:key>", methods=["GET"])
    def get_proof(self, request, ns, key):
        require_text(key, "key")
        height = query_int(request, "height", "bad_height", 0, U64 - 1, "a block height (decimal, from 0)")
        return json_response(request, self.queries.get_proof(ns, key, height))

    @app.route("/rpc/getParams", methods=["GET"])
    def get_params(self, request):
        return json_response(request, self.queries.get_params())

    @app.route("/p2p/peers", methods=["GET"])
    def peers(self, request):
        if self.p2p is None:
            raise AitError("p2p_disabled", "this node has no [p2p] listen address", status=404)
        return json_response(request, self.p2p.peer_list())

    # -- admin routes ---------------------------------------------------
    @app.route("/admin/peers/add", methods=["POST"])
    def add_peer(self, request):
        self.require_admin(request)
        if self.p2p is None:
            raise AitError("p2p_disabled", "this node has no [p2p] listen address", status=404)
        body = self.body(request)
        require_fields(body, ("addr",), "body")
        added = self.p2p.add_peer(body["addr"])
        return json_response(request, {"addr": body["addr"], "added": added})

    @app.route("/admin/mintFaucet", methods=["POST"])
    def mint_faucet(self, request):
        self.require_admin(request)
        body = self.body(request)
        require_fields(body, ("address", "amount"), "body")
        crypto.check_address(body["address"])
        amount = require_int(body["amount"], "amount", minimum=1)
        tx_hash = self.admission.submit_own("MINT", {"to": body["address"], "amount": amount})
        return json_response(request, {"txHash": tx_hash})

    @app.route("/admin/paramSet", methods=["POST"])
    def param_set(self, request):
        self.require_admin(request)
        body = self.body(request)
        require_fields(body, ("key", "value"), "body")
        tx_hash = self.admission.submit_own("PARAM_UPDATE", {"key": body["key"], "value": body["value"]})
        return json_response(request, {"txHash": tx_hash})

    @app.route("/admin/authorityUpdate", methods=["POST"])
    def authority_update(self, request):
        self.require_admin(request)
        body = self.body(request)
        require_fields(body, ("action", "address", "public_key"), "body")
        tx_hash = self.admission.submit_own("AUTHORITY_UPDATE", body)
        return json_response(request, {"txHash": tx_hash})
