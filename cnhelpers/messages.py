"""Messages for people: an error or a warning as the one line the CLI prints."""

from __future__ import annotations


def one_line(message: str) -> str:
    """A message as one line, for a one-line error report. An error raised in a DataLoader worker carries the
    worker's traceback: keep its last line (the error itself)."""
    if "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def error_summary(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an error on one line, at most ``limit`` characters."""
    text = one_line(f"{type(error).__name__}: {error}")
    return text if len(text) <= limit else text[:limit - 1] + "…"
