"""A mesh identity's own HBONE client for lab tests, run inside a pod: claims of Forwarded.

    python hbone_claims.py CERT_DIR TARGET_IP PORT CASES_JSON

CERT_DIR holds cert.pem, key.pem and bundle.pem (a certificate the lab's CA signed for the
pod's identity). Over one mTLS HTTP/2 connection to TARGET_IP:15008 (the `h2` library, not
our codec), each case opens a CONNECT stream to TARGET_IP:PORT with its `forwarded` header
values (any number), sends `GET /<name>` through the tunnel and reads the http-echo answer.
Prints one JSON line: per case its status and the client address the app reported.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


class Tunnel:
    def __init__(self, cert_dir: str, target: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # the server's identity is a SPIFFE URI, not a host name
        ctx.load_verify_locations(f"{cert_dir}/bundle.pem")
        ctx.load_cert_chain(f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem")
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((target, 15008), timeout=5)
        self.sock = ctx.wrap_socket(raw)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def events(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        events = self.conn.receive_data(data)
        self.flush()
        return events

    def request(self, authority: str, forwarded: list[str], path: str) -> dict:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "CONNECT"), (":authority", authority)]
        headers += [("forwarded", value) for value in forwarded]
        self.conn.send_headers(sid, headers)
        self.flush()
        status, body, done = None, b"", False
        while not done:
            for ev in self.events():
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                    if status == 200:
                        req = f"GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n".encode()
                        self.conn.send_data(sid, req, end_stream=True)
                        self.flush()
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    self.flush()
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
        out: dict = {"status": status}
        if status == 200 and b"\r\n\r\n" in body:
            out["client"] = json.loads(body.split(b"\r\n\r\n", 1)[1])["client"]
        return out


def main() -> None:
    cert_dir, target, port, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    tunnel = Tunnel(cert_dir, target)
    results = {}
    for case in json.loads(cases):
        results[case["name"]] = tunnel.request(f"{target}:{port}", case["forwarded"], case["name"])
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
