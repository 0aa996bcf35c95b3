"""Errors a user can act on, each with the exit code the tools document.

Anything that is not a :class:`CriuMacvlanError` is a bug: the entry points
still print it as one line (plus where to look), never as a traceback.
"""

from __future__ import annotations

HOOK_PROG = "criu-macvlan-action"  # how the action script's lines start in CRIU's log


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\n``, ``\\u2003``).

    Names and hostnames come from images that may have been crafted: written
    raw to a terminal, an escape sequence in one could retitle or rewrite it. Every
    line meant for people goes through here (it also keeps a message on one line).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


class ExitCode:
    """Process exit codes of ``criu-macvlan`` and ``hooks/criu-macvlan-action``."""

    OK = 0
    FAILED = 1  # a hook or a CRIU request failed; the message says why
    USAGE = 2  # bad command line or bad ``macvlan[IN]:OUT`` mapping
    IMAGE = 3  # the sidecar or a CRIU image is missing, malformed or inconsistent
    NETWORK = 4  # a link could not be read, made or configured
    CRIU = 5  # the criu binary failed or could not be run
    CHECK = 6  # ``criu-macvlan check`` found problems
    BUG = 70  # an unexpected exception (EX_SOFTWARE)


class CriuMacvlanError(Exception):
    """Base class: a one-line message for the user and an exit code."""

    exit_code = ExitCode.FAILED


class UsageError(CriuMacvlanError):
    """Bad arguments or a bad ``macvlan[IN]:OUT`` mapping."""

    exit_code = ExitCode.USAGE


class ImageError(CriuMacvlanError):
    """A sidecar or CRIU image that is missing, malformed or inconsistent."""

    exit_code = ExitCode.IMAGE


class NetlinkError(CriuMacvlanError):
    """A link could not be read, created or configured."""

    exit_code = ExitCode.NETWORK


class CriuError(CriuMacvlanError):
    """CRIU itself failed (RPC or command line); ``log_tail`` holds the end of its log."""

    exit_code = ExitCode.CRIU

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class HookError(CriuMacvlanError):
    """A plugin hook failed; carries the action and the plugin's message.

    In RPC mode ``log_tail`` holds the end of CRIU's log after it aborted.
    """

    def __init__(self, action: str, message: str, exit_code: int = ExitCode.FAILED, log_tail: str = "") -> None:
        super().__init__(f"{action}: {message}")
        self.action = action
        self.exit_code = exit_code
        self.log_tail = log_tail
