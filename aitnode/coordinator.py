"""A mock coordinator for the devnet: signs receipt attestations.

Jobs ``job_1`` to ``job_1000000`` exist and are paid; any other job does
not exist.  A job attested for one receipt and asked again for another is
reported double spent.  The answer echoes the request's
``client_payment_tx`` (a request without one is refused): the mock knows
no payments, so it attests whichever the miner names, where a real
coordinator answers only for the payment that paid the job.  Served by
``twistd aitcoordinator`` and, when a devnet node's config asks for it,
at the node's POST /rpc/attest.
"""

import re

from klein import Klein

from aitnode.errors import AitError
from aitnode.receipts import check_attestation_request, sign_attestation
from aitnode.httpjson import add_json_error_handlers, json_response, loads_json

_JOB = re.compile(r"^job_([1-9][0-9]{0,6})$")
MAX_JOB = 1_000_000


class MockCoordinator:
    app = Klein()

    def __init__(self, key, chain_id, max_body=65536):
        self.key = key
        self.chain_id = chain_id
        self.max_body = max_body
        self.claimed = {}  # job_id -> receipt_id
        self.served = 0

    def resource(self):
        return self.app.resource()

    def attest(self, request):
        """The signed answer for one attestation request (a dict)."""
        check_attestation_request(request)
        job = request["job_id"]
        m = _JOB.match(job)
        exists = bool(m) and int(m.group(1)) <= MAX_JOB
        first = self.claimed.setdefault(job, request["receipt_id"]) if exists else None
        self.served += 1
        return sign_attestation(
            self.key, self.chain_id, request,
            exists=exists, paid=exists, not_double_spent=exists and first == request["receipt_id"],
        )

    @app.route("/attest/receipt", methods=["POST"])
    def attest_route(self, request):
        data = request.content.read(self.max_body + 1)
        if len(data) > self.max_body:
            raise AitError("body_too_large", "request body is too large", status=413)
        return json_response(request, self.attest(loads_json(data)))

    add_json_error_handlers(app)
