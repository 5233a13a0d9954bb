"""One redaction for every API key in use. A live backend registers its key when it reads it from the environment;
SearchError messages, live observations and every log record of the process pass through `redact`."""
from __future__ import annotations

import logging
import re

_KEYS: set[str] = set()
# Key parameters of request URLs (googleapiclient logs them at DEBUG), redacted even when the key was never registered.
_KEY_IN_URL = re.compile(r"\b((?:api_)?key=)[^&\s'\"]+")


def register(key: str) -> str:
    """Remember a key so that `redact` removes it wherever it turns up; returns the key."""
    if key:
        _KEYS.add(key)
    return key


def redact(text: str) -> str:
    for key in sorted(_KEYS, key=len, reverse=True):  # longest first: a key inside another is not half-replaced
        text = text.replace(key, "***")
    return _KEY_IN_URL.sub(r"\1***", text)


def _redacting(make_record):
    """Wrap the log record factory. A logging.Filter would not do: one on a logger misses its children's records,
    one on handlers misses handlers added later (lm-eval's, pytest's). Every record of every logger is made here."""

    def make(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself when the record is emitted
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info:  # formatters reuse a set exc_text instead of formatting the traceback again
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    return make


logging.setLogRecordFactory(_redacting(logging.getLogRecordFactory()))
