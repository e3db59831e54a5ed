"""Code bundles packed in Python, byte for byte as the ``ferry`` CLI packs them.

A bundle is the pipeline's folder as a gzip-compressed tar archive, named by
the BLAKE3 digest of the compressed bytes. :func:`pack_dir` reproduces the
Rust ``ferry_common::bundle::pack_dir`` exactly, so a bundle packed here has
the same digest as ``ferry bundle FOLDER`` (and ``ferry run``) gives:

* entries are the folder's regular files and directories (the folder itself
  is not an entry), sorted by path component by component (``a/b`` before
  ``a.txt``); symbolic links, sockets, FIFOs and devices are skipped, never
  followed, and anything named ``.git`` is skipped with all it holds;
* ``.ferryignore`` files (gitignore syntax, in the folder or any folder below
  it, each applying to its own folder's subtree) exclude paths; ``.gitignore``
  files, global git excludes and hidden-file rules are *not* applied;
* every header is a GNU tar header as the Rust ``tar`` crate writes it: mtime
  0, uid/gid 0, mode ``0o755`` (directories and owner-executable files) or
  ``0o644``, no user or group names, numbers as NUL-terminated octal, paths
  over 100 bytes as a ``././@LongLink`` entry followed by a truncated name;
* the gzip container is the one ``flate2``'s ``GzBuilder`` writes (mtime 0,
  no flags, XFL 0, OS 255) around a raw deflate stream at level 6.

Files are streamed from disk: only the compressed archive is held in memory.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Sequence, Tuple, Union

import blake3

__all__ = [
    "BundleError",
    "BundleTooLargeError",
    "IGNORE_FILE_NAME",
    "MAX_BUNDLE_BYTES",
    "PackedBundle",
    "pack_dir",
]

#: The largest compressed bundle Ferry accepts, in bytes (512 MiB).
MAX_BUNDLE_BYTES = 512 * 1024 * 1024

#: Name of the file, in gitignore syntax, that excludes paths from a bundle.
IGNORE_FILE_NAME = ".ferryignore"

_BLOCK = 512
_READ_CHUNK = 1024 * 1024
# Tar bytes gathered before they are handed to the compressor (the deflate
# output does not depend on how its input is split).
_FEED_CHUNK = 256 * 1024

# The 10-byte gzip header flate2's GzBuilder writes for
# `.mtime(0).operating_system(255)` at the default level: magic, CM=8 (deflate),
# FLG=0, MTIME=0, XFL=0 (neither best nor fastest), OS=255.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class BundleError(Exception):
    """A folder could not be packed into a bundle (missing folder, unreadable
    file or directory, or a bundle over the size limit)."""


class BundleTooLargeError(BundleError):
    """The compressed bundle would be larger than the limit
    (:data:`MAX_BUNDLE_BYTES` unless told otherwise).

    Attributes:
        folder: The folder being packed.
        limit: The limit that was exceeded, in bytes.
    """

    def __init__(self, folder: str, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        super().__init__(
            f"the bundle of {folder} is larger than the limit of {limit} bytes "
            f"({limit // (1024 * 1024)} MiB); exclude large files (data, checkpoints, "
            "virtual environments) with a .ferryignore file"
        )


@dataclass(frozen=True)
class PackedBundle:
    """A packed bundle: the compressed archive, its digest and how many files it holds."""

    #: The gzip-compressed tar archive.
    data: bytes
    #: Hex BLAKE3 digest of ``data``.
    digest: str
    #: Number of regular files in the archive (directories not counted).
    files: int

    def __repr__(self) -> str:
        return (
            f"PackedBundle(data=<{len(self.data)} bytes>, digest={self.digest!r}, "
            f"files={self.files})"
        )


def pack_dir(folder: Union[str, "os.PathLike[str]"]) -> PackedBundle:
    """Packs ``folder`` into a deterministic gzip-compressed tar archive.

    The result is byte-identical to what the ``ferry`` CLI packs for the same
    folder (``ferry bundle FOLDER`` shows its digest), so the digests agree.
    Paths matched by ``.ferryignore`` files are left out; ``.gitignore`` files
    are not applied, ``.git`` is always skipped and symbolic links are skipped
    silently.

    Args:
        folder: The folder to pack.

    Returns:
        The archive bytes, their hex BLAKE3 digest and the number of files.

    Raises:
        BundleError: ``folder`` is missing or not a directory, or a file or
            directory in it cannot be read.
        BundleTooLargeError: The compressed archive would exceed
            :data:`MAX_BUNDLE_BYTES`.
    """
    return _pack_dir_with_limit(folder, MAX_BUNDLE_BYTES)


# --------------------------------------------------------------------------
# Packing


class _GzipSink:
    """Compresses a tar stream into flate2's gzip framing, refusing to grow past a limit."""

    def __init__(self, folder: str, limit: int) -> None:
        self._folder = folder
        self._limit = limit
        self._out = bytearray(_GZIP_HEADER)
        self._pending = bytearray()
        self._compressor = zlib.compressobj(
            6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY
        )
        self._crc = 0
        self._size = 0

    def write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._pending += data
        if len(self._pending) >= _FEED_CHUNK:
            self._feed()

    def _feed(self) -> None:
        if self._pending:
            self._emit(self._compressor.compress(bytes(self._pending)))
            self._pending.clear()

    def _emit(self, data: bytes) -> None:
        if len(self._out) + len(data) > self._limit:
            raise BundleTooLargeError(self._folder, self._limit)
        self._out += data

    def finish(self) -> bytes:
        self._feed()
        self._emit(self._compressor.flush(zlib.Z_FINISH))
        self._emit(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        return bytes(self._out)


def _pack_dir_with_limit(folder: Union[str, "os.PathLike[str]"], limit: int) -> PackedBundle:
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise BundleError(f"cannot pack {root}: it is not a directory")
    items = sorted(_collect_items(root), key=lambda item: item.parts)

    sink = _GzipSink(root, limit)
    files = 0
    for item in items:
        path = b"/".join(item.parts)
        if item.is_dir:
            _append(sink, path, 0o755, b"5", 0, None, item.abs_path)
        else:
            try:
                fh = open(item.abs_path, "rb")
            except OSError as err:
                raise BundleError(f"cannot access {item.abs_path}: {err}") from err
            with fh:
                try:
                    size = os.fstat(fh.fileno()).st_size
                except OSError as err:
                    raise BundleError(f"cannot access {item.abs_path}: {err}") from err
                files += 1
                mode = 0o755 if item.executable else 0o644
                _append(sink, path, mode, b"0", size, fh, item.abs_path)
    # The end of the archive: two zero blocks.
    sink.write(bytes(2 * _BLOCK))
    data = sink.finish()
    return PackedBundle(data=data, digest=blake3.blake3(data).hexdigest(), files=files)


def _append(
    sink: _GzipSink,
    path: bytes,
    mode: int,
    entry_type: bytes,
    size: int,
    fh: Optional[BinaryIO],
    abs_path: str,
) -> None:
    """Writes one entry as ``tar::Builder::append_data`` does: a GNU long-name
    entry first when the path does not fit the 100-byte name field."""
    if len(path) <= 100:
        name = path
    else:
        # `././@LongLink` entry holding the full path and a NUL, then the
        # entry itself with the path cut to 100 bytes (at a UTF-8 boundary).
        try:
            name = _long_name_field(path)
        except ValueError as err:
            raise BundleError(f"cannot access {abs_path}: {err}") from err
        sink.write(_header(b"././@LongLink", 0o644, b"L", len(path) + 1))
        _write_padded(sink, path + b"\x00")
    sink.write(_header(name, mode, entry_type, size))
    if fh is None:
        return
    remaining = size
    while remaining:
        try:
            chunk = fh.read(min(remaining, _READ_CHUNK))
        except OSError as err:
            raise BundleError(f"cannot access {abs_path}: {err}") from err
        if not chunk:
            raise BundleError(
                f"cannot access {abs_path}: the file shrank while it was being packed"
            )
        sink.write(chunk)
        remaining -= len(chunk)
    pad = -size % _BLOCK
    if pad:
        sink.write(bytes(pad))


def _write_padded(sink: _GzipSink, data: bytes) -> None:
    sink.write(data)
    pad = -len(data) % _BLOCK
    if pad:
        sink.write(bytes(pad))


def _long_name_field(path: bytes) -> bytes:
    """The 100-byte name field of the header that follows a GNU long-name entry.

    The tar crate first tries to store the whole path, which writes component
    after component into the field until one does not fit, then stores the
    first 100 bytes of the path (cut back to a UTF-8 boundary, normalised as
    Rust's ``Path::components`` does: empty and ``.`` components dropped, a
    trailing ``/`` kept) over it. Bytes of the first try past the second one's
    end stay in the field, so it is rebuilt here the same way.
    """
    field = bytearray(100)
    pos = 0

    def copy(data: bytes) -> bool:
        # `copy_into`: the bytes and a NUL after them when there is room.
        nonlocal pos
        if len(data) > len(field) - pos:
            return False
        field[pos : pos + len(data)] = data
        if pos + len(data) < len(field):
            field[pos + len(data)] = 0
        pos += len(data)
        return True

    for i, part in enumerate(path.split(b"/")):
        if (i and not copy(b"/")) or not copy(part):
            break

    cut = path[:100]
    try:
        cut.decode("utf-8")
    except UnicodeDecodeError as err:
        cut = cut[: err.start]
    parts = [p for p in cut.split(b"/") if p and p != b"."]
    if not parts:
        raise ValueError("paths in archives must have at least one component")
    pos = 0
    for i, part in enumerate(parts):
        if i:
            copy(b"/")
        copy(part)
    if cut.endswith(b"/"):
        copy(b"/")
    return bytes(field)


def _octal(value: int, width: int) -> bytes:
    """``octal_into``: zero-padded octal digits ending in one NUL, the most
    significant digits dropped if they do not fit."""
    digits = format(value, "o").encode("ascii")
    digits = digits.rjust(width - 1, b"0")[-(width - 1):]
    return digits + b"\x00"


def _number(value: int, width: int) -> bytes:
    """``num_field_wrapper_into``: octal, or GNU base-256 for values that do
    not fit (8 GiB and over, or 2 Mi and over in an 8-byte field)."""
    if value >= 8589934592 or (value >= 2097152 and width == 8):
        field = bytearray(width - 8) + bytearray(value.to_bytes(8, "big"))
        field[0] |= 0x80
        return bytes(field)
    return _octal(value, width)


def _header(name: bytes, mode: int, entry_type: bytes, size: int) -> bytes:
    """A 512-byte GNU header as ``Header::new_gnu`` plus the setters write it."""
    h = bytearray(_BLOCK)
    h[0 : len(name)] = name  # name[100], NUL-padded (none when it is 100 bytes)
    h[100:108] = _octal(mode, 8)
    h[108:116] = _number(0, 8)  # uid
    h[116:124] = _number(0, 8)  # gid
    h[124:136] = _number(size, 12)
    h[136:148] = _number(0, 12)  # mtime
    h[156:157] = entry_type
    h[257:263] = b"ustar "  # GNU magic
    h[263:265] = b" \x00"  # GNU version
    # Checksum: the sum of all bytes with the checksum field read as spaces.
    cksum = sum(h) + 8 * ord(" ")
    h[148:156] = _octal(cksum, 8)
    return bytes(h)


# --------------------------------------------------------------------------
# Walking


@dataclass(frozen=True)
class _Item:
    parts: Tuple[bytes, ...]
    abs_path: str
    is_dir: bool
    executable: bool


def _collect_items(root: str) -> List[_Item]:
    """Every file and directory to pack, unsorted (``collect_items`` in Rust)."""
    items: List[_Item] = []
    stack: List[Tuple[str, Tuple[bytes, ...], Tuple["_IgnoreFile", ...]]] = []
    stack.append((root, (), _with_ignore_file((), root, ())))
    while stack:
        directory, parts, ignores = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as err:
            raise BundleError(f"cannot walk {root}: {err}") from err
        for entry in entries:
            if entry.name == ".git":
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as err:
                raise BundleError(f"cannot walk {root}: {err}") from err
            is_dir = stat.S_ISDIR(st.st_mode)
            is_file = stat.S_ISREG(st.st_mode)
            if not (is_dir or is_file):
                # Symbolic links, sockets, FIFOs and devices are not packed.
                continue
            child_parts = parts + (os.fsencode(entry.name),)
            if _ignored(ignores, child_parts, is_dir):
                continue
            abs_path = os.path.join(directory, entry.name)
            if is_dir:
                items.append(_Item(child_parts, abs_path, True, False))
                stack.append(
                    (abs_path, child_parts, _with_ignore_file(child_parts, abs_path, ignores))
                )
            else:
                items.append(_Item(child_parts, abs_path, False, bool(st.st_mode & 0o100)))
    return items


def _ignored(
    ignores: Sequence["_IgnoreFile"], parts: Tuple[bytes, ...], is_dir: bool
) -> bool:
    """Whether a path is excluded: the deepest ``.ferryignore`` with a matching
    pattern decides, and within it the last matching pattern."""
    for ignore in reversed(ignores):
        verdict = ignore.matched(parts, is_dir)
        if verdict is not None:
            return verdict
    return False


def _with_ignore_file(
    parts: Tuple[bytes, ...], directory: str, ignores: Tuple["_IgnoreFile", ...]
) -> Tuple["_IgnoreFile", ...]:
    path = os.path.join(directory, IGNORE_FILE_NAME)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError:
        # Missing (or unreadable: the CLI reports that as a non-fatal error of
        # the walk and goes on without it).
        return ignores
    ignore = _IgnoreFile.parse(parts, raw)
    if ignore is None:
        return ignores
    return ignores + (ignore,)


# --------------------------------------------------------------------------
# .ferryignore patterns, as the `ignore` crate (globset) reads gitignore files.


class _GlobError(ValueError):
    pass


class _Pattern:
    __slots__ = ("regex", "whitelist", "only_dir")

    def __init__(self, regex: "re.Pattern[str]", whitelist: bool, only_dir: bool) -> None:
        self.regex = regex
        self.whitelist = whitelist
        self.only_dir = only_dir


class _IgnoreFile:
    """The patterns of one ``.ferryignore``, matched against paths relative to
    the directory that holds it."""

    def __init__(self, parts: Tuple[bytes, ...], patterns: List[_Pattern]) -> None:
        self.prefix_len = len(parts)
        self.patterns = patterns

    @classmethod
    def parse(cls, parts: Tuple[bytes, ...], raw: bytes) -> Optional["_IgnoreFile"]:
        patterns: List[_Pattern] = []
        for lineno, raw_line in enumerate(raw.split(b"\n")):
            if raw_line.endswith(b"\r"):
                raw_line = raw_line[:-1]
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                continue  # the CLI skips a line that is not UTF-8
            if lineno == 0:
                line = line.lstrip("\ufeff")
            try:
                pattern = _parse_line(line)
            except _GlobError:
                continue  # the CLI skips (and reports) a malformed pattern
            if pattern is not None:
                patterns.append(pattern)
        if not patterns:
            return None
        return cls(parts, patterns)

    def matched(self, parts: Tuple[bytes, ...], is_dir: bool) -> Optional[bool]:
        """True (ignored), False (re-included by ``!``) or None (no pattern matches)."""
        rel = os.fsdecode(b"/".join(parts[self.prefix_len :]))
        for pattern in reversed(self.patterns):
            if pattern.only_dir and not is_dir:
                continue
            if pattern.regex.fullmatch(rel):
                return not pattern.whitelist
        return None


def _trim_trailing_unescaped_spaces(line: str) -> str:
    last_space: Optional[int] = None
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            if i + 1 >= n:
                return line
            i += 2
            last_space = None
        elif c == " ":
            if last_space is None:
                last_space = i
            i += 1
        else:
            last_space = None
            i += 1
    return line[: last_space if last_space is not None else n]


def _parse_line(line: str) -> Optional[_Pattern]:
    """``GitignoreBuilder::add_line`` of the ``ignore`` crate."""
    if line.startswith("#"):
        return None
    line = _trim_trailing_unescaped_spaces(line)
    if not line:
        return None
    whitelist = False
    only_dir = False
    absolute = False
    if line.startswith("\\!") or line.startswith("\\#"):
        line = line[1:]
        absolute = line.startswith("/")
    else:
        if line.startswith("!"):
            whitelist = True
            line = line[1:]
        if line.startswith("/"):
            line = line[1:]
            absolute = True
    if not line:
        return None
    if line.endswith("/"):
        only_dir = True
        line = line[:-1]
        if line.endswith("\\"):
            line = line[:-1]
    actual = line
    if not absolute and "/" not in line:
        if not (actual.startswith("**/") or actual == "**"):
            actual = "**/" + actual
    if actual.endswith("/**"):
        actual += "/*"
    regex = re.compile(_glob_to_regex(actual), re.DOTALL)
    return _Pattern(regex, whitelist, only_dir)


# Tokens of a glob (globset's `Token`).
_LIT, _ANY, _ZOM, _RPREFIX, _RSUFFIX, _RZOM, _CLASS, _ALT = range(8)


class _GlobParser:
    """globset's glob parser with ``literal_separator``, ``backslash_escape``
    and ``allow_unclosed_class`` on (how the ignore crate builds globs)."""

    def __init__(self, glob: str) -> None:
        self.chars = glob
        self.pos = 0
        self.prev: Optional[str] = None
        self.cur: Optional[str] = None
        self.alternates_stack: List[int] = []
        self.branches: List[list] = [[]]
        self.found_unclosed_class = False

    def bump(self) -> Optional[str]:
        self.prev = self.cur
        if self.pos < len(self.chars):
            self.cur = self.chars[self.pos]
            self.pos += 1
        else:
            self.cur = None
        return self.cur

    def peek(self) -> Optional[str]:
        return self.chars[self.pos] if self.pos < len(self.chars) else None

    def push(self, tok: tuple) -> None:
        if not self.branches:
            raise _GlobError("unopened alternates")
        self.branches[-1].append(tok)

    def parse(self) -> list:
        while True:
            c = self.bump()
            if c is None:
                break
            if c == "?":
                self.push((_ANY,))
            elif c == "*":
                self.parse_star()
            elif c == "[" and not self.found_unclosed_class:
                self.parse_class()
            elif c == "{":
                if len(self.alternates_stack) >= 100:
                    raise _GlobError("too many nested alternates")
                self.alternates_stack.append(len(self.branches))
                self.branches.append([])
            elif c == "}":
                if not self.alternates_stack:
                    raise _GlobError("unopened alternates")
                start = self.alternates_stack.pop()
                alts = self.branches[start:]
                del self.branches[start:]
                self.push((_ALT, alts))
            elif c == ",":
                if not self.alternates_stack:
                    self.push((_LIT, ","))
                else:
                    self.branches.append([])
            elif c == "\\":
                nxt = self.bump()
                if nxt is None:
                    raise _GlobError("dangling escape")
                self.push((_LIT, nxt))
            else:
                self.push((_LIT, c))
        if len(self.branches) != 1:
            raise _GlobError("unclosed alternates")
        return self.branches[0]

    def parse_star(self) -> None:
        prev = self.prev
        if self.peek() != "*":
            self.push((_ZOM,))
            return
        self.bump()
        if not self.branches[-1]:
            if self.peek() is not None and self.peek() != "/":
                self.push((_ZOM,))
                self.push((_ZOM,))
            else:
                self.push((_RPREFIX,))
                self.bump()
            return
        if prev != "/":
            if len(self.branches) <= 1 or (prev != "," and prev != "{"):
                self.push((_ZOM,))
                self.push((_ZOM,))
                return
        nxt = self.peek()
        if nxt is None:
            self.bump()
            is_suffix = True
        elif nxt in (",", "}") and len(self.branches) >= 2:
            is_suffix = True
        elif nxt == "/":
            self.bump()
            is_suffix = False
        else:
            self.push((_ZOM,))
            self.push((_ZOM,))
            return
        last = self.branches[-1].pop()
        if last[0] == _RPREFIX:
            self.push((_RPREFIX,))
        elif last[0] == _RSUFFIX:
            self.push((_RSUFFIX,))
        elif is_suffix:
            self.push((_RSUFFIX,))
        else:
            self.push((_RZOM,))

    def parse_class(self) -> None:
        saved = (self.pos, self.prev, self.cur)
        ranges: List[Tuple[str, str]] = []
        negated = False
        if self.peek() in ("!", "^"):
            self.bump()
            negated = True
        first = True
        in_range = False
        while True:
            c = self.bump()
            if c is None:
                # Unclosed: the `[` is a literal.
                self.pos, self.prev, self.cur = saved
                self.found_unclosed_class = True
                self.push((_LIT, "["))
                return
            if c == "]":
                if first:
                    ranges.append(("]", "]"))
                else:
                    break
            elif c == "-":
                if first:
                    ranges.append(("-", "-"))
                elif in_range:
                    self._extend(ranges, "-")
                    in_range = False
                else:
                    in_range = True
            elif c == "[" and not in_range and self.peek() == ":":
                posix = self._posix_class()
                if posix is not None:
                    ranges.extend(posix)
                else:
                    ranges.append(("[", "["))
                in_range = False
            else:
                if in_range:
                    self._extend(ranges, c)
                else:
                    ranges.append((c, c))
                in_range = False
            first = False
        if in_range:
            ranges.append(("-", "-"))
        self.push((_CLASS, negated, ranges))

    @staticmethod
    def _extend(ranges: List[Tuple[str, str]], end: str) -> None:
        start = ranges[-1][0]
        if end < start:
            raise _GlobError(f"invalid range {start}-{end}")
        ranges[-1] = (start, end)

    _POSIX = {
        "alnum": [("0", "9"), ("A", "Z"), ("a", "z")],
        "alpha": [("A", "Z"), ("a", "z")],
        "blank": [(" ", " "), ("\t", "\t")],
        "cntrl": [("\x00", "\x1f"), ("\x7f", "\x7f")],
        "digit": [("0", "9")],
        "graph": [("!", "~")],
        "lower": [("a", "z")],
        "print": [(" ", "~")],
        "punct": [("!", "/"), (":", "@"), ("[", "`"), ("{", "~")],
        "space": [(" ", " "), ("\t", "\r")],
        "upper": [("A", "Z")],
        "xdigit": [("0", "9"), ("A", "F"), ("a", "f")],
    }

    def _posix_class(self) -> Optional[List[Tuple[str, str]]]:
        # At `[:name:]` inside a bracket expression (the `[` is consumed).
        end = self.chars.find(":]", self.pos + 1)
        if end < 0:
            return None
        name = self.chars[self.pos + 1 : end]
        ranges = self._POSIX.get(name)
        if ranges is None:
            return None
        # Consume `:name:]`.
        while self.pos < end + 2:
            self.bump()
        return list(ranges)


def _tokens_to_regex(tokens: list) -> str:
    out: List[str] = []
    for tok in tokens:
        kind = tok[0]
        if kind == _LIT:
            out.append(re.escape(tok[1]))
        elif kind == _ANY:
            out.append("[^/]")
        elif kind == _ZOM:
            out.append("[^/]*")
        elif kind == _RPREFIX:
            out.append("(?:/?|.*/)")
        elif kind == _RSUFFIX:
            out.append("/.*")
        elif kind == _RZOM:
            out.append("(?:/|/.*/)")
        elif kind == _CLASS:
            negated, ranges = tok[1], tok[2]
            if not negated:
                filtered: List[Tuple[str, str]] = []
                for start, end in ranges:
                    if start > "/" or end < "/":
                        filtered.append((start, end))
                    elif start == "/" and end == "/":
                        pass
                    elif start == "/":
                        filtered.append(("0", end))
                    elif end == "/":
                        filtered.append((start, "."))
                    else:
                        filtered.append((start, "."))
                        filtered.append(("0", end))
                ranges = filtered
            if not ranges:
                out.append("[^\\s\\S]")
            else:
                body = "".join(
                    _class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}"
                    for a, b in ranges
                )
                out.append(f"[^/{body}]" if negated else f"[{body}]")
        elif kind == _ALT:
            parts = [p for p in (_tokens_to_regex(alt) for alt in tok[1]) if p]
            if parts:
                out.append("(?:" + "|".join(parts) + ")")
    return "".join(out)


def _class_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c


def _glob_to_regex(glob: str) -> str:
    tokens = _GlobParser(glob).parse()
    if len(tokens) == 1 and tokens[0][0] == _RPREFIX:
        return ".*"
    return _tokens_to_regex(tokens)
