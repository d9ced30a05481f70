"""Model-based test: the same random operations applied to a real lamfs mount and to a plain local
directory, results and errno compared after every step.

A Hypothesis RuleBasedStateMachine drives both. Each example works in a fresh subdirectory of one
mount (mounted once per test run, kernel caches off: `--entry-ttl 0 --attr-ttl 0`) and in a fresh
plain directory. After every step the two trees must hold the same names, types and bytes, and every
file in the mount must have a catalog row whose size and hash are those of its bytes and whose storage
object exists with that size.

Operations: create (O_CREAT|O_TRUNC + write), write at an offset, append, truncate, read,
read-after-write through one descriptor, two descriptors writing one file, a reader held open across an
overwrite, stat, listdir, mkdir, rmdir, unlink, rename (files and directories, onto existing targets);
and out-of-band changes through the Python API in this process: `Artifact(path, key=...).save()`,
`artifact.replace(...)` + `save()`, `artifact.delete()`.

The model encodes lamfs's documented differences from a plain directory (docs/SEMANTICS.md) and
nothing else:
- names with control characters are refused with EINVAL (the plain directory accepts them);
- directories created by the API for a key (`Artifact(..., key="d/x")` with no `d`) are *implicit*:
  they vanish with their last entry; directories made by mkdir (or renamed) stay until rmdir;
- a reader keeps reading the version it opened, even across an overwrite (close-to-open);
- inode numbers, mtimes, nlink and directory sizes are not compared.
API changes are visible at once because the mount runs with kernel TTLs of 0.

The number of examples and steps comes from a Hypothesis settings profile: `lamfs-ci` (bounded, the
default) or `lamfs-long` (scripts/model_test_long.sh sets LAMFS_MODEL_PROFILE=lamfs-long and
LAMFS_MODEL_EXAMPLES / LAMFS_MODEL_STEPS).
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import lamfs
from lamfs.errors import LamfsError

from .conftest_mount import module_mount
from lamfs.hashing import hash_bytes
from lamfs.keys import extract_suffix

pytestmark = pytest.mark.mount

settings.register_profile(
    "lamfs-ci", max_examples=25, stateful_step_count=30, deadline=None, database=None, print_blob=True,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "lamfs-long", max_examples=int(os.environ.get("LAMFS_MODEL_EXAMPLES", "400")),
    stateful_step_count=int(os.environ.get("LAMFS_MODEL_STEPS", "60")), deadline=None, print_blob=True,
    suppress_health_check=list(HealthCheck),
)

# A small alphabet, so that names collide: mixed case, the two unicode normal forms of "é" (two distinct
# files, as on ext4), '%', '_', '\', a space; and one name lamfs refuses (a newline: EINVAL).
NAMES = ["a", "b.txt", "B.txt", "\u00e9.csv", "e\u0301.csv", "5%_\\ x"]
BAD_NAME = "n\nl.txt"
CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}

class Blob(bytes):
    """bytes with a short repr, so that failing examples print readably."""

    def __repr__(self) -> str:
        if len(self) <= 40:
            return bytes.__repr__(self)
        if self == self[:1] * len(self):
            return f"{bytes(self[:1])!r}*{len(self)}"
        return f"<{len(self)} bytes {bytes(self[:16])!r}...>"


names = st.sampled_from(NAMES)
paths = st.one_of(names, st.tuples(names, names).map("/".join))
new_paths = st.one_of(paths, st.just(BAD_NAME), names.map(lambda n: f"{n}/{BAD_NAME}"))
contents = st.one_of(
    st.sampled_from([b"", b"x", b"hello\n", b"hello world\n"]),
    st.binary(max_size=300),
    st.sampled_from([b"\0" * 5000, bytes(range(256)) * 600]),  # crosses 128 KiB FUSE write chunks
).map(Blob)
chunks = st.one_of(st.binary(min_size=1, max_size=64), st.just(b"Z" * 70_000)).map(Blob)
offsets = st.integers(min_value=0, max_value=400)

STATS = {"examples": 0, "steps": 0, "ops": {}, "api_ops": 0}


def has_control(path: str) -> bool:
    return any(ch in CONTROL for ch in path)


def outcome(fn):
    """('ok', value) or ('err', 'ENOENT') — what a step returned, comparable across the two trees."""
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, str(exc.errno)))


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        if offset is None:
            done += os.write(fd, view[done:])
        else:
            done += os.pwrite(fd, view[done:], offset + done)


def read_all(fd: int, offset: int = 0) -> bytes:
    parts = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def closing(fd: int, fn):
    try:
        result = fn(fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # close(2) commits in lamfs: its error is the step's error
    return result


# -- the operations, run identically on both trees --------------------------------------------------

def op_create(root: Path, path: str, data: bytes):
    fd = os.open(root / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    return closing(fd, lambda fd: write_all(fd, data))


def op_write_at(root: Path, path: str, offset: int, data: bytes):
    fd = os.open(root / path, os.O_WRONLY)
    return closing(fd, lambda fd: write_all(fd, data, offset))


def op_append(root: Path, path: str, data: bytes):
    fd = os.open(root / path, os.O_WRONLY | os.O_APPEND)
    return closing(fd, lambda fd: write_all(fd, data))


def op_rw(root: Path, path: str, offset: int, data: bytes):
    """Write, then read the whole file back through the same descriptor before closing."""
    fd = os.open(root / path, os.O_RDWR)

    def body(fd):
        write_all(fd, data, offset)
        return read_all(fd)

    return closing(fd, body)


def op_two_writers(root: Path, path: str, off1: int, data1: bytes, off2: int, data2: bytes):
    fd1 = os.open(root / path, os.O_WRONLY)
    try:
        fd2 = os.open(root / path, os.O_WRONLY)
    except BaseException:
        os.close(fd1)
        raise
    try:
        write_all(fd1, data1, off1)
        write_all(fd2, data2, off2)
    except BaseException:
        os.close(fd1)
        os.close(fd2)
        raise
    try:
        os.close(fd1)
    finally:
        os.close(fd2)


def op_read(root: Path, path: str):
    fd = os.open(root / path, os.O_RDONLY)
    return closing(fd, read_all)


def op_stat(root: Path, path: str):
    st_ = os.stat(root / path)
    if stat.S_ISDIR(st_.st_mode):
        return ("dir",)
    return ("file", st_.st_size)


def op_listdir(root: Path, path: str):
    return sorted(os.listdir(root / path))


def snapshot(root: Path) -> dict:
    """{relative path: 'dir' | bytes} of a whole tree."""
    out = {}

    def walk(d: Path, rel: str):
        for entry in os.scandir(d):
            r = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                out[r] = "dir"
                walk(Path(entry.path), r)
            else:
                with open(entry.path, "rb") as f:
                    out[r] = f.read()

    walk(root, "")
    return out


# -- the machine -------------------------------------------------------------------------------------

class MountModel(RuleBasedStateMachine):
    """Mount (system under test) vs a plain directory (the model) + the documented differences."""

    mount_root: Path = None  # set by the test
    ref_parent: Path = None
    s3 = False  # the storage root is on the S3 test server
    counter = itertools.count()

    def __init__(self):
        super().__init__()
        n = next(self.counter)
        self.prefix = f"ex{n:05d}"  # the example's subdirectory in the mount: a fresh namespace
        self.mnt = self.mount_root / self.prefix
        self.ref = self.ref_parent / self.prefix
        os.mkdir(self.mnt)
        self.ref.mkdir()
        self.implicit: set[str] = set()  # directories the API made for a key: they vanish when empty
        self.nonce = itertools.count()
        STATS["examples"] += 1

    def teardown(self):
        shutil.rmtree(self.ref, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------

    def step(self, name: str, fn, *args):
        """Run fn on both trees and require the same outcome."""
        STATS["steps"] += 1
        STATS["ops"][name] = STATS["ops"].get(name, 0) + 1
        expected = outcome(lambda: fn(self.ref, *args))
        got = outcome(lambda: fn(self.mnt, *args))
        assert got == expected, f"{name}{args!r}: mount {got!r} != plain directory {expected!r}"
        self.prune()
        return got

    def ref_kind(self, path: str) -> str | None:
        p = self.ref / path
        if p.is_symlink() or not os.path.lexists(p):
            return None
        return "dir" if p.is_dir() else "file"

    def parent_is_dir(self, path: str) -> bool:
        parent = path.rpartition("/")[0]
        return parent == "" or self.ref_kind(parent) == "dir"

    def refused_name(self, name: str, path: str, fn, *args, valid_target: bool) -> bool:
        """A name with control characters: lamfs answers EINVAL where the plain directory would have
        made the entry. Returns True if handled."""
        if not has_control(path.rpartition("/")[2]):
            return False
        if valid_target:
            STATS["steps"] += 1
            STATS["ops"][name + "(refused name)"] = STATS["ops"].get(name + "(refused name)", 0) + 1
            got = outcome(lambda: fn(self.mnt, *args))
            assert got == ("err", "EINVAL"), f"{name}{args!r}: mount {got!r}, expected EINVAL for a control character"
            return True
        return False  # the path does not resolve: both fail the same way (ENOENT/ENOTDIR), compare normally

    def prune(self):
        """Implicit directories vanish with their last entry (docs/SEMANTICS.md)."""
        changed = True
        while changed:
            changed = False
            for d in sorted(self.implicit, key=lambda p: -p.count("/")):
                p = self.ref / d
                if not p.is_dir():
                    self.implicit.discard(d)
                    changed = True
                elif not any(p.iterdir()):
                    p.rmdir()
                    self.implicit.discard(d)
                    changed = True

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}"

    def source_file(self, path: str, data: bytes) -> Path:
        """A local file outside any storage root, named with the key's suffix (the API checks it)."""
        folder = Path(tempfile.mkdtemp(prefix="lamfs-model-src-"))
        src = folder / f"src{extract_suffix(path.rpartition('/')[2])}"
        src.write_bytes(data)
        return src

    def api(self, name: str, ref_fn, api_fn):
        """An out-of-band change through the Python API: ref_fn on the plain directory (returns None or
        an errno name), api_fn through lamfs (its LamfsError's errno is compared)."""
        STATS["steps"] += 1
        STATS["api_ops"] += 1
        STATS["ops"][name] = STATS["ops"].get(name, 0) + 1
        expected = ref_fn()
        try:
            api_fn()
            got = None
        except LamfsError as exc:
            got = errno.errorcode.get(exc.errno, str(exc.errno))
        assert got == expected, f"{name}: API {got!r} != model {expected!r}"
        self.prune()

    def existing(self, kind: str) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.ref):
            rel = os.path.relpath(dirpath, self.ref)
            rel = "" if rel == "." else rel + "/"
            if kind in ("dir", "any"):
                out += [rel + d for d in dirnames]
            if kind in ("file", "any"):
                out += [rel + f for f in filenames]
        return sorted(out)

    def pick(self, data, kind: str = "file", new: bool = False) -> str:
        """Mostly an existing entry (so that operations do something), sometimes any path from the
        alphabet (collisions, missing entries, files where directories are expected)."""
        pool = self.existing(kind)
        choices = [new_paths if new else paths]
        if pool:
            choices.insert(0, st.sampled_from(pool))
        if new and kind == "dir" and pool:  # a new name inside an existing directory
            choices.insert(1, st.tuples(st.sampled_from(pool), names).map("/".join))
        return data.draw(st.one_of(*choices), label=f"{kind} path")

    # -- the operations with explicit arguments (rules draw them; regression tests replay them) ----

    def do_create(self, path, content):
        if not self.refused_name("create", path, op_create, path, content, valid_target=self.parent_is_dir(path)
                                 and self.ref_kind(path) is None):
            self.step("create", op_create, path, content)

    def do_write_at(self, path, offset, chunk):
        self.step("write_at", op_write_at, path, offset, chunk)

    def do_append(self, path, chunk):
        self.step("append", op_append, path, chunk)

    def do_truncate(self, path, size):
        self.step("truncate", lambda root, p, s: os.truncate(root / p, s), path, size)

    def do_read_after_write(self, path, offset, chunk):
        self.step("read_after_write", op_rw, path, offset, chunk)

    def do_two_writers(self, path, off1, data1, off2, data2):
        self.step("two_writers", op_two_writers, path, off1, data1, off2, data2)

    def do_read(self, path):
        self.step("read", op_read, path)

    def do_stat(self, path):
        self.step("stat", op_stat, path)

    def do_listdir(self, path):
        self.step("listdir", op_listdir, path)

    def do_mkdir(self, path):
        if not self.refused_name("mkdir", path, lambda root, p: os.mkdir(root / p), path,
                                 valid_target=self.parent_is_dir(path) and self.ref_kind(path) is None):
            self.step("mkdir", lambda root, p: os.mkdir(root / p), path)

    def do_rmdir(self, path):
        if self.step("rmdir", lambda root, p: os.rmdir(root / p), path)[0] == "ok":
            self.implicit.discard(path)

    def do_unlink(self, path):
        self.step("unlink", lambda root, p: os.unlink(root / p), path)

    def do_rename(self, src, dst):
        valid = (self.ref_kind(src) is not None and self.parent_is_dir(dst) and self.ref_kind(dst) is None
                 and not (dst + "/").startswith(src + "/"))
        rename = lambda root, a, b: os.rename(root / a, root / b)  # noqa: E731
        if self.refused_name("rename", dst, rename, src, dst, valid_target=valid):
            return
        was_dir = self.ref_kind(src) == "dir"
        if self.step("rename", rename, src, dst)[0] == "ok" and was_dir and src != dst:
            # the moved directory becomes explicit; implicit ones below it move along
            moved = set()
            for d in self.implicit:
                if d == src or d == dst:
                    continue
                moved.add(dst + d[len(src):] if d.startswith(src + "/") else d)
            self.implicit = moved

    def do_reader_across_change(self, path, change, content, head_len):
        """A reader opened before a change: an in-place write through the mount (overwrite, truncate,
        append) is seen by open readers of that file, as on a local disk; a rename over the file, an
        unlink, or a change through the API (the plain-directory equivalent: write a temp file and
        rename it into place) leave the reader on the version it opened."""
        if self.ref_kind(path) != "file":
            return
        STATS["steps"] += 1
        STATS["ops"]["reader_across_" + change] = STATS["ops"].get("reader_across_" + change, 0) + 1
        tmp = path.rpartition("/")[0] + ("/" if "/" in path else "") + "tmp~"
        seen = {}
        for root in (self.ref, self.mnt):
            fd = os.open(root / path, os.O_RDONLY)
            try:
                head = os.pread(fd, head_len, 0)
                if change == "overwrite":
                    op_create(root, path, content)
                elif change == "truncate":
                    os.truncate(root / path, len(content) % 100)
                elif change == "append":
                    op_append(root, path, content or b"+")
                elif change == "unlink" or (change == "api_delete" and root == self.ref):
                    os.unlink(root / path)
                elif change == "rename_over" or (change == "api_replace" and root == self.ref):
                    op_create(root, tmp, content)
                    os.rename(root / tmp, root / path)
                elif change == "api_replace":
                    artifact = lamfs.Artifact.get(key=self.key(path))
                    src = self.source_file(path, content)
                    try:
                        artifact.replace(src)
                        artifact.save()
                    finally:
                        shutil.rmtree(src.parent, ignore_errors=True)
                else:
                    lamfs.Artifact.get(key=self.key(path)).delete()
                try:
                    seen[root] = (head, read_all(fd, len(head)))
                except OSError as exc:
                    # S3 keeps no old bytes: a replace that overwrote the object in storage leaves a reader
                    # of the old version ESTALE for what it had not cached (docs/SEMANTICS.md)
                    assert self.s3 and exc.errno == errno.ESTALE and change in ("api_replace", "rename_over"), exc
                    STATS["ops"]["reader_estale_on_s3"] = STATS["ops"].get("reader_estale_on_s3", 0) + 1
                    seen[root] = seen[self.ref]
            finally:
                os.close(fd)
        assert seen[self.mnt] == seen[self.ref], (
            f"reader of {path!r} across {change}: mount saw {seen[self.mnt]!r:.300}, plain directory "
            f"{seen[self.ref]!r:.300}")
        self.prune()

    def do_api_save(self, path):
        """`Artifact(file, key=...).save()`: a new artifact, or a new version of the key's artifact.
        Bytes are unique per call (LaminDB returns an existing artifact for bytes it has seen under the
        same key; the model does not track old versions)."""
        content = f"api {self.prefix} {next(self.nonce)}\n".encode() * 3

        def ref():
            if has_control(path):
                return "EINVAL"
            parts = path.split("/")
            for i in range(1, len(parts)):  # the API makes missing parent directories (implicit ones)
                parent = "/".join(parts[:i])
                kind = self.ref_kind(parent)
                if kind == "file":
                    return "ENOTDIR"
                if kind is None:
                    (self.ref / parent).mkdir()
                    self.implicit.add(parent)
            if self.ref_kind(path) == "dir":
                self.prune()
                return "EISDIR"
            (self.ref / path).write_bytes(content)
            return None

        def api():
            src = self.source_file(path, content)
            try:
                lamfs.Artifact(src, key=self.key(path)).save()
            finally:
                shutil.rmtree(src.parent, ignore_errors=True)

        self.api("api_save", ref, api)

    def do_api_replace(self, path, content):
        """`Artifact.get(key).replace(file)` + `save()`: same uid, new bytes (same bytes: no change)."""
        def ref():
            if self.ref_kind(path) != "file":
                return "ENOENT"
            (self.ref / path).write_bytes(content)
            return None

        def api():
            artifact = lamfs.Artifact.get(key=self.key(path))
            src = self.source_file(path, content)
            try:
                artifact.replace(src)
                artifact.save()
            finally:
                shutil.rmtree(src.parent, ignore_errors=True)

        self.api("api_replace", ref, api)

    def do_api_delete(self, path):
        """`artifact.delete()`: to the trash; the file disappears from the mount."""
        def ref():
            if self.ref_kind(path) != "file":
                return "ENOENT"
            (self.ref / path).unlink()
            return None

        self.api("api_delete", ref, lambda: lamfs.Artifact.get(key=self.key(path)).delete())

    # -- rules: draw arguments, mostly naming existing entries -------------------------------------

    @initialize(data=st.data())
    def populate(self, data):
        """Start each example with a few entries, so that the random operations mostly hit something."""
        for path in data.draw(st.lists(paths, min_size=1, max_size=4), label="initial files"):
            self.do_create(path, data.draw(contents, label="content"))
        for path in data.draw(st.lists(names, max_size=2), label="initial dirs"):
            self.do_mkdir(path)

    @rule(data=st.data())
    def create(self, data):
        path = self.pick(data, "dir" if data.draw(st.booleans(), label="in a dir") else "file", new=True)
        self.do_create(path, data.draw(contents, label="content"))

    @rule(data=st.data(), offset=offsets, chunk=chunks)
    def write_at(self, data, offset, chunk):
        self.do_write_at(self.pick(data), offset, chunk)

    @rule(data=st.data(), chunk=chunks)
    def append(self, data, chunk):
        self.do_append(self.pick(data), chunk)

    @rule(data=st.data(), size=st.integers(min_value=0, max_value=500))
    def truncate(self, data, size):
        self.do_truncate(self.pick(data), size)

    @rule(data=st.data(), offset=offsets, chunk=chunks)
    def read_after_write(self, data, offset, chunk):
        self.do_read_after_write(self.pick(data), offset, chunk)

    @rule(data=st.data(), off1=offsets, data1=chunks, off2=offsets, data2=chunks)
    def two_writers(self, data, off1, data1, off2, data2):
        self.do_two_writers(self.pick(data), off1, data1, off2, data2)

    @rule(data=st.data())
    def read(self, data):
        self.do_read(self.pick(data))

    @rule(data=st.data())
    def stat_(self, data):
        self.do_stat(self.pick(data, "any"))

    @rule(data=st.data())
    def listdir(self, data):
        self.do_listdir(data.draw(st.one_of(st.just(""), st.sampled_from(self.existing("dir") or [""]), paths),
                                  label="dir"))

    @rule(data=st.data())
    def reader_across_change(self, data):
        path = self.pick(data)
        change = data.draw(st.sampled_from(
            ["overwrite", "truncate", "append", "rename_over", "unlink", "api_replace", "api_delete"]), label="change")
        self.do_reader_across_change(path, change, data.draw(contents, label="content"),
                                     data.draw(st.sampled_from([0, 1, 5000]), label="bytes read before the change"))

    @rule(data=st.data())
    def mkdir(self, data):
        self.do_mkdir(self.pick(data, "dir", new=True))

    @rule(data=st.data())
    def rmdir(self, data):
        self.do_rmdir(self.pick(data, "dir"))

    @rule(data=st.data())
    def unlink(self, data):
        self.do_unlink(self.pick(data, "any"))

    @rule(data=st.data())
    def rename(self, data):
        src = self.pick(data, "any")
        self.do_rename(src, self.pick(data, data.draw(st.sampled_from(["any", "dir"]), label="dst kind"), new=True))

    @rule(data=st.data())
    def api_save(self, data):
        self.do_api_save(self.pick(data, data.draw(st.sampled_from(["file", "dir"]), label="kind"), new=True))

    @rule(data=st.data())
    def api_replace(self, data):
        self.do_api_replace(self.pick(data), data.draw(contents, label="content"))

    @rule(data=st.data())
    def api_delete(self, data):
        self.do_api_delete(self.pick(data))

    # -- after every step ------------------------------------------------------------------------

    @invariant()
    def trees_and_catalog_agree(self):
        expected, got = snapshot(self.ref), snapshot(self.mnt)
        assert got.keys() == expected.keys(), (
            f"mount has {sorted(got.keys() - expected.keys())} extra, {sorted(expected.keys() - got.keys())} missing")
        for rel, value in expected.items():
            assert got[rel] == value, f"{rel!r}: mount {got[rel]!r:.200} != plain directory {value!r:.200}"
        service = lamfs.settings.service
        for rel, value in got.items():
            if value == "dir":
                continue
            rec = service.catalog.artifact_by_key(self.key(rel))
            assert rec is not None, f"{rel!r} is in the mount but has no catalog row"
            assert (rec.size, rec.hash) == (len(value), hash_bytes(value).hash), f"{rel!r}: catalog != bytes"
            assert service.storage.head(rec.storage_key).size == rec.size, f"{rel!r}: storage object size"


def run_model(mount_root: Path, ref_parent: Path, profile: str | None = None) -> dict:
    MountModel.mount_root, MountModel.ref_parent = mount_root, ref_parent
    MountModel.s3 = os.environ.get("LAMFS_MODEL_STORAGE") == "s3"
    chosen = settings.get_profile(profile or os.environ.get("LAMFS_MODEL_PROFILE", "lamfs-ci"))
    if os.environ.get("LAMFS_MODEL_NO_SHRINK"):  # report the first failure as found (debugging)
        chosen = settings(chosen, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    run_state_machine_as_test(MountModel, settings=chosen)
    return STATS


@pytest.fixture(scope="module")
def model_mount(tmp_path_factory, request):
    """One mount for the module (the model run and the regressions), kernel caches off.
    LAMFS_MODEL_STORAGE=s3 puts the storage root on the test S3 server (long runs); default: local."""
    base = tmp_path_factory.mktemp("model")
    if os.environ.get("LAMFS_MODEL_STORAGE") == "s3":
        server = request.getfixturevalue("s3_server")
        patch = pytest.MonkeyPatch()
        for name in list(os.environ):  # as the s3_env fixture (function-scoped) does
            if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                patch.delenv(name)
        for name, value in _s3_env(server, base).items():
            patch.setenv(name, value)
        import boto3

        boto3.session.Session().client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket="lamfs-model")
        storage = "s3://lamfs-model/model"
    else:
        patch, storage = None, str(base / "storage")
    try:
        with module_mount(base, storage, "model", "--entry-ttl", "0", "--attr-ttl", "0") as m:
            yield m
    finally:
        if patch is not None:
            patch.undo()


def _s3_env(server, base: Path) -> dict:
    """What the s3_env fixture sets (it is function-scoped), for a module-scoped mount."""
    (base / "aws").mkdir()
    for f in ("config", "credentials"):
        (base / "aws" / f).write_text("")
    return {"AWS_ENDPOINT_URL": server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": str(base / "aws/config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(base / "aws/credentials"), "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def test_model_mount_vs_plain_directory(model_mount, tmp_path):
    lamfs.setup.connect(model_mount.instance)
    ref_parent = tmp_path / "reference"
    ref_parent.mkdir()
    stats = run_model(model_mount.path, ref_parent)
    log = model_mount.log()
    assert "database is locked" not in log and "unexpected error" not in log, log[-5000:]
    print(f"\nmodel test: {stats['examples']} examples, {stats['steps']} operations ({stats['api_ops']} through the "
          f"API): {json.dumps(stats['ops'], sort_keys=True)}")
    if os.environ.get("LAMFS_MODEL_STATS"):
        Path(os.environ["LAMFS_MODEL_STATS"]).write_text(json.dumps(stats, indent=2))
    assert stats["steps"] > 0


# -- failing examples found by this model, kept as regression tests ------------------------------------------
# Each is a sequence of (operation, arguments) replayed through the same model, checked after every step.

REGRESSIONS = {
    # a file written through the mount was invisible when its bytes equalled an older version of the same
    # key: the commit "deduplicated" to that non-latest version instead of creating the file
    "create_with_bytes_of_an_old_version": [
        ("create", "a", b"x"), ("api_save", "a"), ("unlink", "a"), ("create", "a", b"x"),
        ("create", "b.txt", b"hello\n"), ("api_save", "b.txt"), ("rename", "b.txt", "B.txt"),
        ("create", "b.txt", b"hello\n"),
    ],
    # an implicit directory (made by the API for a key) stayed after rmdir of its last entry
    "implicit_dir_vanishes_after_rmdir_of_last_child": [
        ("api_save", "a/b.txt"), ("mkdir", "a/B.txt"), ("api_delete", "a/b.txt"), ("rmdir", "a/B.txt"),
        ("api_save", "b.txt/a"), ("mkdir", "a"), ("rename", "a", "b.txt/B.txt"), ("api_delete", "b.txt/a"),
    ],
    # a reader of a version was cut off at the length of a shorter version committed while it read (the
    # kernel took the new size from getattr)
    "reader_keeps_its_version_across_shorter_replace": [
        ("create", "a", b"\0" * 5000), ("reader_across_change", "a", "api_replace", b"x", 1),
        ("create", "b.txt", b"\0" * 5000), ("reader_across_change", "b.txt", "rename_over", b"", 0),
        ("reader_across_change", "a", "overwrite", b"hello\n", 5000),
        ("reader_across_change", "a", "truncate", b"x", 1),
    ],
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_model_regressions(name, model_mount, tmp_path):
    lamfs.setup.connect(model_mount.instance)
    MountModel.mount_root, MountModel.ref_parent = model_mount.path, tmp_path / "reference"
    MountModel.ref_parent.mkdir()
    machine = MountModel()
    try:
        for op, *args in REGRESSIONS[name]:
            getattr(machine, f"do_{op}")(*args)
            machine.trees_and_catalog_agree()
    finally:
        machine.teardown()
