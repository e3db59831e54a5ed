"""ferry.bundle packs folders byte for byte as the ``ferry`` CLI does.

The comparison tests run ``ferry --output json bundle FOLDER --list`` (the
binary is ``$FERRY_BIN``, else ``<repo>/target/debug/ferry``) and are skipped
when that binary is missing; the rest need no binary.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[3]
try:
    import ferry  # noqa: F401
except ImportError:  # pragma: no cover - conftest.py normally sets the path
    sys.path.insert(0, str(REPO / "sdk" / "python"))

from ferry.bundle import (  # noqa: E402
    MAX_BUNDLE_BYTES,
    BundleError,
    BundleTooLargeError,
    PackedBundle,
    _pack_dir_with_limit,
    pack_dir,
)

# The digest of the tree `golden_tree` writes. Taken from the CLI
# (`ferry --output json bundle DIR`); if either side changes the bundle format
# this test fails, and the two must be changed together.
GOLDEN_DIGEST = "f322a8553c1d1ddc34cbcca3eeb730fd4c89c8b912d22d7576849429640d3c1c"
GOLDEN_FILES = 4


def _ferry_bin() -> Path:
    return Path(os.environ.get("FERRY_BIN", REPO / "target" / "debug" / "ferry"))


def _cli_bundle(folder: Path) -> Dict[str, Any]:
    """What ``ferry bundle FOLDER --list`` reports, or skip without a binary."""
    binary = _ferry_bin()
    if not binary.exists():
        pytest.skip(
            f"the ferry binary {binary} does not exist: build it with "
            "`cargo build -p ferry-client` or set FERRY_BIN"
        )
    env = dict(os.environ)
    env["HOME"] = str(folder.parent / "home")
    proc = subprocess.run(
        [str(binary), "--output", "json", "bundle", str(folder), "--list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _entries(bundle: PackedBundle) -> List[str]:
    """The entry names of a bundle as ``ferry bundle --list`` prints them."""
    names = []
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        for member in tar:
            names.append(member.name + "/" if member.isdir() else member.name)
    return names


def _write(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def golden_tree(root: Path) -> None:
    """A tiny fixed tree whose digest is pinned as GOLDEN_DIGEST."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root, "pipeline.yaml", b"steps: []\n")
    _write(root, "src/train.py", b"print('train')\n")
    _write(root, "run.sh", b"#!/bin/sh\necho hi\n", 0o750)
    _write(root, ".ferryignore", b"*.tmp\n")
    _write(root, "scratch.tmp", b"junk\n")
    (root / "empty").mkdir()


# Paths over 100 bytes, cut in the header after the `././@LongLink` entry at
# awkward places: inside a component, at a `/`, inside a multi-byte
# character, after a leading `.` or `..` of a component.
LONG_PATHS = [
    "long/" + "x" * 120 + ".txt",
    "long/" + "a" * 94 + "/tail.txt",  # byte 100 is the `/`
    "long/" + "b" * 94 + "é" + "c" * 10,  # `é` straddles byte 100
    "long/" + "d" * 94 + "/.hidden-file",  # the cut leaves "…/."
    "long/" + "e" * 94 + "/..odd-name",  # the cut leaves "…/.."
    "long/" + "f" * 93 + "/.x",  # exactly 100 bytes: no long-name entry
    "long/" + "g" * 200 + "/" + "h" * 200 + "/deep.txt",
]


def sample_tree(root: Path) -> None:
    """A tree that exercises every rule of the walk and of the format."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root, "pipeline.yaml", b"steps: []\n")
    _write(root, "src/train.py", b"print('train')\n")
    _write(root, "src/lib/util.py", b"x = 1\n")
    _write(root, "run.sh", b"#!/bin/sh\necho hi\n", 0o750)
    _write(root, "tool", b"#!/bin/sh\n", 0o700)
    _write(root, "group-exec-only", b"#!/bin/sh\n", 0o654)
    _write(root, ".hidden", b"kept\n")
    (root / "empty" / "dir").mkdir(parents=True)
    _write(root, "data.bin", os.urandom(200_000))
    _write(root, "zeros.bin", bytes(3 * 1024 * 1024))
    for rel in LONG_PATHS:
        _write(root, rel, rel.encode())
    # Component-wise order differs from string order: a/b < a-z < a.txt.
    _write(root, "a/b", b"1")
    _write(root, "a.txt", b"2")
    _write(root, "a-z", b"3")
    _write(root, "a/c/d.txt", b"4")
    _write(root, "A", b"5")
    # Skipped: .git directories (at any depth) and a file named .git.
    _write(root, ".git/HEAD", b"ref: refs/heads/main\n")
    _write(root, ".git/objects/ab/cdef", b"blob")
    _write(root, "vendor/lib/.git/config", b"[core]\n")
    _write(root, "vendor/sub/.git", b"gitdir: ../../.git/modules/sub\n")
    _write(root, "vendor/lib/code.py", b"pass\n")
    # Skipped: symbolic links (to a file, to a directory, dangling) and a FIFO.
    os.symlink("/etc/passwd", root / "link")
    os.symlink("src", root / "dirlink")
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    # Not honoured: .gitignore.
    _write(root, ".gitignore", b"src/\n*.py\n.hidden\n")
    # Honoured: .ferryignore at the root ...
    _write(
        root,
        ".ferryignore",
        b"# comment\n"
        b"*.tmp\n"
        b"!keep.tmp\n"
        b"build/\n"
        b"logs/**\n"
        b"*.{bak,orig}\n"
        b"/only-at-root.txt\n"
        b"trailing-space.txt   \n",
    )
    _write(root, "scratch.tmp", b"junk")
    _write(root, "keep.tmp", b"kept")
    _write(root, "src/deep.tmp", b"junk")
    _write(root, "build/out.o", b"junk")  # dir-only pattern: gone
    _write(root, "src/build", b"a file named build is kept")
    _write(root, "logs/today/x.log", b"junk")  # logs/ kept, empty
    _write(root, "file.bak", b"junk")
    _write(root, "file.orig", b"junk")
    _write(root, "only-at-root.txt", b"junk")
    _write(root, "src/only-at-root.txt", b"kept")
    _write(root, "trailing-space.txt", b"junk")
    # ... and in a subdirectory, applying to its subtree only.
    _write(
        root,
        "sub/.ferryignore",
        b"*.log\n"
        b"!important.log\n"
        b"!important/\n"
        b"cache/\n"
        b"/anchored.txt\n"
        b"!keep2.tmp\n",
    )
    _write(root, "sub/a.log", b"junk")
    _write(root, "sub/important.log", b"kept")
    _write(root, "sub/important/debug.log", b"junk: `!important/` matches the dir only")
    _write(root, "sub/cache/blob", b"junk")
    _write(root, "sub/deeper/cache", b"a file named cache is kept")
    _write(root, "sub/anchored.txt", b"junk")
    _write(root, "sub/deeper/anchored.txt", b"kept")
    _write(root, "sub/keep2.tmp", b"kept: the deeper file decides")
    _write(root, "sub/other.tmp", b"junk")
    _write(root, "top.log", b"kept: sub/.ferryignore does not reach here")


def test_sample_tree_matches_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    sample_tree(root)
    packed = pack_dir(root)
    cli = _cli_bundle(root)

    entries = _entries(packed)
    assert entries == cli["entries"]
    assert packed.files == cli["files"]
    assert len(packed.data) == cli["bytes"]
    assert packed.digest == cli["digest"]

    # The rules themselves, independent of the CLI.
    names = set(entries)
    for kept in [
        "pipeline.yaml",
        "src/train.py",
        "src/lib/util.py",
        ".hidden",
        ".gitignore",
        ".ferryignore",
        "sub/.ferryignore",
        "empty/",
        "empty/dir/",
        "keep.tmp",
        "src/build",
        "logs/",
        "src/only-at-root.txt",
        "sub/important.log",
        "sub/important/",
        "sub/deeper/cache",
        "sub/deeper/anchored.txt",
        "sub/keep2.tmp",
        "top.log",
        "vendor/lib/code.py",
        "vendor/sub/",
        *LONG_PATHS,
    ]:
        assert kept in names, kept
    for gone in [
        "scratch.tmp",
        "src/deep.tmp",
        "build/",
        "logs/today/",
        "file.bak",
        "file.orig",
        "only-at-root.txt",
        "trailing-space.txt",
        "sub/a.log",
        "sub/important/debug.log",
        "sub/cache/",
        "sub/anchored.txt",
        "sub/other.tmp",
        "link",
        "dirlink",
        "dangling",
        "fifo",
        "vendor/sub/.git",
    ]:
        assert gone not in names, gone
    assert not any(n == ".git/" or "/.git" in n or n.startswith(".git/") for n in names)
    # Component-wise order.
    assert entries.index("a/c/d.txt") < entries.index("a-z") < entries.index("a.txt")

    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        modes = {m.name: m.mode for m in tar}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar)
    assert modes["run.sh"] == 0o755
    assert modes["tool"] == 0o755
    assert modes["group-exec-only"] == 0o644
    assert modes["pipeline.yaml"] == 0o644
    assert modes["empty/dir"] == 0o755


def test_an_empty_folder_matches_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    packed = pack_dir(root)
    assert packed.files == 0
    assert packed.digest == _cli_bundle(root)["digest"]


def test_a_tree_with_only_a_ferryignore_matches_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "ignored"
    root.mkdir()
    _write(root, ".ferryignore", b"*\n")
    _write(root, "a/b.txt", b"x")
    packed = pack_dir(root)
    assert _entries(packed) == []
    assert packed.digest == _cli_bundle(root)["digest"]


def test_names_that_are_not_utf8_match_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "bytes"
    root.mkdir()
    base = os.fsencode(str(root))
    try:
        with open(base + b"/bad\xffname", "wb") as fh:
            fh.write(b"x")
        # Over 100 bytes, not UTF-8 before byte 100: the tar crate's header
        # name keeps bytes of its first, failed, try past the cut name.
        deep = base + b"/" + b"q" * 97 + b"\xff\xfe/zz"
        os.makedirs(deep)
        with open(deep + b"/f", "wb") as fh:
            fh.write(b"y")
    except OSError as err:  # pragma: no cover - a filesystem that refuses
        pytest.skip(f"this filesystem refuses names that are not UTF-8: {err}")
    packed = pack_dir(root)
    cli = _cli_bundle(root)
    assert packed.files == cli["files"] == 2
    assert packed.digest == cli["digest"]


def test_packing_is_deterministic(tmp_path: Path) -> None:
    one = tmp_path / "one"
    sample_tree(one)
    first = pack_dir(one)
    assert pack_dir(one) == first
    assert first.digest == __import__("blake3").blake3(first.data).hexdigest()

    # The same contents elsewhere, created in another order and with other
    # timestamps, pack to the same bytes.
    two = tmp_path / "two"
    shutil.copytree(one, two, symlinks=True, ignore=shutil.ignore_patterns("fifo"))
    os.mkfifo(two / "fifo")
    for path in sorted(two.rglob("*"), reverse=True):
        if not path.is_symlink():
            os.utime(path, (1_000_000, 1_000_000))
    assert pack_dir(two) == first

    # A changed byte changes the digest.
    _write(two, "src/train.py", b"print('train!')\n")
    assert pack_dir(two).digest != first.digest


def test_golden_digest(tmp_path: Path) -> None:
    root = tmp_path / "golden"
    golden_tree(root)
    packed = pack_dir(root)
    assert _entries(packed) == [
        ".ferryignore",
        "empty/",
        "pipeline.yaml",
        "run.sh",
        "src/",
        "src/train.py",
    ]
    assert packed.files == GOLDEN_FILES
    assert packed.digest == GOLDEN_DIGEST


def test_golden_digest_is_the_clis(tmp_path: Path) -> None:
    root = tmp_path / "golden"
    golden_tree(root)
    cli = _cli_bundle(root)
    assert cli["digest"] == GOLDEN_DIGEST
    assert cli["files"] == GOLDEN_FILES


def test_packing_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BundleError, match="it is not a directory") as info:
        pack_dir(missing)
    assert str(missing) in str(info.value)

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(BundleError, match="it is not a directory"):
        pack_dir(str(a_file))


def test_oversized_bundles_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "big", "big.bin", os.urandom(200_000))
    with pytest.raises(BundleTooLargeError) as info:
        _pack_dir_with_limit(tmp_path / "big", 64 * 1024)
    assert info.value.limit == 64 * 1024
    assert ".ferryignore" in str(info.value)
    assert isinstance(info.value, BundleError)
    assert len(pack_dir(tmp_path / "big").data) < MAX_BUNDLE_BYTES


def test_the_archive_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    sample_tree(root)
    packed = pack_dir(root)
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        for member in tar:
            assert member.isdir() or member.isfile(), member.name
        if sys.version_info >= (3, 12):
            tar.extractall(out, filter="tar")
        else:
            tar.extractall(out)
    for rel in ["data.bin", "zeros.bin", "run.sh", *LONG_PATHS]:
        assert (out / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert (out / "run.sh").stat().st_mode & stat.S_IXUSR
    # Unpacked and packed again: the same bundle.
    assert pack_dir(out) == packed


def test_numeric_header_fields_are_formatted_as_the_tar_crate_does() -> None:
    from ferry.bundle import _header, _number, _octal

    assert _octal(0o755, 8) == b"0000755\x00"
    assert _number(0, 12) == b"00000000000\x00"
    assert _number(8589934591, 12) == b"77777777777\x00"
    # 8 GiB and over: GNU base-256, the high bit of the first byte set.
    assert _number(8589934592, 12) == b"\x80\x00\x00\x00" + (8589934592).to_bytes(8, "big")
    assert _number(2097152, 8) == b"\x80" + (2097152).to_bytes(8, "big")[1:]
    header = _header(b"a.txt", 0o644, b"0", 3)
    assert len(header) == 512
    assert header[257:265] == b"ustar  \x00"
    # The checksum is 7 octal digits and a NUL, over the header with the
    # checksum field read as spaces.
    assert header[148:156] == _octal(sum(header[:148]) + sum(header[156:]) + 8 * 32, 8)
