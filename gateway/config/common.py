"""Field types the gateway's configuration models share: host names, addresses, regexes.

(The plugins' models define the ones they share with this package, `LowerBytes`,
`Upper`, `Name` and `one_of`, in gateway/plugins/models.py: the configuration imports
the plugins, never the reverse.)
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from agent.common import units
from agent.common.schema import Str, from_unit

_HOSTNAME = re.compile(
    r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
)


def valid_hostname(h: str) -> bool:
    return bool(_HOSTNAME.match(h)) and len(h) <= 253


def _hostname(value: str) -> str:
    if not valid_hostname(value):
        raise ValueError(f"{value!r} is not a host name")
    return value


def _lower_hostname(value: str) -> str:
    if not valid_hostname(value.lower()):
        raise ValueError(f"{value!r} is not a host name")
    return value.lower()


Hostname = Annotated[Str, AfterValidator(_hostname)]
"""A host name as a certificate names it: lower case, or `*.` and a lower-case name."""
RouteHostname = Annotated[Str, AfterValidator(_lower_hostname)]
"""A host name a route matches, in any case (compared in lower case)."""


def address_of(default_host: str) -> Any:
    """A validator of `HOST:PORT` or a port, to (host, port), through the one parser."""
    return BeforeValidator(from_unit(lambda value: units.parse_address(value, default_host)))


def regex(value: str) -> re.Pattern[str]:
    """`value` compiled, or a ValueError that reads after the field's name."""
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
