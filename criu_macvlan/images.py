"""Image I/O: CRIU's image framing, safe file access, and the ``macvlan.img`` sidecar.

Both use CRIU's image framing (``criu.org/Images``): two 32-bit magics, then
entries, each a 32-bit size and a protobuf payload. The magics and the netdev
schema come from pycriu. pycriu's own reader (``pycriu.images.load``) turns
entries into dicts: that loses protobuf fields it does not know (the netdev
rewrite must keep them byte for byte) and does not bound sizes (the sidecar may
come from another host and is treated as hostile). So entries are split here,
with every size checked, and each payload is parsed with its generated class.

All files are opened relative to the images directory fd, never following a
symlink; ours are created ``O_EXCL`` with mode 0600 and replaced atomically
(write a temp file, rename it over the target). The file that replaces another
keeps its mode and owner; a new one gets the mode CRIU gives its images.
CRIU's ``netdev-<id>.img`` is read and rewritten in :mod:`.netdev`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence

from google.protobuf.message import DecodeError, Message

from . import macvlan_pb2 as pb
from .errors import ImageError
from .mappings import check_ifname

SIDECAR = "macvlan.img"
STAGED = ".criu-macvlan.staged"
TMP_PREFIX = ".criu-macvlan.tmp-"
VERSION = 1

IMG_COMMON = 0x54564319  # CRIU's IMG_COMMON_MAGIC (pycriu.images.magic "IMG_COMMON")
MACVLAN_MAGIC = 0x4D564C31  # our own image magic

# protobuf's C++ backend stops at a stray end-group tag, drops the rest and only warns:
# parse_all() makes that an error of the image instead (the warning would be one more line)
warnings.filterwarnings("ignore", "Unexpected end-group tag", RuntimeWarning, re.escape(__name__))

IMAGE_MODE = 0o644  # CRIU's CR_FD_PERM: it opens its images with it, under its umask
MAX_IMAGE_BYTES = 64 << 20
MAX_LINKS = 4096
MAX_ADDRS = 256
MAX_ROUTES = 1024
MAX_SOURCE_MACS = 4096
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}  # kernel if_link.h
MACVLAN_FLAGS = {1: "nopromisc", 2: "nodst"}
MACVLAN_FLAG_MASK = sum(MACVLAN_FLAGS)

_U32 = struct.Struct("<I")
_MAGICS = struct.Struct("<II")


class Sidecar:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """The sidecar image: its head and its links."""

    __slots__ = ("head", "links")

    def __init__(self, head: pb.macvlan_head, links: list[pb.macvlan_link]) -> None:
        self.head, self.links = head, links

    def __repr__(self) -> str:
        return f"Sidecar({len(self.links)} links)"


# ---------------------------------------------------------------- framing


def frame(magic: int, payloads: Iterable[bytes]) -> bytes:
    parts = [_MAGICS.pack(IMG_COMMON, magic)]
    for payload in payloads:
        parts.append(_U32.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def unframe(data: bytes, magic: int, name: str, max_entries: int | None = None) -> list[bytes]:
    """Split an image into its entry payloads, refusing anything out of bounds.

    ``max_entries`` caps the number of entries (a file of empty entries would
    otherwise cost far more memory than its size).
    """
    if len(data) < _MAGICS.size:
        raise ImageError(f"{name}: too short for an image header ({len(data)} bytes)")
    common, own = _MAGICS.unpack_from(data)
    if common != IMG_COMMON or own != magic:
        raise ImageError(f"{name}: wrong magic {common:#010x}/{own:#010x}, expected {magic:#010x}")
    entries: list[bytes] = []
    pos = _MAGICS.size
    while pos < len(data):
        if pos + _U32.size > len(data):
            raise ImageError(f"{name}: truncated entry size at byte {pos}")
        (size,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        if size > len(data) - pos:
            raise ImageError(f"{name}: entry at byte {pos - 4} claims {size} bytes, file has {len(data) - pos}")
        if max_entries is not None and len(entries) >= max_entries:
            raise ImageError(f"{name}: more than {max_entries} entries")
        entries.append(data[pos : pos + size])
        pos += size
    return entries


# ------------------------------------------------------------ file access


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)


def _not_regular(name: str, mode: int) -> ImageError | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((what for test, what in _KINDS if test(mode)), f"of file type {stat.S_IFMT(mode):#o}")
    return ImageError(f"{name}: is {kind}, not a regular file")


def read_file(dir_fd: int, name: str, limit: int = MAX_IMAGE_BYTES) -> bytes | None:
    """Read ``name`` from the images dir, or ``None`` if it does not exist.

    Only a regular file is read. ``O_NONBLOCK``: opening a FIFO would wait for a
    writer (forever, while CRIU waits for us); ``O_NOCTTY``: a planted tty never
    becomes our controlling terminal.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{name}: is a symlink; refusing to follow it") from exc
        try:  # a socket (ENXIO) or a device on a nodev mount (EACCES): say what it is
            special = _not_regular(name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            special = None
        raise (special or ImageError(f"{name}: {exc.strerror}")) from exc
    try:
        st = os.fstat(fd)
        special = _not_regular(name, st.st_mode)
        if special is not None:
            raise special
        if st.st_size > limit:
            raise ImageError(f"{name}: larger than {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ImageError(f"{name}: larger than {limit} bytes")
    return data


def _random_suffix() -> str:
    """Of a temp file name (os.urandom: the ``secrets`` module would add its imports to each action)."""
    return os.urandom(4).hex()


def write_atomic(dir_fd: int, name: str, data: bytes) -> None:
    """Replace ``name`` in the images dir by ``data``: readers see the old file or the new one.

    No fsync, as CRIU does not sync its own images: a killed writer leaves the old
    file or the new one; surviving a power loss takes a ``sync`` of the whole
    images directory after the dump, ours and CRIU's files alike.

    A failure (full disk, read-only dir, a planted file at the temp name) is an
    :class:`ImageError`; the old file stays and no temp file is left.
    """
    try:
        replace(dir_fd, name, data)
    except OSError as exc:
        raise ImageError(f"{name}: cannot write it in the images directory: {exc.strerror or exc}") from exc


def replace(dir_fd: int, name: str, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` as ``name`` in directory ``dir_fd`` through a new temp file renamed over it.

    The temp file is created exclusively, never through a symlink; the rename
    replaces a symlink named ``name``, never writes where it points. ``OSError`` on failure.
    Without ``mode`` the new file keeps the mode and owner of the one it replaces,
    else gets CRIU's mode for its images.
    """
    owner: tuple[int, int] | None = None
    if mode is None:
        mode, owner = _target_mode(dir_fd, name)
    tmp = f"{TMP_PREFIX}{os.getpid()}-{_random_suffix()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # In a user namespace the restored tasks open CRIU's images as an
            # unprivileged host uid: a replaced image must stay as readable as CRIU made it.
            made = os.fstat(fd)
            if owner is not None and owner != (made.st_uid, made.st_gid):
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink(dir_fd, tmp)
        raise


def _target_mode(dir_fd: int, name: str) -> tuple[int, tuple[int, int] | None]:
    """The mode (and owner) the new ``name`` gets: those of the regular file it replaces,
    else CRIU's for its images (``CR_FD_PERM``, 0644, less the umask)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    return IMAGE_MODE & ~_umask(), None


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def rename(dir_fd: int, old: str, new: str) -> None:
    """Rename ``old`` over ``new`` in the images dir (atomic: readers see the old ``new`` or this one)."""
    try:
        os.rename(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        raise ImageError(f"{new}: cannot rename {old} to it in the images directory: {exc.strerror or exc}") from exc


def unlink(dir_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def remove_temp_files(dir_fd: int) -> None:
    """Remove temp files a killed writer of ours may have left in the images dir."""
    for entry in os.listdir(dir_fd):
        if entry.startswith(TMP_PREFIX):
            unlink(dir_fd, entry)


# ---------------------------------------------------------------- sidecar


def encode(head: pb.macvlan_head, links: Sequence[pb.macvlan_link]) -> bytes:
    head.version = VERSION
    head.n_links = len(links)
    validate(Sidecar(head, list(links)), "sidecar")
    return frame(MACVLAN_MAGIC, [head.SerializeToString(), *(link.SerializeToString() for link in links)])


def decode(data: bytes, name: str = SIDECAR) -> Sidecar:
    """Parse and validate a sidecar; every problem is an :class:`ImageError` naming ``name``."""
    entries = unframe(data, MACVLAN_MAGIC, name, max_entries=1 + MAX_LINKS)
    if not entries:
        raise ImageError(f"{name}: no head entry")
    head = pb.macvlan_head()
    with quiet_protobuf():
        _parse(head, entries[0], name, "head")
    if head.version > VERSION:
        raise ImageError(
            f"{name}: format version {head.version} is newer than this criu-macvlan ({VERSION}); upgrade it"
        )
    if head.version < 1:
        raise ImageError(f"{name}: bad format version {head.version}")
    if head.n_links != len(entries) - 1:
        raise ImageError(f"{name}: head announces {head.n_links} links, image has {len(entries) - 1}")
    if head.n_links > MAX_LINKS:
        raise ImageError(f"{name}: {head.n_links} links is more than the limit of {MAX_LINKS}")
    links = []
    with quiet_protobuf():
        for i, raw in enumerate(entries[1:]):
            link = pb.macvlan_link()
            _parse(link, raw, name, f"link #{i}")
            links.append(link)
    sidecar = Sidecar(head, links)
    validate(sidecar, name)
    return sidecar


@contextlib.contextmanager
def quiet_protobuf() -> Iterator[None]:
    """Parse with fd 2 pointed at /dev/null when protobuf's C++ backend is in use.

    That backend logs ``[libprotobuf ERROR ...] String field ... contains invalid
    UTF-8`` on fd 2 (CRIU's log, for an action script) and hands the field back as
    bytes, which :func:`validate` reports in its own one line; no Python switch
    turns the log off. The hooks parse images with no other thread writing to
    stderr meanwhile.
    """
    if not _cpp_backend():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(null, 2, inheritable=True)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2, inheritable=True)
        os.close(saved)


def _cpp_backend() -> bool:
    from google.protobuf.internal import api_implementation

    return bool(api_implementation.Type() == "cpp")


def parse_all(msg: Message, raw: bytes) -> None:
    """``msg.ParseFromString(raw)``, every byte of it, or :class:`DecodeError`."""
    if msg.ParseFromString(raw) != len(raw):
        raise DecodeError("data after an end-group tag")


def _parse(msg: pb.macvlan_head | pb.macvlan_link, raw: bytes, name: str, what: str) -> None:
    try:
        parse_all(msg, raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ImageError(f"{name}: {what} is not a valid entry ({exc})") from exc
    if not msg.IsInitialized():
        # in every protobuf implementation, not in types-protobuf's stub of Message
        missing = ", ".join(msg.FindInitializationErrors())  # type: ignore[union-attr]
        raise ImageError(f"{name}: {what} lacks required fields: {missing}")


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ImageError(f"{name}: {message}")


def validate(sidecar: Sidecar, name: str) -> None:
    """Check every value a restore would hand to the kernel."""
    names: set[str] = set()
    indexes: set[int] = set()
    _check(isinstance(sidecar.head.hostname, str), name, "head hostname is not valid UTF-8")
    for link in sidecar.links:
        # protobuf's C++ backend hands back invalid UTF-8 in a string field as bytes
        _check(isinstance(link.name, str), name, f"link name {link.name!r} is not valid UTF-8")
        try:
            check_ifname(link.name, "link name")
        except Exception as exc:
            raise ImageError(f"{name}: {exc}") from exc
        what = f"link {link.name!r}"
        _check(isinstance(link.parent.name, str), name, f"{what}: parent name is not valid UTF-8")
        _check(link.name not in names, name, f"duplicate link name {link.name!r}")
        _check(link.ifindex not in indexes, name, f"duplicate ifindex {link.ifindex}")
        names.add(link.name)
        indexes.add(link.ifindex)
        _check(0 < link.ifindex < 1 << 31, name, f"{what}: bad ifindex {link.ifindex}")
        _check(link.mode in MACVLAN_MODES, name, f"{what}: unknown macvlan mode {link.mode}")
        _check(not link.flags & ~MACVLAN_FLAG_MASK, name, f"{what}: unknown macvlan flags {link.flags:#x}")
        _check(len(link.address) == 6, name, f"{what}: MAC address has {len(link.address)} bytes, not 6")
        _check(68 <= link.mtu <= 65535, name, f"{what}: MTU {link.mtu} out of range")
        _check(len(link.source_macs) <= MAX_SOURCE_MACS, name, f"{what}: too many source MACs")
        _check(all(len(m) == 6 for m in link.source_macs), name, f"{what}: bad source MAC length")
        _check(not link.source_macs or link.mode == 16, name, f"{what}: source MACs on a non-source link")
        _check(len(link.addrs) <= MAX_ADDRS, name, f"{what}: more than {MAX_ADDRS} addresses")
        _check(len(link.routes) <= MAX_ROUTES, name, f"{what}: more than {MAX_ROUTES} routes")
        for addr in link.addrs:
            size = {2: 4, 10: 16}.get(addr.family)
            _check(size is not None, name, f"{what}: address family {addr.family} unknown")
            _check(len(addr.address) == size, name, f"{what}: address has {len(addr.address)} bytes")
            _check(addr.prefixlen <= 8 * (size or 0), name, f"{what}: prefix length {addr.prefixlen}")
            for opt in (addr.broadcast, addr.peer):
                _check(opt in (b"",) or len(opt) == size, name, f"{what}: bad address length")
            _check(_short_str(addr.label), name, f"{what}: bad address label {addr.label!r}")
        for route in link.routes:
            size = {2: 4, 10: 16}.get(route.family)
            _check(size is not None, name, f"{what}: route family {route.family} unknown")
            _check(route.dst_len <= 8 * (size or 0), name, f"{what}: route prefix length {route.dst_len}")
            for opt in (route.dst, route.gateway, route.prefsrc):
                _check(opt in (b"",) or len(opt) == size, name, f"{what}: bad route address length")


def _short_str(value: object) -> bool:
    """A valid UTF-8 string that fits an interface-name-sized kernel field (IFA_LABEL)."""
    return isinstance(value, str) and "\0" not in value and len(value.encode(errors="replace")) < 16


def load(dir_fd: int, name: str = SIDECAR) -> Sidecar | None:
    """Read the sidecar from the images dir, or ``None`` if the dump had no macvlan."""
    data = read_file(dir_fd, name)
    return None if data is None else decode(data, name)
