"""``macvlan[IN]:OUT`` parsing, validation and merging (no root needed)."""

from __future__ import annotations

import pytest

from criu_macvlan.errors import ExitCode, UsageError
from criu_macvlan.mappings import check_ifname, format_mapping, from_externals, merge, parse_mapping


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("macvlan[mv0]:eth0", ("mv0", "eth0")),
        ("mv0:eth0", ("mv0", "eth0")),
        ("macvlan[a-b_c.d]:br-x.100", ("a-b_c.d", "br-x.100")),
        ("macvlan[fifteen-bytes-x]:fifteen-bytes-y", ("fifteen-bytes-x", "fifteen-bytes-y")),
        ("macvlan[é]:ü", ("é", "ü")),  # non-ASCII is fine for the kernel as long as it fits 15 bytes
    ],
)
def test_parse_good(text: str, expected: tuple[str, str]) -> None:
    assert parse_mapping(text) == expected
    inner, outer = expected
    assert parse_mapping(format_mapping(inner, outer)) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("macvlan[mv0]eth0", "expected macvlan[IN]:OUT"),  # no colon after ]
        ("macvlan[mv0:eth0", "expected macvlan[IN]:OUT"),  # no closing bracket
        ("macvlanmv0]:eth0", "expected macvlan[IN]:OUT"),  # no opening bracket
        ("macvlan:eth0", "expected macvlan[IN]:OUT"),
        ("mv0]:eth0", "expected macvlan[IN]:OUT"),
        ("mv0[:eth0", "expected macvlan[IN]:OUT"),
        ("mv0", "expected IN:OUT"),  # short form without colon
        ("", "expected IN:OUT"),
        ("macvlan[]:eth0", "empty macvlan name"),
        ("macvlan[mv0]:", "empty parent name"),
        (":eth0", "empty macvlan name"),
        ("mv0:", "empty parent name"),
        ("macvlan[sixteen-bytes-xx]:eth0", "longer than 15 bytes"),
        ("macvlan[mv0]:sixteen-bytes-xx", "longer than 15 bytes"),
        ("macvlan[éééééééé]:eth0", "longer than 15 bytes"),  # 8 chars, 16 bytes
        ("macvlan[a/b]:eth0", "contains '/'"),
        ("macvlan[mv0]:a/b", "contains '/'"),
        ("macvlan[a b]:eth0", "contains ' '"),
        ("macvlan[mv0]:eth\t0", "contains '\\t'"),
        ("macvlan[mv0]:eth0\n", "contains '\\n'"),
        ("macvlan[a\0b]:eth0", "contains '\\x00'"),
        ("macvlan[a:b]:eth0", "contains ':'"),  # ':' inside the brackets
        ("macvlan[mv0]:eth0:1", "contains ':'"),  # ':' in the parent
        ("a:b:c", "contains ':'"),
        ("macvlan[.]:eth0", "is not allowed"),
        ("macvlan[mv0]:..", "is not allowed"),
    ],
)
def test_parse_bad(text: str, problem: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_mapping(text)
    message = str(info.value)
    assert problem in message
    assert "\n" not in message.replace("\\n", "")  # one line, whatever the input
    assert info.value.exit_code == ExitCode.USAGE


def test_check_ifname_names_what() -> None:
    with pytest.raises(UsageError, match=r"^empty parent$"):
        check_ifname("", "parent")
    assert check_ifname("x" * 15) == "x" * 15
    with pytest.raises(UsageError, match="longer than 15"):
        check_ifname("x" * 16)


def test_merge_agreeing_duplicates() -> None:
    assert merge([("mv0", "eth0"), ("mv1", "eth1"), ("mv0", "eth0")]) == {"mv0": "eth0", "mv1": "eth1"}
    assert merge([("mv0", "eth0")], base={"mv0": "eth0", "mv9": "br0"}) == {"mv0": "eth0", "mv9": "br0"}


def test_merge_disagreeing_duplicates() -> None:
    with pytest.raises(UsageError) as info:
        merge([("mv0", "eth0"), ("mv0", "eth1")])
    assert "conflicting mappings for macvlan 'mv0'" in str(info.value)
    assert "macvlan[mv0]:eth0" in str(info.value) and "macvlan[mv0]:eth1" in str(info.value)
    with pytest.raises(UsageError, match="conflicting"):
        merge([("mv0", "eth1")], base={"mv0": "eth0"})


def test_from_externals_ignores_other_kinds() -> None:
    keys = ["net[4026531840]:host", "macvlan[mv0]:eth0", "veth[v0]:br0", "mnt[/x]:y", "macvlan[mv1]:eth1"]
    assert from_externals(keys) == {"mv0": "eth0", "mv1": "eth1"}
    with pytest.raises(UsageError, match="conflicting"):
        from_externals(["macvlan[mv0]:eth0", "macvlan[mv0]:eth2"])
    with pytest.raises(UsageError, match="expected macvlan"):
        from_externals(["macvlan[mv0:eth0"])


@pytest.mark.parametrize("name", ["e\u2003x", "a\x1fb", "a\x1cb", "a\x7fb", "a\x85b", "\u3000", "x\u00e9"])
def test_names_the_kernel_accepts(name: str) -> None:
    """Only the kernel's own blanks are refused, not every character Python calls whitespace."""
    assert check_ifname(name) == name
    assert parse_mapping(f"macvlan[{name}]:eth0") == (name, "eth0")


@pytest.mark.parametrize(
    ("name", "problem"),
    [("x\u00a0y", "byte 0xa0"), ("x\u00e0y", "byte 0xa0"), ("a\vb", "'\\x0b'"), ("a\rb", "'\\r'")],
)
def test_names_with_a_kernel_blank(name: str, problem: str) -> None:
    """The kernel's isspace() also counts byte 0xa0 (so "à", c3 a0 in UTF-8, is refused too)."""
    with pytest.raises(UsageError) as info:
        check_ifname(name)
    assert f"contains {problem}" in str(info.value)
