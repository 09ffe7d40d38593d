"""The load generator: a child process sending pre-built HTTP/1.1 requests
over keep-alive connections (asyncio, raw sockets), so that the benchmark
process itself stays free to watch the node.

    with Load(port, requests, kind="one") as load:
        ...                     # the child is connected and waiting
        stats = load.go()       # it sends everything; its counts and times

``kind`` says how answers count: "one" (sendTx, submitReceipt: HTTP 200 is
one accepted), "batch" (sendTxs: one per "txHash" in the answer).  With
``retry_ms``, a ``429 coordinator_busy`` answer is counted as busy and its
request sent again that much later, as a client would.
"""

import asyncio
import collections
import json
import multiprocessing

from bench.common import now, reap


def http_request(path, body):
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def build_requests(signed, first, count_per_sender, conns, batch=None):
    """Per connection: requests for its own senders, each sender's nonces in order.

    ``signed`` is presign's list of runs; each sender sends its transactions
    first ... first + count_per_sender - 1.  A connection sends its next
    request only after the answer to the last, so no sender's transactions
    overtake each other.  Returns (per-connection requests, all hashes).
    """
    out, hashes = [], []
    for c in range(conns):
        wires = []
        for j in range(first, first + count_per_sender):
            for s in range(c, len(signed), conns):
                wire, h = signed[s][j]
                wires.append(wire)
                hashes.append(h)
        if batch is None:
            out.append([http_request(b"/rpc/sendTx", w) for w in wires])
        else:
            out.append([
                http_request(b"/rpc/sendTxs", b"[" + b",".join(wires[i:i + batch]) + b"]")
                for i in range(0, len(wires), batch)
            ])
    return out, hashes


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return status, b"".join(parts)
    return status, (await reader.readexactly(length) if length else b"")


def _refused(stats, status, body, count=1):
    stats["err"] += count
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = f"HTTP {status}"
    stats["codes"][code] = stats["codes"].get(code, 0) + count
    if len(stats["samples"]) < 5:
        stats["samples"].append(body[:300].decode("utf-8", "replace"))


async def _connection(port, queue, kind, retry_ms, stats):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while queue:
            req = queue.popleft()
            writer.write(req)
            status, body = await _read_response(reader)
            stats["last"] = now()
            if status == 200 and kind == "batch":
                stats["ok"] += body.count(b'"txHash"')
                bad = body.count(b'"error"')
                stats["err"] += bad
                if bad and len(stats["samples"]) < 5:
                    i = body.find(b'"error"')
                    stats["samples"].append(body[i:i + 300].decode("utf-8", "replace"))
            elif status == 200:
                stats["ok"] += 1
            elif status == 429 and retry_ms is not None and b"coordinator_busy" in body:
                stats["busy"] += 1
                queue.append(req)  # a client's retry, a little later
                await asyncio.sleep(retry_ms / 1000.0)
            else:
                _refused(stats, status, body, req.count(b'"sig"') if kind == "batch" else 1)
    finally:
        writer.close()


def _loader(port, requests, kind, conns, retry_ms, pipe):
    """Child process: connect, say 'ready', wait for 'go', send everything, report."""
    stats = {"ok": 0, "err": 0, "busy": 0, "codes": {}, "samples": [], "first": None, "last": None}
    if conns is None:  # a connection per list, each in its own order
        queues = [collections.deque(r) for r in requests]
    else:  # one list shared by conns connections
        queues = [collections.deque(requests)] * conns

    async def main():
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        stats["first"] = now()
        await asyncio.gather(*(_connection(port, q, kind, retry_ms, stats) for q in queues))

    try:
        asyncio.run(main())
    except Exception as e:  # report, never hang the parent
        stats["samples"].append(f"loader failed: {e!r}")
    pipe.send(stats)


class Load:
    """A load generator child process for one run (see the module docstring).

    ``requests``: a list of request lists, one connection each; or, with
    ``conns``, one list that ``conns`` connections share.
    """

    def __init__(self, port, requests, kind="one", conns=None, retry_ms=None):
        ctx = multiprocessing.get_context("fork")  # the requests are inherited, not pickled
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_loader, args=(port, requests, kind, conns, retry_ms, child), daemon=True)

    def __enter__(self):
        self.proc.start()
        if not self.pipe.poll(60) or self.pipe.recv() != "ready":
            self.__exit__()
            raise RuntimeError("load generator did not start")
        return self

    def go(self, timeout=300):
        """Send everything; the child's stats: ok, err, busy, codes,
        samples, and the perf_counter times of its first send and last answer."""
        self.pipe.send("go")
        if not self.pipe.poll(timeout):
            raise RuntimeError("load generator did not finish")
        return self.pipe.recv()

    def __exit__(self, *exc):
        reap(self.proc)
