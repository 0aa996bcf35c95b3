"""What a cold action defines: every class on its path is a plain one (``make bench`` holds its cost)."""

from __future__ import annotations

import subprocess
import sys

# The modules of the cold actions that do work (pre-dump, post-dump, setup-namespaces), with those their
# hooks import when they run (engines: under an engine's CRIU, in RPC mode).
COLD_PATH = ("criu_macvlan.hook", "criu_macvlan.plugin", "criu_macvlan.manager", "criu_macvlan.criuconf",
             "criu_macvlan.engines", "criu_macvlan.delivered", "criu_macvlan.macvlan.dump",
             "criu_macvlan.macvlan.restore", "criu_macvlan.macvlan.announcing", "criu_macvlan.announcer",
             "criu_macvlan.netdev", "criu_macvlan.netlink")

CHECK = f"""
import importlib, sys
for name in {COLD_PATH!r}:
    importlib.import_module(name)
costly = []
for name, module in sorted(sys.modules.items()):
    if not name.startswith("criu_macvlan") or name.endswith("_pb2"):
        continue
    for attr, value in vars(module).items():
        if isinstance(value, type) and value.__module__ == name and (
            hasattr(value, "__dataclass_fields__")  # a dataclass
            or (issubclass(value, tuple) and hasattr(value, "_fields"))  # a NamedTuple
            or (issubclass(value, dict) and hasattr(value, "__total__"))  # a TypedDict
        ):
            costly.append(name + "." + attr)
print(" ".join(costly) or "-", "dataclasses" in sys.modules)
"""


def test_the_cold_path_defines_only_plain_classes() -> None:
    """A dataclass, NamedTuple or TypedDict costs its definition (annotations compiled) on every cold action."""
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["-", "False"], f"defined on the cold path: {out[0]}; dataclasses imported: {out[1]}"
