#!/usr/bin/env python3
"""HTTP/3 GETs with aioquic, or its fork qh3 (the QUIC stack of niquests),
for interop tests against quic-xdp.

usage: aioquic_get.py HOST PORT CA_PEM OUT_DIR PATH... [--resume] [--lib qh3]

Fetches every PATH on one connection (all requests in flight at once) and
writes each body to OUT_DIR/<index>. With --resume it connects twice: the
second connection resumes the first's session and sends its requests as
0-RTT data. Prints a JSON report: per request status and length, and for
the last connection whether the session was resumed and early data accepted.
"""
import asyncio
import importlib
import json
import os
import sys

# The two share their module layout: the library is chosen by name.
LIB = sys.argv[sys.argv.index("--lib") + 1] if "--lib" in sys.argv else "aioquic"
connect = importlib.import_module(f"{LIB}.asyncio.client").connect
QuicConnectionProtocol = importlib.import_module(f"{LIB}.asyncio.protocol").QuicConnectionProtocol
_h3 = importlib.import_module(f"{LIB}.h3.connection")
H3_ALPN, H3Connection = _h3.H3_ALPN, _h3.H3Connection
_events = importlib.import_module(f"{LIB}.h3.events")
DataReceived, HeadersReceived = _events.DataReceived, _events.HeadersReceived
QuicConfiguration = importlib.import_module(f"{LIB}.quic.configuration").QuicConfiguration


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._responses = {}

    def quic_event_received(self, event):
        for ev in self._http.handle_event(event):
            if not isinstance(ev, (HeadersReceived, DataReceived)):
                continue
            state = self._responses.get(ev.stream_id)
            if state is None:
                continue
            if isinstance(ev, HeadersReceived):
                state["status"] = int(dict(ev.headers)[b":status"])
            else:
                state["body"] += ev.data
            if ev.stream_ended:
                state["done"].set_result(None)

    async def get(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        state = {"status": None, "body": b"", "done": asyncio.get_running_loop().create_future()}
        self._responses[stream_id] = state
        self._http.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"),
             (b":authority", authority.encode()), (b":path", path.encode())],
            end_stream=True,
        )
        self.transmit()
        await state["done"]
        return state["status"], state["body"]


async def fetch(host, port, ca, paths, ticket_store, early):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    config.load_verify_locations(ca)
    if ticket_store.get("ticket"):
        config.session_ticket = ticket_store["ticket"]
    async with connect(host, port, configuration=config, create_protocol=H3Client,
                       session_ticket_handler=lambda t: ticket_store.__setitem__("ticket", t),
                       wait_connected=not early) as client:
        # aioquic records the handshake only for a waiter that is already
        # there when it completes: wait before sending the early requests.
        connected = asyncio.ensure_future(client.wait_connected()) if early else None
        results = await asyncio.gather(*(client.get(f"localhost:{port}", p) for p in paths))
        if connected is not None:
            await connected
        tls = client._quic.tls
        return results, tls.session_resumed, tls.early_data_accepted


async def main():
    args = sys.argv[1:]
    if "--lib" in args:
        del args[args.index("--lib"):args.index("--lib") + 2]
    resume = "--resume" in args
    args = [a for a in args if a != "--resume"]
    host, port, ca, out_dir, paths = args[0], int(args[1]), args[2], args[3], args[4:]
    tickets = {}
    results, resumed, early = await asyncio.wait_for(fetch(host, port, ca, paths, tickets, False), 30)
    if resume:
        await asyncio.sleep(0.2)
        results, resumed, early = await asyncio.wait_for(fetch(host, port, ca, paths, tickets, True), 30)
    os.makedirs(out_dir, exist_ok=True)
    report = []
    for i, (status, body) in enumerate(results):
        with open(os.path.join(out_dir, str(i)), "wb") as f:
            f.write(body)
        report.append({"status": status, "length": len(body)})
    print(json.dumps({"responses": report, "session_resumed": resumed, "early_data_accepted": early}))


asyncio.run(main())
