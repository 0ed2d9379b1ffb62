"""One access-log line per request, JSON or text, written in batches.

Lines are buffered and flushed a few times a second (and at exit), so a busy
gateway pays one write per batch, not one per request.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

FLUSH_EVERY = 0.2


class AccessLog:
    def __init__(self, fmt: str = "json", stream: IO[str] | None = None) -> None:
        self.format = fmt
        self.stream = stream or sys.stdout
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def record(self, fields: dict[str, Any]) -> None:
        if self.format == "off":
            return
        if self.format == "json":
            fields["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = (
                f'{fields["client"]} "{fields["method"]} {fields["path"]}" {fields["status"]} '
                f"{fields['bytes']} {fields['duration_ms']}ms route={fields['route']} "
                f"upstream={fields.get('upstream') or '-'} id={fields['request_id']}"
            )
        self._lines.append(line)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self.stream.flush()
            self._lines.clear()
