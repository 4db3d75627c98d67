"""The one error type of stacklock: every failure carries the exit code it maps to."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes shared by every command (docs/exit-codes.md)."""

    OK = 0
    DEVIATION = 1  # deviation, drift, or a stale generated file found
    INVALID = 2  # invalid input or usage
    FAILED = 3  # could not finish: host unreachable, tool failed


@dataclass(frozen=True)
class Problem:
    """One finding about the input: where it is, what is wrong, and how to fix it."""

    path: str
    message: str
    hint: str = ""
    severity: str = "error"  # "error" | "warning"
    rule: str = ""
    source: str = ""

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" (fix: {self.hint})"
        return text

    def as_dict(self) -> dict[str, str]:
        return {
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
            "rule": self.rule,
            "source": self.source,
        }


class StacklockError(Exception):
    """Raised for every expected failure; the CLI prints it and exits with `exit_code`."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(
        self,
        message: str,
        exit_code: ExitCode | None = None,
        problems: list[Problem] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        self.problems: list[Problem] = problems or []


class InvalidInput(StacklockError):
    """Bad manifest, bad arguments, bad lock: exit 2, nothing written."""

    exit_code = ExitCode.INVALID


class ToolFailed(StacklockError):
    """An outside tool (terraform, ansible, docker, AWS) failed or a host was unreachable: exit 3."""

    exit_code = ExitCode.FAILED


@dataclass
class Outcome:
    """A command's result when it is not an error: a code and lines to print."""

    code: ExitCode = ExitCode.OK
    lines: list[str] = field(default_factory=list)
