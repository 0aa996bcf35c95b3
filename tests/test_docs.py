"""The documentation matches the code, as datasette checks its plugin hooks.

A hook users cannot find in docs/plugins.md does not exist for them, a link that
leads nowhere loses the reader, and a README that grows back into a reference
stops being a front door.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from criu_macvlan import hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLUGINS = ROOT / "docs" / "plugins.md"
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HOOK_HEADING = re.compile(r"^### `(\w+)`\s*$", re.M)


def hookspecs_by_name() -> dict[str, Callable[..., object]]:
    spec_attr = f"{hookspecs.PROJECT}_spec"
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and getattr(fn, spec_attr, None) is not None
    }


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """Markdown outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, title in HEADING.findall(without_code(path.read_text())):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def documented_signature(text: str, name: str) -> ast.FunctionDef:
    """The ``def`` in the first python block under the hook's own heading."""
    section = re.search(rf"^### `{name}`\s*$(.*?)(?=^#{{1,3}} |\Z)", text, re.M | re.S)
    assert section is not None, f"docs/plugins.md has no heading ### `{name}`"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.M | re.S)
    assert block is not None, f"docs/plugins.md: ### `{name}` has no python block with its signature"
    tree = ast.parse(block.group(1))
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert [d.name for d in defs] == [name], f"docs/plugins.md: ### `{name}` shows {[d.name for d in defs]}"
    return defs[0]


@pytest.mark.parametrize("name", sorted(hookspecs_by_name()))
def test_every_hook_is_documented_with_its_signature(name: str) -> None:
    documented = documented_signature(PLUGINS.read_text(), name)
    spec = inspect.signature(hookspecs_by_name()[name])
    params = documented.args
    assert not (params.vararg or params.kwarg or params.kwonlyargs or params.posonlyargs)
    assert [a.arg for a in params.args] == list(spec.parameters), name
    shown = [ast.unparse(a.annotation) if a.annotation else None for a in params.args]
    # hookspecs.py uses postponed annotations: inspect gives them as the source text
    assert shown == [str(p.annotation) for p in spec.parameters.values()], name
    returns = ast.unparse(documented.returns) if documented.returns else None
    assert returns == str(spec.return_annotation), name


def test_plugins_doc_names_no_hook_that_does_not_exist() -> None:
    headed = HOOK_HEADING.findall(without_code(PLUGINS.read_text()))
    assert sorted(headed) == sorted(hookspecs_by_name())  # each once, none made up


def test_every_hook_is_in_the_actions_table_or_a_driver_hook() -> None:
    """The doc's headings come from hookspecs; this keeps hookspecs' own lists in step with them."""
    listed = set(hookspecs.ACTIONS.values()) | set(hookspecs.DRIVER_HOOKS)
    assert listed == set(hookspecs_by_name())


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(without_code(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, file:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert broken == []


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_parse(doc: Path) -> None:
    for block in re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.M | re.S):
        ast.parse(block)


def test_readme_links_to_every_doc() -> None:
    linked = {Path(t.partition("#")[0]) for t in LINK.findall(README.read_text())}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.relative_to(ROOT) not in linked]
    assert missing == []


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference text to docs/"


def test_slug_matches_githubs() -> None:
    assert slug("Keep it warm: `criu-macvlan serve`") == "keep-it-warm-criu-macvlan-serve"
    assert slug("The sidecar `macvlan.img` and CRIU's images (exit 3)") == (
        "the-sidecar-macvlanimg-and-crius-images-exit-3"
    )
    assert slug("What the plugin trusts, and what it checks") == "what-the-plugin-trusts-and-what-it-checks"
