"""What a run says and where: stdout for the result, stderr for logs; secrets always masked, and a
client's email and phone masked in logs; plain lines for cron, JSON lines for log shippers."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

import click

# Log records carry these attributes when the code sets them (extra=...); JSON lines include them.
_FIELDS = ("run_id", "phase", "counts", "duration_ms")
_EMAIL = re.compile(r"\b([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_E164 = re.compile(r"\+\d{4,12}(\d{2})\b")


RUN = {"id": None}  # the run being logged: every JSON line carries its id


def mask_contact(text: str) -> str:
    """`ana.lima@example.com` -> `a***@example.com`, `+14155550134` -> `+***34`."""
    return _E164.sub(r"+***\1", _EMAIL.sub(r"\1***@\2", text))


class Output:
    """With --json, stdout carries exactly one JSON object and nothing else; logs go to stderr."""

    def __init__(self, as_json: bool, verbose: int, log_format: str = "text", secrets: tuple[str, ...] = ()) -> None:
        self.as_json = as_json
        self.verbose = verbose
        self.log_format = log_format
        self.secrets = secrets
        self.fancy = sys.stderr.isatty() and log_format == "text"

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def setup_logging(self) -> None:
        # JSON lines are for shippers, which want the phases too: INFO by default there.
        quiet = logging.INFO if self.log_format == "json" else logging.WARNING
        level = quiet if self.verbose == 0 else logging.INFO if self.verbose == 1 else logging.DEBUG
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLines() if self.log_format == "json" else
                             logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        output = self

        class _Mask(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                record.msg, record.args = mask_contact(output.mask(record.getMessage())), None
                return True

        handler.addFilter(_Mask())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level)
        # Their debug output can carry request headers (tokens): never below WARNING, even at -vv.
        for noisy in ("httpx", "httpcore", "urllib3", "simple_salesforce"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    def result(self, data: dict[str, Any], lines: list[str]) -> None:
        """The command's result: one JSON object with --json, a JSON line with --log-format json, else lines."""
        if self.as_json:  # data the caller asked for, in full
            click.echo(self.mask(json.dumps(data, default=str)))
        elif self.log_format == "json":  # a log stream
            line = json.dumps({"ts": _now(), "level": "INFO", "event": "result", **data}, default=str)
            click.echo(mask_contact(self.mask(line)))
        else:  # on a terminal an admin reads why a sale was matched; piped, it is a log
            for line in lines:
                click.echo(self.mask(line) if sys.stdout.isatty() else mask_contact(self.mask(line)))

    def note(self, line: str) -> None:
        """A line for the operator on stderr (a rejected or ambiguous sale, an error)."""
        text = mask_contact(self.mask(line))
        if self.log_format == "json":
            text = json.dumps({"ts": _now(), "level": "WARNING", "message": text})
        click.echo(text, err=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update({name: getattr(record, name) for name in _FIELDS if hasattr(record, name)})
        if RUN["id"] is not None:
            entry.setdefault("run_id", RUN["id"])
        return json.dumps(entry, default=str)
