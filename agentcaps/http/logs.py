"""Structured logs: one JSON object per line, with the request id of the request being served.

`agentcaps serve` logs its own lines (`agentcaps.*` loggers) this way unless
AGENTCAPS_LOG_FORMAT=text. A record's `fields` attribute (`extra={"fields":
{...}}`) adds named values, e.g. the access log's method, path, status and
duration. Request ids come from X-Request-Id when a client sends a
well-formed one, else are made here, and are echoed in the response.
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from datetime import UTC, datetime

from agentcaps.audit import REQUEST_ID

REQUEST_ID_HEADER = "X-Request-Id"
_WELL_FORMED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def request_id_from(header: str | None) -> str:
    """The client's request id if well-formed (1-128 of letters, digits, `._:-`; nothing token-like), else a new one."""
    if header is not None and _WELL_FORMED.match(header) and "agc_" not in header.lower():
        return header
    return new_request_id()


def new_request_id() -> str:
    """16 random hex digits.

    Random, not a counter: ids are echoed to clients and recorded in events
    an issuer reads, and the gap between two counted ids would tell how many
    requests others made in between. (8 bytes from the kernel: 0.15 µs more
    than a counter, measured.)
    """
    return os.urandom(8).hex()


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, request id, fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # Its class and where, never its message: that may carry request data.
            out["exception"] = record.exc_info[0].__name__
            out["where"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(out, default=str, ensure_ascii=False)
