"""Outside attacks through an upstream's response head: fields the gateway adds itself.

RFC 9110 §7.6.1: a proxy removes the fields a message's `Connection` names, because they
describe the upstream's hop. The gateway does, but after it has added its own fields to the
same head: an upstream answer (or whoever can put a token into its `Connection`) naming
`X-Frame-Options` or `Content-Security-Policy` removes the values the operator set with a
ResponseHeaderModifier, and naming `x-request-id` or `ratelimit-remaining` removes the
gateway's own. On the request side the gateway never lets `Connection` remove its fields;
on the response side the operator's and the gateway's fields must survive too.
"""

from __future__ import annotations

from .gwkit import Client, GatewayProc, Recorder


def test_an_upstreams_connection_header_cannot_remove_what_the_gateway_sets(tmp_path) -> None:
    rec = Recorder(
        answer=b"HTTP/1.1 200 OK\r\nConnection: x-frame-options, content-security-policy, "
        b"x-request-id, ratelimit-remaining, x-internal\r\nX-Internal: 1\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    gw = GatewayProc(tmp_path)
    try:
        gw.start(
            {
                "workers": 1,
                "backends": [{"name": "up", "endpoints": [rec.url]}],
                "routes": [
                    {
                        "name": "r",
                        "backendRefs": [{"name": "up"}],
                        "filters": [
                            {
                                "type": "ResponseHeaderModifier",
                                "responseHeaderModifier": {
                                    "set": [
                                        {"name": "X-Frame-Options", "value": "DENY"},
                                        {
                                            "name": "Content-Security-Policy",
                                            "value": "default-src 'self'",
                                        },
                                    ]
                                },
                            }
                        ],
                        "plugins": [
                            {
                                "name": "rate-limit",
                                "config": {"limit": 5, "window": "1m", "by": "ip"},
                            }
                        ],
                    }
                ],
            }
        )
        with Client(gw.port) as c:
            a = c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").answer()
        assert a is not None and a.status == 200
        assert a.header(b"x-internal") is None  # the upstream's hop-by-hop field goes
        missing = [
            name.decode()
            for name in (
                b"x-frame-options",
                b"content-security-policy",
                b"x-request-id",
                b"ratelimit-remaining",
            )
            if a.header(name) is None
        ]
        assert not missing, f"the upstream's Connection removed the gateway's {missing}"
    finally:
        gw.stop()
        rec.close()
