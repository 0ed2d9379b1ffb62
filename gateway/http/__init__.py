"""The HTTP/1.1 engine: server connections, upstream pools, proxying; reusable by the waypoint.

It knows nothing of the application that hosts it (routes, plugins, the
gateway's configuration): it imports nothing of `gateway` outside this package,
which `make lint` checks. Its errors are its own (errors.py). The request path
is compiled with mypyc (scripts/compile.sh).
"""

from .deadlines import Sweeper
from .errors import HttpEngineError, HttpError, UpstreamError
from .head import UNDERSCORE_ACTIONS, HeadRules, read_head
from .message import HOP_BY_HOP, Headers, Request, Response, status_line
from .proxy import UpstreamAttempt, send
from .server import Exchange, Limits, ServerConnection
from .upstream import Pool, UpstreamConnection, UpstreamEndpoint
from .uri import ESCAPED_SLASHES, PATH_PARAMETERS, PathRules

__all__ = [
    "ESCAPED_SLASHES",
    "HOP_BY_HOP",
    "PATH_PARAMETERS",
    "UNDERSCORE_ACTIONS",
    "Exchange",
    "HeadRules",
    "Headers",
    "HttpEngineError",
    "HttpError",
    "Limits",
    "PathRules",
    "Pool",
    "Request",
    "Response",
    "ServerConnection",
    "Sweeper",
    "UpstreamAttempt",
    "UpstreamConnection",
    "UpstreamEndpoint",
    "UpstreamError",
    "read_head",
    "send",
    "status_line",
]
