"""Short fuzzing of the sidecar reader in the normal suite (``make fuzz`` runs the long version)."""

from __future__ import annotations

from pathlib import Path

import fuzz_sidecar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from criu_macvlan import images
from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan.errors import ImageError

SHORT = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = sorted(fuzz_sidecar.CORPUS.iterdir())


def test_corpus_is_committed_and_current(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in fuzz_sidecar.write_corpus(tmp_path)}
    committed = {p.name: p.read_bytes() for p in SEEDS}
    assert committed == fresh, "run: python tests/fuzz_sidecar.py --write-corpus"


def test_corpus_valid_ones_decode_edge_ones_fail() -> None:
    for path in SEEDS:
        data = path.read_bytes()
        if path.name.startswith("valid-"):
            images.decode(data)
        else:
            try:
                images.decode(data)
            except ImageError:
                continue
            raise AssertionError(f"{path.name} decoded")


@SHORT
@given(st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    fuzz_sidecar.check(data)


@SHORT
@given(st.binary(max_size=256))
def test_random_bytes_after_valid_magic(data: bytes) -> None:
    fuzz_sidecar.check(images.frame(images.MACVLAN_MAGIC, []) + data)


@SHORT
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_seeds(seed: Path, data: st.DataObject) -> None:
    raw = bytearray(seed.read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        if not raw:
            break
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    fuzz_sidecar.check(bytes(raw))


u32 = st.integers(0, 2**32 - 1)
links = st.builds(
    pb.macvlan_link,
    name=st.text(max_size=20),
    ifindex=u32,
    mode=st.sampled_from([0, 1, 2, 3, 4, 8, 16, 2**31]),
    flags=u32,
    address=st.binary(max_size=8),
    mtu=u32,
    link_flags=u32,
    source_macs=st.lists(st.binary(min_size=5, max_size=7), max_size=3),
    addrs=st.lists(
        st.builds(pb.macvlan_addr, family=st.sampled_from([2, 10, 0]), address=st.binary(max_size=17),
                  prefixlen=st.integers(0, 200), label=st.text(max_size=20)),
        max_size=2,
    ),
    routes=st.lists(
        st.builds(pb.macvlan_route, family=st.sampled_from([2, 10, 7]), dst_len=st.integers(0, 200),
                  gateway=st.binary(max_size=17)),
        max_size=2,
    ),
)


@SHORT
@given(st.lists(links, max_size=4), st.integers(0, 3), st.integers(0, 6))
def test_structured_sidecars(link_list: list[pb.macvlan_link], version: int, n_links: int) -> None:
    head = pb.macvlan_head(version=version, n_links=n_links)
    data = images.frame(images.MACVLAN_MAGIC, [head.SerializeToString(), *(lk.SerializeToString() for lk in link_list)])
    fuzz_sidecar.check(data)
