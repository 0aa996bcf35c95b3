"""``macvlan[IN]:OUT`` mappings: which host interface each restored macvlan attaches to.

``IN`` is the macvlan's name inside the dumped network namespace, ``OUT`` the name
of the parent (lower) device on the restoring host. The syntax is CRIU's own
``--external macvlan[IN]:OUT``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from .errors import UsageError

log = logging.getLogger("criu_macvlan")

IFNAMSIZ = 16  # includes the terminating NUL: names have at most 15 bytes
PREFIX = "macvlan["


# The kernel's isspace() (lib/ctype.c), applied to each byte of the name: the ASCII
# blanks and byte 0xa0 (Latin-1's no-break space), which is also the second UTF-8
# byte of characters such as U+00A0 and "à" (U+00E0): names with those are refused.
_KERNEL_BLANKS = frozenset(b"\t\n\v\f\r \xa0")
_REFUSED = frozenset(b"/:\0") | _KERNEL_BLANKS


def check_ifname(name: str, what: str = "interface name") -> str:
    """Return ``name`` if the kernel would accept it as an interface name.

    Exactly the kernel's ``dev_valid_name`` (net/core/dev.c) on the UTF-8 bytes:
    1 to 15 bytes, not ``.`` or ``..``, no ``/``, ``:``, NUL or byte its
    ``isspace()`` counts as blank; and no ``%``, which ``dev_get_valid_name``
    expands as a template, so no link is ever named with one. Other characters
    Python calls whitespace (U+2003, ``\x1f``, ...) are fine to the kernel.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise UsageError(f"empty {what}")
    if len(raw) >= IFNAMSIZ:
        raise UsageError(f"{what} {name!r} is longer than {IFNAMSIZ - 1} bytes")
    if raw in (b".", b".."):
        raise UsageError(f"{what} {name!r} is not allowed")
    bad = next((byte for byte in raw if byte in _REFUSED), None)
    if bad is not None:
        shown = repr(chr(bad)) if bad < 0x80 else f"byte {bad:#x} (a blank to the kernel)"
        raise UsageError(f"{what} {name!r} contains {shown}")
    if b"%" in raw:
        raise UsageError(f"{what} {name!r} contains '%' (the kernel takes it as a name template)")
    return name


def parse_mapping(text: str) -> tuple[str, str]:
    """Parse ``macvlan[IN]:OUT`` (or the CLI short form ``IN:OUT``) into ``(IN, OUT)``."""
    if text.startswith(PREFIX):
        close = text.find("]", len(PREFIX))
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise UsageError(f"bad mapping {text!r}: expected macvlan[IN]:OUT")
        inner, outer = text[len(PREFIX) : close], text[close + 2 :]
    elif text.startswith("macvlan") or "[" in text or "]" in text:
        raise UsageError(f"bad mapping {text!r}: expected macvlan[IN]:OUT")
    else:
        inner, sep, outer = text.partition(":")
        if not sep:
            raise UsageError(f"bad mapping {text!r}: expected IN:OUT or macvlan[IN]:OUT")
    check_ifname(inner, f"macvlan name in mapping {text!r}")
    check_ifname(outer, f"parent name in mapping {text!r}")
    return inner, outer


def is_macvlan_external(key: str) -> bool:
    """True for an ``--external`` key of the ``macvlan[...]`` kind."""
    return key.startswith(PREFIX)


def format_mapping(inner: str, outer: str) -> str:
    return f"{PREFIX}{inner}]:{outer}"


def merge(pairs: Iterable[tuple[str, str]], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Merge mappings; a repeated ``IN`` must name the same ``OUT``.

    Later sources (CRIU's command line after its config files) may not silently
    override earlier ones: two different parents for one link are a user error.
    """
    result = dict(base or {})
    for inner, outer in pairs:
        known = result.get(inner)
        if known is not None and known != outer:
            raise UsageError(
                f"conflicting mappings for macvlan {inner!r}: {format_mapping(inner, known)} "
                f"and {format_mapping(inner, outer)}"
            )
        result[inner] = outer
    return result


def overlay(result: dict[str, str], origins: dict[str, str], later: Mapping[str, str], origin: str) -> None:
    """Apply the mappings of a later source, ``origin``, to ``result``, as CRIU looks them up: the
    later source wins. A parent it changes is logged, naming both sources (``origins``: the source
    of each mapping in ``result``, kept up to date here)."""
    for inner, outer in later.items():
        lost = result.get(inner)
        if lost is not None and lost != outer:
            log.warning(
                "%s from %s overrides %s from %s (CRIU uses the last source)",
                format_mapping(inner, outer), origin, format_mapping(inner, lost), origins[inner],
            )
        result[inner], origins[inner] = outer, origin


def from_externals(keys: Iterable[str]) -> dict[str, str]:
    """Mappings from a list of ``--external`` keys (other kinds are ignored)."""
    return merge(parse_mapping(k) for k in keys if is_macvlan_external(k))
