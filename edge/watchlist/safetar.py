"""The inner archive of a bundle: a gzip-compressed POSIX ustar stream, read defensively.

Written by our own few lines (deterministic: mtime 0, uid/gid 0, mode 0644) and read by our
own reader, which never touches the file system and accepts only what a bundle may hold:

* regular files only (hard/symbolic links, devices, folders, FIFOs, pax and GNU extension
  headers are refused, each by name);
* names checked by the caller (see :func:`edge.watchlist.bundle.check_member_name`) before any data is read;
* header checksum verified, sizes in plain octal only;
* decompression through :class:`BoundedInflater`: a hard cap on the total decompressed bytes and
  on the compression ratio (after the first MiB), so a decompression bomb is stopped early
  without allocating what it claims; the gzip stream must end exactly where the data ends.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

from edge.watchlist.errors import BundleFormatError, BundleLimitError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
RECORD = 20 * BLOCK  # tar implementations pad the end to this; more trailing zeros are refused
_TYPE_NAMES = {
    b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device", b"4": "a block device",
    b"5": "a folder", b"6": "a FIFO", b"7": "a contiguous file", b"x": "a pax extended header",
    b"g": "a pax global header", b"L": "a GNU long-name header", b"K": "a GNU long-link header",
    b"S": "a GNU sparse file",
}


@dataclass(frozen=True)
class TarEntry:
    """One member to write. ``typeflag``/``linkname`` exist so tests can craft hostile archives."""

    name: str
    data: bytes = b""
    typeflag: bytes = b"0"
    linkname: str = ""


def _header(e: TarEntry) -> bytes:
    name = e.name.encode("utf-8")
    prefix = b""
    if len(name) > 100:  # split at a '/' into prefix (155) + name (100), as ustar does
        cut = name.rfind(b"/", 0, 156)
        if cut <= 0 or len(name) - cut - 1 > 100:
            raise ValueError(f"member name too long for ustar: {e.name!r}")
        prefix, name = name[:cut], name[cut + 1:]
    link = e.linkname.encode("utf-8")[:100]
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % len(e.data)
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = e.typeflag
    h[157:157 + len(link)] = link
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pack_tar(entries: Iterable[TarEntry]) -> bytes:
    """A ustar archive of ``entries`` in order, ending with two zero blocks (no other padding)."""
    parts = []
    for e in entries:
        parts.append(_header(e))
        parts.append(e.data)
        pad = -len(e.data) % BLOCK
        if pad:
            parts.append(bytes(pad))
    parts.append(ZERO_BLOCK * 2)
    return b"".join(parts)


class BoundedInflater:
    """Reads a gzip stream's decompressed bytes exactly, never producing more than
    ``max_out`` bytes in all nor more than ``max_ratio`` times the compressed bytes consumed
    (once past ``grace`` bytes of output). Errors: BundleLimitError for the caps,
    BundleFormatError for corrupt or truncated data."""

    IN_CHUNK = 1 << 16
    OUT_CHUNK = 1 << 20

    def __init__(self, data: bytes, max_out: int, max_ratio: float, grace: int = 1 << 20):
        self._src = memoryview(data)
        self._pos = 0
        self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip only
        self._buf = bytearray()
        self._off = 0
        self.produced = 0
        self.max_out = int(max_out)
        self.max_ratio = float(max_ratio)
        self.grace = int(grace)

    def _available(self) -> int:
        return len(self._buf) - self._off

    def _fill(self, want: int) -> None:
        while self._available() < want and not self._z.eof:
            tail = self._z.unconsumed_tail
            if tail:
                inp = tail
            elif self._pos < len(self._src):
                inp = self._src[self._pos:self._pos + self.IN_CHUNK]
                self._pos += len(inp)
            else:
                return  # input exhausted before the end of the gzip stream
            try:
                out = self._z.decompress(inp, self.OUT_CHUNK)
            except zlib.error as exc:
                raise BundleFormatError(f"the compressed archive is corrupt ({exc})") from None
            self.produced += len(out)
            if self.produced > self.max_out:
                raise BundleLimitError(f"the archive decompresses to more than {self.max_out:,} bytes "
                                       "(decompression bomb?); refused")
            consumed = max(1, self._pos - len(self._z.unconsumed_tail))
            if self.produced > self.grace and self.produced > self.max_ratio * consumed:
                raise BundleLimitError(f"the archive expands more than {self.max_ratio:g}:1 "
                                       f"({consumed:,} compressed bytes gave {self.produced:,}; decompression bomb?); refused")
            if self._off and self._off >= len(self._buf) // 2:
                del self._buf[:self._off]
                self._off = 0
            self._buf += out

    def read(self, n: int, what: str = "archive") -> bytes:
        """Exactly n decompressed bytes, or BundleFormatError if the stream ends first."""
        self._fill(n)
        if self._available() < n:
            raise BundleFormatError(f"the {what} is truncated")
        out = bytes(self._buf[self._off:self._off + n])
        self._off += n
        return out

    def finish(self, max_trailing: int) -> None:
        """Accept at most ``max_trailing`` zero bytes, then require the end of the gzip stream
        and of the input."""
        self._fill(max_trailing + 1)
        rest = self._buf[self._off:]
        if len(rest) > max_trailing or any(rest):
            raise BundleFormatError("unexpected data after the end of the archive")
        if not self._z.eof:
            raise BundleFormatError("the compressed archive is truncated")
        if self._z.unused_data or self._pos < len(self._src):
            raise BundleFormatError("unexpected data after the end of the compressed archive")


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise BundleFormatError(f"{what} uses a binary number; only plain octal is allowed")
    s = field.replace(b"\0", b" ").strip(b" ")
    if not s or any(c not in b"01234567" for c in s):
        raise BundleFormatError(f"{what} is not an octal number: {bytes(field)!r}")
    return int(s, 8)


class TarReader:
    """Member-by-member reader over a :class:`BoundedInflater`.

    ``next_member(check_name)`` returns (name, size) of the next regular file, or None at the
    end-of-archive marker; ``check_name`` is called on the name before anything else is
    accepted. The caller then reads exactly ``size`` bytes with ``read_data``.
    """

    def __init__(self, src: BoundedInflater):
        self.src = src
        self.count = 0

    def next_member(self, check_name: Callable[[str], None]) -> tuple[str, int] | None:
        block = self.src.read(BLOCK)
        if block == ZERO_BLOCK:
            if self.src.read(BLOCK, "archive end marker") != ZERO_BLOCK:
                raise BundleFormatError("malformed archive end marker")
            self.src.finish(RECORD)
            return None
        self.count += 1
        where = f"archive member #{self.count}"
        if block[257:263] != b"ustar\0" or block[263:265] != b"00":
            raise BundleFormatError(f"{where}: not a POSIX ustar header (damaged archive?)")
        stored = _octal(block[148:156], f"{where}: checksum")
        if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
            raise BundleFormatError(f"{where}: header checksum mismatch (damaged archive)")
        raw_name = block[0:100].split(b"\0", 1)[0]
        raw_prefix = block[345:500].split(b"\0", 1)[0]
        try:
            name = raw_name.decode("ascii")
            prefix = raw_prefix.decode("ascii")
        except UnicodeDecodeError:
            raise BundleFormatError(f"{where}: member name is not ASCII: {raw_name[:80]!r}") from None
        if prefix:
            name = prefix + "/" + name
        check_name(name)
        typeflag = block[156:157]
        if typeflag not in (b"0", b"\0"):
            kind = _TYPE_NAMES.get(typeflag, f"of unknown type {typeflag!r}")
            raise BundleFormatError(f"archive member {name!r} is {kind}; only regular files are allowed")
        size = _octal(block[124:136], f"archive member {name!r}: size")
        return name, size

    def read_data(self, size: int, name: str) -> bytes:
        data = self.src.read(size, f"archive member {name!r}")
        pad = -size % BLOCK
        if pad and self.src.read(pad, f"archive member {name!r}") != bytes(pad):
            raise BundleFormatError(f"archive member {name!r}: non-zero padding")
        return data
