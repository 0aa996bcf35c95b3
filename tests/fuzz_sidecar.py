"""Fuzz the sidecar reader: any input either decodes or raises ImageError, nothing else.

Long run (``make fuzz``)::

    python tests/fuzz_sidecar.py [--runs N] [--engine atheris|hypothesis]

atheris (coverage-guided, seeded from ``tests/corpus/sidecar/``) is used when it is
installed; otherwise, or with ``--engine hypothesis``, hypothesis runs the same
property with ``--runs`` examples. ``--write-corpus`` regenerates the seed corpus.
The short version of the same properties runs in the normal suite
(``tests/test_fuzz_sidecar.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "sidecar"
sys.path.insert(0, str(HERE))

from sidecars import valid_samples  # noqa: E402

from criu_macvlan import images, netdev  # noqa: E402
from criu_macvlan import macvlan_pb2 as pb  # noqa: E402
from criu_macvlan.errors import ImageError  # noqa: E402


def check(data: bytes) -> None:
    """The property: ``decode`` returns a valid sidecar that round-trips, or raises ImageError."""
    try:
        sidecar = images.decode(data)
    except ImageError as exc:
        message = str(exc)
        assert message.startswith(f"{images.SIDECAR}: ") and "\n" not in message, message
        return
    again = images.decode(images.encode(sidecar.head, sidecar.links))
    assert again.head == sidecar.head and again.links == sidecar.links


def _head(version: int, n_links: int) -> bytes:
    return bytes(pb.macvlan_head(version=version, n_links=n_links).SerializeToString())


def edge_cases() -> dict[str, bytes]:
    """Hand-made malformed sidecars: each stops the reader at a different check."""
    magic = images.frame(images.MACVLAN_MAGIC, [])
    one = valid_samples()["one-link"]
    head = pb.macvlan_head(version=1, n_links=0).SerializeToString()
    return {
        "empty": b"",
        "short-header": magic[:5],
        "header-only": magic,
        "wrong-common-magic": b"\0\0\0\0" + one[4:],
        "netdev-magic": images.frame(netdev.NETDEV_MAGIC, [head]),
        "size-too-big": magic + b"\xff\xff\xff\xff" + head,
        "size-truncated": magic + b"\x02\x00",
        "truncated-link": one[:-3],
        "future-version": images.frame(images.MACVLAN_MAGIC, [_head(version=99, n_links=0)]),
        "count-mismatch": images.frame(images.MACVLAN_MAGIC, [_head(version=1, n_links=3)]),
        "many-empty-entries": images.frame(images.MACVLAN_MAGIC, [head] + [b""] * 200),
        "garbage-head": images.frame(images.MACVLAN_MAGIC, [b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]),
        "deep-group": images.frame(images.MACVLAN_MAGIC, [b"\x0b" * 200 + b"\x0c" * 200]),
    }


def write_corpus(path: Path = CORPUS) -> list[Path]:
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for prefix, samples in (("valid", valid_samples()), ("edge", edge_cases())):
        for name, data in samples.items():
            target = path / f"{prefix}-{name}.img"
            target.write_bytes(data)
            written.append(target)
    return written


def run_atheris(runs: int) -> int:
    """Fuzz in a child process (libFuzzer exits the process when done), growing a throw-away corpus."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="fuzz-sidecar-"))  # never the committed corpus
    try:
        for seed in CORPUS.iterdir():
            shutil.copy(seed, work / seed.name)
        return subprocess.run([sys.executable, __file__, "--atheris-child", str(work), "--runs", str(runs)]).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


def atheris_child(work: str, runs: int) -> None:
    import atheris

    atheris.instrument_all()  # the reader is already imported: instrument its bytecode in place
    argv = [sys.argv[0], f"-runs={runs}", "-max_len=16384", "-print_final_stats=1", work]
    atheris.Setup(argv, check)
    atheris.Fuzz()  # exits; an uncaught exception is reported as a crash (non-zero exit)


def run_hypothesis(runs: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = [p.read_bytes() for p in sorted(CORPUS.iterdir())]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            op = draw(st.integers(0, 2))
            pos = draw(st.integers(0, len(data)))
            if op == 0 and data and pos < len(data):
                data[pos] = draw(st.integers(0, 255))
            elif op == 1:
                data[pos:pos] = draw(st.binary(max_size=16))
            else:
                del data[pos : pos + draw(st.integers(1, 16))]
        return bytes(data)

    @settings(max_examples=runs, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated(), st.binary(max_size=512)))
    def prop(data: bytes) -> None:
        check(data)

    prop()
    print(f"hypothesis: {runs} inputs, no exception other than ImageError")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("FUZZ_RUNS", "200000")))
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--write-corpus", action="store_true")
    parser.add_argument("--atheris-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.atheris_child:
        atheris_child(args.atheris_child, args.runs)
    if args.write_corpus:
        for path in write_corpus():
            print(path.relative_to(HERE.parent))
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    return run_atheris(args.runs) if engine == "atheris" else run_hypothesis(args.runs)


if __name__ == "__main__":
    sys.exit(main())
