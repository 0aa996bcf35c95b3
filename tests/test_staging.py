"""pre-dump's stage, finished after CRIU has the answer: post-dump waits for it, and says how it failed (no root)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from criu_macvlan.errors import CriuMacvlanError
from criu_macvlan.macvlan import staging


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_the_stage_exists_from_the_answer_on_and_post_dump_waits_for_the_read(tmp_path: Path, dir_fd: int) -> None:
    pending = staging.begin(dir_fd)
    assert (tmp_path / staging.STAGED).read_bytes() == b""  # network-unlock's guard file is there already
    go = threading.Event()

    def read() -> bytes:
        go.wait(10)
        return b"the stage"

    reader = threading.Thread(target=pending.run, args=(read,))
    reader.start()
    waiter = threading.Thread(target=staging.wait, args=(dir_fd,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # still reading: post-dump waits
    go.set()
    waiter.join(10)
    reader.join(10)
    assert not waiter.is_alive()
    assert (tmp_path / staging.STAGED).read_bytes() == b"the stage"


def test_a_failed_read_is_reported_by_the_wait(tmp_path: Path, dir_fd: int) -> None:
    def read() -> bytes:
        raise CriuMacvlanError("macvlan 'mv0' sits on a parent inside the dumped network namespace")

    staging.begin(dir_fd).run(read)
    with pytest.raises(CriuMacvlanError, match=r"^macvlan 'mv0' sits on a parent inside"):
        staging.wait(dir_fd)
    assert staging.drop(dir_fd)  # network-unlock's cleanup
    assert os.listdir(tmp_path) == []


def test_a_bug_in_the_read_is_one_line_too(dir_fd: int) -> None:
    def read() -> bytes:
        raise KeyError("ifindex")

    staging.begin(dir_fd).run(read)
    with pytest.raises(CriuMacvlanError, match=r"^internal error: KeyError: 'ifindex'$"):
        staging.wait(dir_fd)


def test_nothing_to_save_leaves_no_stage(tmp_path: Path, dir_fd: int) -> None:
    staging.begin(dir_fd).run(lambda: None)
    staging.wait(dir_fd)
    assert os.listdir(tmp_path) == []


def test_a_reader_that_died_is_named_not_waited_for(dir_fd: int) -> None:
    staging.begin(dir_fd).close()  # its lock gone without a stage: what a killed process leaves
    with pytest.raises(CriuMacvlanError, match="ended before it staged them"):
        staging.wait(dir_fd)


def test_a_read_that_never_ends_is_waited_for_until_the_deadline(dir_fd: int) -> None:
    pending = staging.begin(dir_fd)
    try:
        started = time.monotonic()
        with pytest.raises(CriuMacvlanError, match=r"did not finish in 0.1 s"):
            staging.wait(dir_fd, timeout=0.1)
        assert time.monotonic() - started >= 0.1
    finally:
        pending.close()


def test_a_stage_written_whole_is_not_waited_for(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / staging.STAGED).write_bytes(b"a stage")
    staging.wait(dir_fd, timeout=0)


def test_a_second_delivery_leaves_the_first_ones_read_alone(tmp_path: Path, dir_fd: int) -> None:
    import logging

    from criu_macvlan.context import ActionContext, ImagesDir, Mode
    from criu_macvlan.plugin import MacvlanPlugin

    pending = staging.begin(dir_fd)
    try:
        assert staging.reading(dir_fd)
        (tmp_path / ".criu-macvlan.tmp-1-abcd").write_bytes(b"the first reader's stage, half written")
        d = ImagesDir.open(str(tmp_path))
        try:
            ctx = ActionContext(action="pre-dump", mode=Mode.ACTION_SCRIPT, images=d, pid=os.getpid(),
                                log=logging.getLogger("t"))
            MacvlanPlugin().criu_pre_dump(ctx)  # would otherwise drop both, and read our own netns
        finally:
            d.close()
        assert ctx.later == []
        assert sorted(os.listdir(tmp_path)) == [".criu-macvlan.staged", ".criu-macvlan.tmp-1-abcd"]
    finally:
        pending.close()
    assert not staging.reading(dir_fd)
