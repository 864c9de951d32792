"""Errors that reach the user: a spec mistake with its location, or a generator bug."""

from __future__ import annotations

from dataclasses import dataclass


def printable(text: str) -> str:
    """`text` on one line: control characters and the like as Python escapes (`\\n`)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in a spec file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{printable(self.file)}:{self.line}:{self.column}"

    def shifted(self, columns: int) -> "Location":
        return Location(self.file, self.line, self.column + columns)


@dataclass(frozen=True)
class TextStart(Location):
    """The start of a text whose characters are not the source's column for column (a
    folded or escaped YAML scalar): a place within it is shown at its start."""

    def shifted(self, columns: int) -> "Location":
        return self


class SpecError(Exception):
    """A mistake in a spec or in build options; reported as `file:line:col: message`."""

    def __init__(self, message: str, location: Location | None = None, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        # One line per part, whatever the spec's text holds: a message is never split.
        where = f"{self.location}: " if self.location else ""
        hint = f"\n  hint: {printable(self.hint)}" if self.hint else ""
        return f"{where}error: {printable(self.message)}{hint}"


class GeneratorBug(Exception):
    """The generator produced something invalid; never the spec author's fault."""


def did_you_mean(name: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
