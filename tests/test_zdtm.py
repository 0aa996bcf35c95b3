"""CRIU's own macvlan test, ``zdtm/static/macvlan``, against the installed criu: natively and
with criu-macvlan enabled through ``CRIU_CONFIG_FILE``, in the flavors ns and uns, each also
with ``--rpc`` (``make zdtm``; ``scripts/zdtm.py`` fetches CRIU's release sources with apt).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.integration
SKIP = 77


def test_zdtm_static_macvlan_passes_with_the_plugin(tmp_path: Path) -> None:
    out = tmp_path / "zdtm.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "zdtm.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode == SKIP:
        pytest.skip(res.stderr.strip())
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    results = json.loads(out.read_text())
    cases = {(r["flavor"], r["rpc"], r["plugin"]): r for r in results}
    assert set(cases) == {(f, rpc, plugin) for f in ("ns", "uns") for rpc in (False, True) for plugin in (False, True)}
    for (flavor, rpc, plugin), r in cases.items():
        assert r["verdict"] == "PASS", r
        # who made the link, from the kept images: CRIU natively (MACVLAN = 7), the plugin otherwise
        expected = "macvlan.img written, entry EXTLINK" if plugin else "CRIU recreated the link (type 7)"
        assert expected in r["detail"], (flavor, rpc, r)
