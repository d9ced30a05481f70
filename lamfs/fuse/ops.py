"""pyfuse3 Operations for lamfs. Runs on the trio loop: every handler is a coroutine that must not
block, so all catalog, storage, hashing and file I/O goes through `self._run` (a worker thread
bounded by a CapacityLimiter). The rules (replace, rename, trash, commit ordering) live in the
service; this module translates calls, keeps inode/handle tables and nothing else.

Inodes: directory d -> 2d-1 (the root, d=1, is inode 1), artifact a -> 2a: stable across renames
and remounts because they come from catalog ids. Entries that have no catalog id of their own
(/.lamfs, files inside folder artifacts, files being created) get dynamic inodes >= 2**48.

Readers keep the version they opened. The kernel keeps one size and one page cache per inode (and
clamps every read, direct_io included, to that size), so lamfs keeps ONE VERSION PER KERNEL INODE:
- a reader opening an inode that already has open readers joins their version;
- an inode whose readers are pinned to a version that is no longer current (replaced through the API,
  another mount, or a rename over it) is a *ghost*: getattr keeps answering with the pinned version's
  size, and lookups hand out another inode number (an alias of the artifact) for the current version
  until those readers close;
- the first reader of an inode invalidates the kernel's cached attributes of it (its lookup may have
  run before a commit the open then saw).
Writes through the mount to the very inode a reader has open are POSIX in-place writes: those readers
switch to the writer's staging copy and see the new bytes, as on a local disk.
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from ..catalog import ROOT_DIR_ID, ArtifactRecord, DirectoryRecord
from ..errors import (
    AlreadyExists, ContentChanged, InvalidKey, IsADirectory, LamfsError, NoSpace, NotEmpty, NotFound, NotPermitted,
    ReadOnly, SourceChanged, StaleInode,
)
from ..keys import RESERVED_TOP, check_name, join_key, validate_key
from ..storage.local import local_etag
from .errno_map import fuse_errors, to_errno
from .writeback import WriteBack, transient, write_journal

log = logging.getLogger("lamfs.fuse")

DYN_BASE = 1 << 48
PIN_ATTEMPTS = 20  # opens of a local object that a concurrent commit keeps moving (see _pin)
COMMIT_ATTEMPTS = 8  # commits of a staging copy that another handle keeps writing (see WriteState.generation)
LAMFS_DIR_INO = DYN_BASE + 1
BY_UID_INO = DYN_BASE + 2
XATTR_PREFIX = "user.lamfs."
XATTR_PREFIX_B = XATTR_PREFIX.encode()
XATTRS = ("uid", "hash", "hash_type", "size", "storage_path", "description", "otype", "kind", "version")


def dir_ino(dir_id: int) -> int:
    return 2 * dir_id - 1


def art_ino(artifact_id: int) -> int:
    return 2 * artifact_id


@dataclass
class WriteState:
    """The local staging copy of a file open for writing; shared by all write handles of an inode."""

    path: Path
    fd: int
    record: ArtifactRecord | None  # None: a new file, not yet committed
    key: str | None
    dirty: bool = False
    handles: int = 0
    unlinked: bool = False
    # the last commit (flush/fsync) failed and close(2) reported EIO: release must not retry it behind
    # the user's back (the bytes stay in staging); a later write clears this
    commit_failed: bool = False
    # the errno of a write(2) that failed (ENOSPC: the disk margin, see lamfs/space.py): that write was
    # never acknowledged, so the staging copy is not what the writer meant. Close reports it, nothing is
    # committed, and release deletes the copy (its space comes back); sticky until then
    write_error: int = 0
    # write-back mode: an uploader holds a reference until it has committed (see fuse/writeback.py)
    queued: bool = False
    journal: Path | None = None
    kernel_inos: set = field(default_factory=set)  # the inode numbers the kernel writes this file through
    mtime_ns: int = field(default_factory=time.time_ns)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # bumped by every change of the staging copy. Writers never wait for a commit, so one handle may
    # write while another's close is hashing and uploading the shared copy: the commit checks, in its
    # catalog transaction, that nothing changed since it began, and otherwise starts again (found by
    # the two-mount churn test: a row's hash from one write, its object's bytes from the next)
    generation: int = 0

    def changed(self) -> None:
        self.generation += 1
        self.dirty = True


@dataclass
class Pending:
    """A file created in the mount whose first commit has not happened yet."""

    ino: int
    dir_id: int
    name: str
    state: WriteState


@dataclass
class Handle:
    ino: int
    write: WriteState | None = None
    append: bool = False
    # read side: a pinned version (see the module docstring: ghosts)
    record: ArtifactRecord | None = None
    fd: int | None = None  # local storage: the object file itself (survives replace by rename)
    storage_key: str | None = None
    identity: str | None = None
    size: int = 0
    pin: object | None = None


class LamfsOperations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, service, *, block_cache=None, staging_dir: Path, read_only: bool = False,
                 entry_ttl_s: float = 1.0, attr_ttl_s: float = 1.0, max_threads: int = 16,
                 write_back: WriteBack | None = None, space=None):
        """space: a lamfs.space.SpaceGuard for the disk(s) under staging, cache and catalog (None: no
        margin is kept)."""
        super().__init__()
        self.service = service
        self.storage = service.storage
        self.blocks = block_cache
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.read_only = read_only
        self.entry_ttl_s = entry_ttl_s
        self.attr_ttl_s = attr_ttl_s
        self.limiter = trio.CapacityLimiter(max_threads)
        self.uid, self.gid = os.getuid(), os.getgid()
        self.handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._dyn = itertools.count(DYN_BASE + 16)
        self.dyn: dict[int, tuple] = {}          # dynamic inode -> ("folder", artifact_id, relpath, is_dir, size)
        self.dyn_rev: dict[tuple, int] = {}
        self.pending: dict[int, Pending] = {}    # dynamic inode -> pending create
        self.alias: dict[int, int] = {}          # committed pending inode -> artifact id
        # the FUSE lookup count of every inode handed to the kernel (lookup, create, mkdir, readdirplus):
        # an alias may only be dropped when the kernel has forgotten every lookup of it, not at the first
        # FORGET (the kernel sends FORGET(n=1) for a revalidation reply it discards while it holds the
        # same number from another lookup; dropping the alias then made the next open ENOENT)
        self.nlookup: dict[int, int] = {}
        self._ino_lock = threading.Lock()         # alias + nlookup changes against forget (on the loop)
        self.writers: dict[int, WriteState] = {} # artifact inode -> shared staging
        self.last_identity: dict[int, str] = {}  # inode -> identity at last open (kernel page cache reuse)
        self.inflight = 0
        self.write_back = write_back
        self.healing: dict | None = None  # what healing at start did (daemon.py), for `lamfs status`
        self.space = space
        self.unmounted = False  # no more kernel notifications (uploads may still finish after unmount)
        self.started_ns = time.time_ns()
        # guards the pending/writers registries and every WriteState.handles count: handlers run in
        # parallel worker threads, and the kernel sends RELEASE after close(2) has returned, so a quick
        # re-open races with the release of the previous descriptor (held briefly; never during I/O)
        self._state_lock = threading.RLock()

    # -- plumbing ----------------------------------------------------------------------------------

    async def _run(self, fn, *args, **kwargs):
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)

    def _entry(self, ino: int, *, mode: int, size: int, mtime_ns: int, nlink: int = 1) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = self.entry_ttl_s
        a.attr_timeout = self.attr_ttl_s
        if self.read_only:
            mode &= ~0o222
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_rdev = 0
        a.st_size = size
        a.st_blksize = 1 << 17
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime_ns
        return a

    def _held(self, attr: pyfuse3.EntryAttributes, aid: int | None = None) -> pyfuse3.EntryAttributes:
        """Count the lookup the kernel makes when `attr` is replied to it. `aid`: the artifact the number
        stands for. An alias chosen for this reply may have been dropped by a FORGET processed since it
        was chosen (its previous lookups): the kernel is about to learn the number again, so it must keep
        meaning `aid`."""
        ino = attr.st_ino
        with self._ino_lock:
            self.nlookup[ino] = self.nlookup.get(ino, 0) + 1
            if aid is not None and ino != art_ino(aid) and ino not in self.pending and ino not in self.alias:
                self.alias[ino] = aid
        return attr

    def _dir_attr(self, rec: DirectoryRecord) -> pyfuse3.EntryAttributes:
        return self._entry(dir_ino(rec.id), mode=stat.S_IFDIR | (rec.mode & 0o7777), size=4096,
                           mtime_ns=rec.mtime_ns, nlink=2)

    def _art_attr(self, rec: ArtifactRecord, ino: int | None = None) -> pyfuse3.EntryAttributes:
        """Attributes of an artifact as inode `ino` (a getattr/setattr target), or, for lookups and
        listings (ino=None), under the inode number the kernel should use for its current version."""
        if rec.is_folder:
            return self._entry(ino or art_ino(rec.id), mode=stat.S_IFDIR | 0o555, size=4096, mtime_ns=rec.mtime_ns,
                               nlink=2)
        ino = ino or self._visible_ino(rec)
        state = self.writers.get(art_ino(rec.id))
        ghost = self._ghost(ino, rec)
        size, mtime_ns = rec.size, rec.mtime_ns
        staged = self._staged_size(state) if state is not None and (ghost is None or ino in state.kernel_inos) else None
        if staged is not None:
            size, mtime_ns = staged, state.mtime_ns
        elif ghost is not None:  # readers of an older version hold this inode: keep their size
            size, mtime_ns = ghost.size, ghost.record.mtime_ns
        perm = (rec.mode & 0o7777) or 0o644
        if rec.key is None:
            perm &= ~0o222
        return self._entry(ino, mode=stat.S_IFREG | perm, size=size, mtime_ns=mtime_ns)

    @staticmethod
    def _identity(rec: ArtifactRecord) -> str:
        return rec.storage_etag if rec.storage_etag else f"h:{rec.hash}"

    def _ghost(self, ino: int, rec: ArtifactRecord) -> Handle | None:
        """The largest open reader of inode `ino` pinned to a version of `rec` that is no longer
        current, if any (then `ino` is a ghost; see the module docstring)."""
        current = self._identity(rec)
        stale = [h for h in list(self.handles.values())
                 if h.ino == ino and h.write is None and h.record is not None and h.record.id == rec.id
                 and h.identity != current]
        return max(stale, key=lambda h: h.size) if stale else None

    def _visible_ino(self, rec: ArtifactRecord) -> int:
        """The inode number lookups and listings give for an artifact's current version: its stable
        number 2a, unless that is a ghost; then an alias (reused while the kernel knows it)."""
        canonical = art_ino(rec.id)
        if self._ghost(canonical, rec) is None:
            return canonical
        for ino, aid in list(self.alias.items()):
            if aid == rec.id and self._ghost(ino, rec) is None:
                return ino
        ino = next(self._dyn)
        self.alias[ino] = rec.id
        return ino

    def _special_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        return self._entry(ino, mode=stat.S_IFDIR | 0o555, size=4096, mtime_ns=self.started_ns, nlink=2)

    def _pending_attr(self, p: Pending) -> pyfuse3.EntryAttributes:
        size = self._staged_size(p.state)
        if size is None:  # its last descriptor was released meanwhile (committed or dropped)
            raise NotFound(f"{p.name} is gone")
        return self._entry(p.ino, mode=stat.S_IFREG | 0o644, size=size, mtime_ns=p.state.mtime_ns)

    def _staged_size(self, state: WriteState) -> int | None:
        """The size of a staging copy, or None once its fd is closed: the release of the last descriptor
        closes it in another worker thread (under _state_lock), and its number may be reused at once."""
        with self._state_lock:
            return None if state.fd < 0 else os.fstat(state.fd).st_size

    def _dyn_ino(self, key: tuple) -> int:
        ino = self.dyn_rev.get(key)
        if ino is None:
            ino = next(self._dyn)
            self.dyn_rev[key] = ino
            self.dyn[ino] = key
        return ino

    def _resolve(self, ino: int):
        """Blocking: what an inode is now. Returns ("dir", rec) | ("art", rec) | ("pending", p) |
        ("special", ino) | ("folder", key-tuple)."""
        p = self.pending.get(ino)  # one read: the release of its last descriptor may drop it meanwhile
        if p is not None:
            return "pending", p
        if ino in (LAMFS_DIR_INO, BY_UID_INO):
            return "special", ino
        # a kernel entry may outlive what it named (deleted, or renamed over, here or on another
        # mount): ESTALE, not ENOENT, so the kernel looks the name up again (open(O_CREAT) then creates)
        try:
            aid = self.alias.get(ino)  # one read: a FORGET on the loop may drop it at any moment
            if aid is not None:
                return "art", self.service.catalog.artifact_by_id(aid)
            if ino >= DYN_BASE:
                entry = self.dyn.get(ino)
                if entry is None:
                    raise StaleInode(f"stale inode {ino}")
                return "folder", entry
            if ino % 2:
                return "dir", self.service.dir_by_id((ino + 1) // 2)
            return "art", self.service.catalog.artifact_by_id(ino // 2)
        except StaleInode:
            raise
        except NotFound as exc:
            raise StaleInode(f"stale inode {ino}: {exc}") from None

    def _attr_of(self, kind, obj, ino):
        if kind == "dir":
            return self._dir_attr(obj)
        if kind == "art":
            return self._art_attr(obj, ino)
        if kind == "pending":
            return self._pending_attr(obj)
        if kind == "special":
            return self._special_attr(obj)
        _tag, _aid, _rel, is_dir, size, mtime_ns = obj
        if is_dir:
            return self._entry(ino, mode=stat.S_IFDIR | 0o555, size=4096, mtime_ns=mtime_ns, nlink=2)
        return self._entry(ino, mode=stat.S_IFREG | 0o444, size=size, mtime_ns=mtime_ns)

    @staticmethod
    def _existing_name(name: bytes) -> str:
        """A name to look up: one that is not UTF-8 cannot exist in the catalog (ENOENT; creating it is
        EINVAL, see _decode), and must not reach the catalog's driver, which cannot encode it."""
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise NotFound(f"no entry named {name!r}") from None

    def _decode(self, name: bytes) -> str:
        text = os.fsdecode(name)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKey(f"names must be valid UTF-8: {name!r}") from exc
        return check_name(text)

    def _writable_dir(self, kind, obj) -> int:
        """The directory id new entries may go into, or the errno-carrying refusal."""
        if self.read_only:
            raise ReadOnly("mounted read-only")
        if kind == "dir":
            return obj.id
        if kind in ("special",):
            raise NotPermitted("/.lamfs is read-only")
        if kind in ("folder",) or (kind == "art" and obj.is_folder):
            raise ReadOnly("folder artifacts are read-only in the mount; replace them through the API or CLI")
        raise NotFound("not a directory")

    def _check_new_name(self, dir_id: int, name: str) -> None:
        if dir_id == ROOT_DIR_ID and name in RESERVED_TOP:
            raise NotPermitted(f"{name} is reserved for lamfs")

    def _pending_in(self, dir_id: int, name: str) -> Pending | None:
        for p in self.pending.values():
            if p.dir_id == dir_id and p.name == name:
                return p
        return None

    # -- lookup & attributes ---------------------------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        name_s = self._existing_name(name)
        return await self._run(self._lookup, parent_inode, name_s)

    def _lookup(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        if name in (".", ".."):
            raise NotFound(name)
        kind, obj = self._resolve(parent_inode)
        if kind == "special":
            if obj == LAMFS_DIR_INO and name == "by-uid":
                return self._held(self._special_attr(BY_UID_INO))
            if obj == BY_UID_INO:
                rec = self._by_uid_name(name)
                return self._held(self._art_attr(rec), rec.id)
            raise NotFound(name)
        if kind == "dir":
            if obj.id == ROOT_DIR_ID and name == ".lamfs":
                return self._held(self._special_attr(LAMFS_DIR_INO))
            p = self._pending_in(obj.id, name)
            if p is not None:
                return self._held(self._pending_attr(p), self._pending_owner(p))
            child = self.service.lookup_child(obj.id, name)
            if child is None:
                raise NotFound(name)
            if isinstance(child, DirectoryRecord):
                return self._held(self._dir_attr(child))
            return self._held(self._art_attr(child), child.id)
        if kind == "art" and obj.is_folder:
            return self._held(self._folder_lookup(obj, "", name))
        if kind == "folder" and obj[3]:
            rec = self.service.catalog.artifact_by_id(obj[1])
            return self._held(self._folder_lookup(rec, obj[2], name))
        raise NotFound(name)

    @staticmethod
    def _pending_owner(p: Pending) -> int | None:
        """The artifact a new file's inode stands for once committed (None before)."""
        return None if p.state.record is None else p.state.record.id

    def _by_uid_name(self, name: str) -> ArtifactRecord:
        rec = self.service.catalog.artifact_by_uid(name[:20])
        if rec is None or rec.is_trashed or name != rec.uid + rec.suffix:
            raise NotFound(name)
        return rec

    def _folder_tree(self, rec: ArtifactRecord) -> dict[str, dict[str, tuple[bool, int]]]:
        """relative dir -> {name: (is_dir, size)} for a folder artifact (from the catalog manifest)."""
        tree: dict[str, dict[str, tuple[bool, int]]] = {"": {}}
        for f in self.service.folder_files(rec):
            parts = f.path.split("/")
            for i in range(len(parts) - 1):
                parent, sub = "/".join(parts[:i]), "/".join(parts[: i + 1])
                tree.setdefault(parent, {})[parts[i]] = (True, 0)
                tree.setdefault(sub, {})
            tree.setdefault("/".join(parts[:-1]), {})[parts[-1]] = (False, f.size)
        return tree

    def _folder_entry(self, rec: ArtifactRecord, rel: str, is_dir: bool, size: int):
        ino = self._dyn_ino(("folder", rec.id, rec.hash, rel))
        entry = ("folder", rec.id, rel, is_dir, size, rec.mtime_ns)
        self.dyn[ino] = entry
        return ino, self._attr_of("folder", entry, ino)

    def _folder_lookup(self, rec: ArtifactRecord, rel_dir: str, name: str):
        tree = self._folder_tree(rec)
        hit = tree.get(rel_dir, {}).get(name)
        if hit is None:
            raise NotFound(name)
        return self._folder_entry(rec, join_key(rel_dir, name), *hit)[1]

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return await self._run(self._getattr, inode)

    def _getattr(self, inode: int):
        kind, obj = self._resolve(inode)
        return self._attr_of(kind, obj, inode)

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        if self.read_only:
            raise ReadOnly("mounted read-only")
        return await self._run(self._setattr, inode, attr, fields, fh)

    def _setattr(self, inode, attr, fields, fh):
        kind, obj = self._resolve(inode)
        if (fields.update_uid and attr.st_uid not in (self.uid,)) or (fields.update_gid and attr.st_gid not in (self.gid,)):
            raise NotPermitted("chown to another user is not supported")
        if kind in ("special", "folder") or (kind == "art" and (obj.is_folder or obj.key is None)):
            if fields.update_size:
                if kind == "special" or (kind == "art" and obj.key is None):
                    raise NotPermitted("/.lamfs is read-only")
                raise ReadOnly("folder artifacts are read-only in the mount")
            return self._attr_of(kind, obj, inode)
        mtime_ns = attr.st_mtime_ns if fields.update_mtime else None
        mode = (attr.st_mode & 0o7777) if fields.update_mode else None
        if kind == "dir":
            self.service.set_dir_attrs(obj.id, mtime_ns=mtime_ns, mode=(stat.S_IFDIR | mode) if mode is not None else None)
            return self._dir_attr(self.service.dir_by_id(obj.id))
        if kind == "pending":
            state = obj.state
            if fields.update_size:
                with self._state_lock:  # its fd may be closed by a concurrent release
                    if state.fd < 0:
                        raise NotFound(f"{obj.name} is gone")
                    os.ftruncate(state.fd, attr.st_size)
                    state.changed()
            if mtime_ns is not None:
                state.mtime_ns = mtime_ns
            return self._pending_attr(obj)
        rec = obj
        if fields.update_size:
            with self._state_lock:  # a writer's fd is closed (and the writer dropped) under this lock
                state = self.writers.get(art_ino(rec.id))
                if state is not None:
                    os.ftruncate(state.fd, attr.st_size)
                    state.changed()
                    state.mtime_ns = time.time_ns()
            if state is None:  # truncate(2) on a path: a replace right away
                state = self._open_writer(rec, truncate=attr.st_size == 0, kernel_ino=inode)
                try:
                    os.ftruncate(state.fd, attr.st_size)
                    state.changed()
                    self._commit(state)
                finally:
                    self._drop_writer(art_ino(rec.id), state)
                rec = state.record
        changes = {}
        if mtime_ns is not None:
            changes["mtime_ns"] = mtime_ns
            state = self.writers.get(art_ino(rec.id))
            if state is not None:
                state.mtime_ns = mtime_ns
        if mode is not None:
            changes["mode"] = stat.S_IFREG | mode
        if changes:
            rec = self.service.set_attrs(rec, **changes)
        return self._art_attr(rec, inode)

    # -- directories -------------------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode, ctx):
        entries = await self._run(self._listing, inode)
        fh = next(self._fh)
        self.handles[fh] = Handle(ino=inode, record=None)
        self.handles[fh].listing = entries  # type: ignore[attr-defined]
        return fh

    def _listing(self, inode: int) -> list[tuple[bytes, pyfuse3.EntryAttributes, int | None]]:
        kind, obj = self._resolve(inode)
        # (name, attributes, the artifact the inode stands for: see _held)
        out: list[tuple[str, pyfuse3.EntryAttributes, int | None]] = []
        if kind == "special":
            if obj == LAMFS_DIR_INO:
                out.append(("by-uid", self._special_attr(BY_UID_INO), None))
            else:
                out += [(r.uid + r.suffix, self._art_attr(r), r.id) for r in self.service.keyless()]
        elif kind == "dir":
            dirs, arts = self.service.list_dir(obj.id)
            out += [(d.name, self._dir_attr(d), None) for d in dirs]
            out += [(a.name, self._art_attr(a), a.id) for a in arts]
            out += [(p.name, self._pending_attr(p), self._pending_owner(p))
                    for p in list(self.pending.values()) if p.dir_id == obj.id]
            if obj.id == ROOT_DIR_ID:
                out.append((".lamfs", self._special_attr(LAMFS_DIR_INO), None))
        elif kind == "art" and obj.is_folder:
            out += self._folder_listing(obj, "")
        elif kind == "folder" and obj[3]:
            out += self._folder_listing(self.service.catalog.artifact_by_id(obj[1]), obj[2])
        else:
            raise _errno(errno.ENOTDIR, "not a directory")
        out.sort(key=lambda e: e[0])
        return [(os.fsencode(n), a, aid) for n, a, aid in out]

    def _folder_listing(self, rec: ArtifactRecord, rel: str):
        tree = self._folder_tree(rec)
        return [(name, self._folder_entry(rec, join_key(rel, name), is_dir, size)[1], None)
                for name, (is_dir, size) in sorted(tree.get(rel, {}).items())]

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        entries = self.handles[fh].listing  # type: ignore[attr-defined]
        for i in range(start_id, len(entries)):
            name, attr, aid = entries[i]
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                break
            self._held(attr, aid)  # readdirplus: each entry the kernel takes is a lookup

    @fuse_errors
    async def releasedir(self, fh):
        self.handles.pop(fh, None)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        name_s = self._decode(name)
        return await self._run(self._mkdir, parent_inode, name_s, mode)

    def _mkdir(self, parent_inode, name, mode):
        kind, obj = self._resolve(parent_inode)
        dir_id = self._writable_dir(kind, obj)
        self._check_new_name(dir_id, name)
        if self._pending_in(dir_id, name):
            raise AlreadyExists(name)
        rec = self.service.mkdir(join_key(obj.path, name))
        self.service.set_dir_attrs(rec.id, mode=stat.S_IFDIR | (mode & 0o7777))
        return self._held(self._dir_attr(self.service.dir_by_id(rec.id)))

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        name_s = self._existing_name(name)
        await self._run(self._rmdir, parent_inode, name_s)

    def _rmdir(self, parent_inode, name):
        kind, obj = self._resolve(parent_inode)
        if kind != "dir":
            self._writable_dir(kind, obj)
            raise NotFound(name)
        if self.read_only:
            raise ReadOnly("mounted read-only")
        child = self.service.lookup_child(obj.id, name)
        if child is None:
            raise NotFound(name)
        if isinstance(child, ArtifactRecord):
            if child.is_folder:
                raise NotEmpty(f"{name} is a folder artifact: delete it with `lamfs rm` or the API")
            raise _errno(errno.ENOTDIR, f"{name} is a file")
        if any(p.dir_id == child.id for p in self.pending.values()):
            raise NotEmpty(name)
        self.service.rmdir(child.id)

    # -- files: create / open / read / write / flush -----------------------------------------------------

    def _new_staging(self, fill_from: ArtifactRecord | None = None) -> tuple[Path, int]:
        """A private staging file, filled with an artifact's current bytes first if asked (the fill
        renames a temp file into place, so the fd is opened only afterwards)."""
        path = self.staging_dir / f"w-{os.getpid()}-{time.time_ns()}-{next(self._fh)}"
        if fill_from is not None and fill_from.size:
            reserved = self._make_room(fill_from.size, fill_from.key)
            try:
                self._fill_staging(fill_from, path)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            finally:
                if reserved:
                    self.space.written(reserved)
            return path, os.open(path, os.O_RDWR)
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def _open_writer(self, rec: ArtifactRecord, *, truncate: bool, kernel_ino: int | None = None) -> WriteState:
        """The shared staging copy for writing `rec` through kernel inode `kernel_ino`."""
        ino = art_ino(rec.id)
        with self._state_lock:
            state = self.writers.get(ino)
            if state is not None:
                return self._join_writer(state, rec, truncate, kernel_ino)
        path, fd = self._new_staging(fill_from=None if truncate else rec)  # may download: not under the lock
        with self._state_lock:
            state = self.writers.get(ino)
            if state is not None:  # another open of this file got there first: share its copy
                os.close(fd)
                path.unlink(missing_ok=True)
            else:
                state = WriteState(path=path, fd=fd, record=rec, key=rec.key)
                self.writers[ino] = state
            return self._join_writer(state, rec, truncate, kernel_ino)

    def _join_writer(self, state: WriteState, rec: ArtifactRecord, truncate: bool, kernel_ino: int | None) -> WriteState:
        # _state_lock held
        if truncate:
            os.ftruncate(state.fd, 0)
            state.generation += 1
        if truncate and (rec.size or os.fstat(state.fd).st_size):
            state.dirty = True
        state.handles += 1
        kernel_ino = kernel_ino if kernel_ino is not None else self._visible_ino(rec)
        state.kernel_inos.add(kernel_ino)
        self._follow_writer(kernel_ino, rec, state)
        return state

    def _follow_writer(self, kernel_ino: int, rec: ArtifactRecord, state: WriteState) -> None:
        """Readers of the current version on the inode being written share the kernel's size and page
        cache with the writer: they read the staging copy from now on (POSIX in-place write), instead of
        a version the kernel no longer describes. Readers of older versions (ghosts) stay pinned."""
        current = self._identity(rec)
        for h in list(self.handles.values()):
            if h.ino == kernel_ino and h.write is None and h.record is not None and h.record.id == rec.id \
                    and h.identity == current:
                if h.fd is not None:
                    os.close(h.fd)
                    h.fd = None
                if h.pin is not None:
                    h.pin.close()
                    h.pin = None
                state.handles += 1
                h.write = state

    def _fill_staging(self, rec: ArtifactRecord, path: Path) -> None:
        local = self.storage.local_path(rec.storage_key)
        if local is not None:
            shutil.copyfile(local, path)
        else:
            self.storage.download_file(rec.storage_key, path, etag=rec.storage_etag)

    def _drop_writer(self, ino: int, state: WriteState) -> None:
        with self._state_lock:
            state.handles -= 1
            if state.handles > 0:
                return
            if self.writers.get(ino) is state:
                del self.writers[ino]
            os.close(state.fd)
            state.fd = -1
        if state.dirty and not state.unlinked and not state.write_error:
            log.error("uncommitted writes to %s are kept at %s", state.key, state.path)
        else:
            self._discard_staging(state)

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        name_s = self._decode(name)
        return await self._run(self._create, parent_inode, name_s, mode, flags)

    def _create(self, parent_inode, name, mode, flags):
        kind, obj = self._resolve(parent_inode)
        dir_id = self._writable_dir(kind, obj)
        self._check_new_name(dir_id, name)
        key = join_key(obj.path, name)
        validate_key(key)
        existing = self.service.lookup_child(dir_id, name)
        if isinstance(existing, DirectoryRecord):
            raise IsADirectory(name)
        fh = next(self._fh)
        if existing is not None:  # lost a race with another writer: open the existing file truncated
            if flags & os.O_EXCL:
                raise AlreadyExists(name)
            state = self._open_writer(existing, truncate=True)
            self.handles[fh] = Handle(ino=art_ino(existing.id), write=state, append=bool(flags & os.O_APPEND))
            return pyfuse3.FileInfo(fh=fh), self._held(self._art_attr(existing), existing.id)
        with self._state_lock:
            p = self._pending_in(dir_id, name)
            if p is None:
                path, fd = self._new_staging()
                state = WriteState(path=path, fd=fd, record=None, key=key, dirty=True)
                p = Pending(ino=next(self._dyn), dir_id=dir_id, name=name, state=state)
                self.pending[p.ino] = p
            p.state.handles += 1
            self.handles[fh] = Handle(ino=p.ino, write=p.state, append=bool(flags & os.O_APPEND))
            return pyfuse3.FileInfo(fh=fh), self._held(self._pending_attr(p), self._pending_owner(p))

    @fuse_errors
    async def open(self, inode, flags, ctx):
        return await self._run(self._open, inode, flags)

    def _open(self, inode, flags):
        kind, obj = self._resolve(inode)
        writing = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        fh = next(self._fh)
        if kind == "pending":
            with self._state_lock:
                gone = inode not in self.pending  # committed meanwhile (then an alias) or released
                if gone:
                    pass
                elif writing:
                    obj.state.handles += 1
                    if flags & os.O_TRUNC:
                        os.ftruncate(obj.state.fd, 0)
                        obj.state.changed()
                    self.handles[fh] = Handle(ino=inode, write=obj.state, append=bool(flags & os.O_APPEND))
                    return pyfuse3.FileInfo(fh=fh)
                else:
                    obj.state.handles += 1  # read of a file still being written: read the staging copy
                    self.handles[fh] = Handle(ino=inode, write=obj.state)
                    return pyfuse3.FileInfo(fh=fh, direct_io=True)
            return self._open(inode, flags)  # resolve it again
        if kind == "folder":
            if writing:
                raise ReadOnly("folder artifacts are read-only in the mount")
            _tag, aid, rel, is_dir, size, _m = obj
            rec = self.service.catalog.artifact_by_id(aid)
            return self._open_reader(fh, inode, rec, f"{rec.storage_key}/{rel}", size, f"h:{rec.hash}:{rel}")
        if kind != "art" or obj.is_folder:
            raise IsADirectory("is a directory")
        rec = obj
        if rec.is_trashed:
            # reached through a kernel entry older than an rm on another mount (this mount's own rm
            # drops the entry): the name no longer means this file, and a write would change a file
            # no name shows. ESTALE: the kernel looks the name up again (and O_CREAT then creates)
            raise StaleInode(f"{rec.key} was deleted; look it up again")
        if writing:
            if self.read_only:
                raise ReadOnly("mounted read-only")
            if rec.key is None:  # only reachable under /.lamfs/by-uid: writes there are EPERM
                raise NotPermitted("artifacts without a key are read-only under /.lamfs/by-uid")
            state = self._open_writer(rec, truncate=bool(flags & os.O_TRUNC), kernel_ino=inode)
            self.handles[fh] = Handle(ino=art_ino(rec.id), write=state, append=bool(flags & os.O_APPEND))
            return pyfuse3.FileInfo(fh=fh)
        with self._state_lock:
            state = self.writers.get(art_ino(rec.id))
            # this mount is writing it: read what was written (POSIX within a mount) -- unless its close
            # failed: those bytes were refused, never committed (a reader's close must not commit them)
            if state is not None and not state.commit_failed:
                state.handles += 1
                self.handles[fh] = Handle(ino=art_ino(rec.id), write=state)
                return pyfuse3.FileInfo(fh=fh, direct_io=True)
        return self._open_reader(fh, inode, rec, rec.storage_key, rec.size, self._identity(rec))

    def _open_reader(self, fh, inode, rec, storage_key, size, identity):
        """Pin a version for reading through kernel inode `inode`. One version per kernel inode (see the
        module docstring): if readers are already on it, this one joins their version — they may hold an
        older one when this open came through a dentry the kernel has not revalidated yet (at most the
        entry TTL after a change)."""
        handle = self._pin(Handle(ino=inode, record=rec, storage_key=storage_key, identity=identity, size=size))
        with self._state_lock:
            peer = next((h for h in list(self.handles.values()) if h.ino == inode and h.write is None
                         and h.record is not None and h.record.id == rec.id and (h.fd is not None or h.pin is not None)),
                        None)
            if peer is not None and peer.identity != handle.identity:
                self._unpin(handle)
                handle = Handle(ino=inode, record=peer.record, storage_key=peer.storage_key, identity=peer.identity,
                                size=peer.size)
                if peer.fd is not None:
                    handle.fd = os.dup(peer.fd)  # under the lock: _release takes the fd under it too
                else:
                    handle.pin = self.blocks.open(self._object_id(handle))
            self.handles[fh] = handle
            keep = self.last_identity.get(inode) == handle.identity
            self.last_identity[inode] = handle.identity
        if peer is None:
            # the first reader of this inode: the kernel may hold the size of another version (its lookup
            # ran before a commit this open saw); make it ask again, or it would cut this reader off there
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError:  # the kernel has no cached attributes for it: nothing to fix
                pass
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    def _pin(self, handle: Handle) -> Handle:
        rec, storage_key = handle.record, handle.storage_key
        local = self.storage.local_path(storage_key)
        if local is not None:
            # keep the object's fd: a replace renames a new file into place, this reader keeps its version
            for attempt in range(PIN_ATTEMPTS):
                try:
                    handle.fd = os.open(local, os.O_RDONLY)
                    break
                except FileNotFoundError:
                    # a commit moved the bytes (a rename over, a suffix change) and deleted this object since
                    # the row was read: read the row again (not for a file inside a folder artifact). Under
                    # a stream of renames over the same name the new row can be outdated again by the time
                    # it is opened; an instrumented 40 s concurrency run never missed twice in a row, the
                    # bound and the backoff are a margin (the ENOENT once blamed on this was bug 12)
                    if attempt == PIN_ATTEMPTS - 1 or storage_key != rec.storage_key:
                        raise
                    if attempt >= 2:
                        time.sleep(0.001 * attempt)
                    rec = self.service.catalog.artifact_by_id(rec.id)
                    storage_key = rec.storage_key
                    handle.record, handle.storage_key, handle.size = rec, storage_key, rec.size
                    handle.identity = self._identity(rec)
                    local = self.storage.local_path(storage_key)
            st = os.fstat(handle.fd)
            if rec.storage_etag and storage_key == rec.storage_key and local_etag(st) != rec.storage_etag:
                # a replace renamed newer bytes into place between the catalog read and this open (its
                # commit is on its way): pin what was opened, with its own size and identity
                handle.size, handle.identity = st.st_size, local_etag(st)
        elif self.blocks is not None:
            handle.pin = self.blocks.open(self._object_id(handle))
        return handle

    @staticmethod
    def _unpin(handle: Handle) -> None:
        if handle.fd is not None:
            os.close(handle.fd)
            handle.fd = None
        if handle.pin is not None:
            handle.pin.close()
            handle.pin = None

    def _object_id(self, handle: Handle):
        from ..cache.blocks import ObjectId

        return ObjectId(handle.storage_key, handle.identity, handle.size)

    @fuse_errors
    async def read(self, fh, off, size):
        handle = self.handles[fh]
        return await self._run(self._read, handle, off, size)

    def _read(self, handle: Handle, off: int, size: int) -> bytes:
        if handle.write is not None:
            return os.pread(handle.write.fd, size, off)
        if handle.fd is not None:
            return os.pread(handle.fd, size, off)
        if off >= handle.size:
            return b""
        try:
            if self.blocks is not None:
                return self.blocks.read(self._object_id(handle), off, size)
            return self.storage.get_range(handle.storage_key, off, min(size, handle.size - off),
                                          etag=handle.record.storage_etag)
        except NotFound as exc:
            if self._follow_move(handle):  # the same bytes, moved to another key by a commit: read them there
                return self._read(handle, off, size)
            # the version this reader opened is gone from storage (replaced, renamed over)
            raise ContentChanged(f"{handle.storage_key}: the version opened is no longer in storage") from exc

    def _follow_move(self, handle: Handle) -> bool:
        rec = handle.record
        if handle.storage_key != rec.storage_key:  # a file inside a folder artifact
            return False
        try:
            cur = self.service.catalog.artifact_by_id(rec.id)
        except NotFound:
            return False
        if cur.storage_key == handle.storage_key or cur.hash != rec.hash or cur.size != handle.size:
            return False
        with self._state_lock:
            old_pin = handle.pin
            handle.record, handle.storage_key, handle.identity = cur, cur.storage_key, self._identity(cur)
            handle.pin = self.blocks.open(self._object_id(handle)) if old_pin is not None else None
        if old_pin is not None:
            old_pin.close()
        return True

    @fuse_errors
    async def write(self, fh, off, buf):
        handle = self.handles[fh]
        if handle.write is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self._run(self._write, handle, off, buf)

    def _write(self, handle: Handle, off: int, buf: bytes) -> int:
        state = handle.write
        if handle.append:
            off = os.fstat(state.fd).st_size
        reserved = 0
        try:
            if self.space is not None:
                if self.space.reserve(len(buf)):
                    reserved = len(buf)
                else:  # near the margin: count only what the write adds (rewriting bytes the file has is free)
                    reserved = self._make_room(max(0, off + len(buf) - os.fstat(state.fd).st_size), state.key)
            written = os.pwrite(state.fd, buf, off)
            state.changed()
        except (OSError, LamfsError) as exc:  # NoSpace: refused at the margin; OSError: by the disk itself
            state.write_error = state.write_error or to_errno(exc)
            raise
        finally:
            if reserved:
                self.space.written(reserved)
        state.commit_failed = False
        state.mtime_ns = time.time_ns()
        return written

    def _make_room(self, nbytes: int, key: str | None) -> int:
        """Blocking: reserve room for `nbytes` more in staging without eating into the disk margin:
        evict block-cache blocks if that helps, else refuse with NoSpace (ENOSPC). Returns the bytes
        reserved (the caller calls space.written with them once it has written)."""
        if self.space is None or nbytes <= 0:
            return 0
        if self.space.reserve(nbytes):
            return nbytes
        if self.blocks is not None:
            freed = self.blocks.free(self.space.shortfall(nbytes))
            if freed:
                log.info("disk margin: evicted %d bytes of cached blocks to make room for writes", freed)
                if self.space.reserve(nbytes):
                    return nbytes
        self.space.refused()
        disks = ", ".join(f"{d.path}: {d.free_bytes >> 20} MiB free, {d.margin_bytes >> 20} MiB kept free"
                          for d in self.space.disks())
        raise NoSpace(f"no space for {nbytes} more bytes of {key}: the local disk is down to its free-space "
                      f"margin, kept for the catalog ({disks}; lamfs mount --disk-margin)")

    @fuse_errors
    async def flush(self, fh):
        """close(2): commit (durable-on-close), or in write-back mode hand the file to an uploader."""
        handle = self.handles.get(fh)
        if handle is None or handle.write is None or not handle.write.dirty:
            return
        if self.write_back is not None:
            self._check_writes(handle.write)
            await self._run(self._enqueue, handle)
            return
        await self._commit_now(handle)

    @fuse_errors
    async def fsync(self, fh, datasync):
        """Durable in every mode: waits for the upload and the catalog commit, and reports failures."""
        handle = self.handles.get(fh)
        if handle is None or handle.write is None or not handle.write.dirty:
            return
        await self._commit_now(handle)

    async def _commit_now(self, handle: Handle) -> None:
        self.inflight += 1
        try:
            await self._run(self._commit_handle, handle)
        finally:
            self.inflight -= 1

    # -- write-back (see fuse/writeback.py) ------------------------------------------------------------

    def _enqueue(self, handle: Handle) -> None:
        """Blocking: give a dirty file to the uploaders, once. The job holds a reference to the staging
        copy (as an open descriptor would) until it has committed, so the file stays visible in this
        mount as it is now: pending files keep their entry, replaced ones their staged size."""
        state = handle.write
        with self._state_lock:
            if state.queued or state.unlinked or state.fd < 0:
                return
            pending = self.pending.get(handle.ino)
            pending = pending if pending is not None and pending.state is state else None
            state.queued = True
            state.handles += 1
        if state.journal is None:
            rec = state.record
            journal = write_journal(
                state.path, key=state.key, artifact_id=None if rec is None else rec.id,
                dir_id=None if pending is None else pending.dir_id, name=None if pending is None else pending.name,
                mtime_ns=state.mtime_ns)
            with self._state_lock:  # an unlink in between must not leave a journal that revives the file
                keep = not state.unlinked and state.journal is None
                if keep:
                    state.journal = journal
            if not keep:
                journal.unlink(missing_ok=True)
        self.write_back.submit(self._upload_job, handle.ino, state)

    def _upload_job(self, ino: int, state: WriteState) -> None:
        """An uploader thread: commit until it sticks (retrying storage trouble with backoff), again if
        the file was written meanwhile, then drop the job's reference."""
        holder = Handle(ino=ino, write=state)
        attempt = 0
        try:
            while True:
                try:
                    self._commit_handle(holder)
                    self.write_back.count_commit()
                except Exception as exc:  # noqa: BLE001 - classified below; _commit_handle logged it
                    if not transient(exc):
                        log.error("write-back: giving up on %s (%s); its bytes are kept at %s",
                                  state.key, exc, state.path)
                        return
                    if not self.write_back.backoff(attempt):
                        log.warning("write-back: %s not committed before shutdown; the next mount commits it",
                                    state.key)
                        return
                    attempt += 1
                    continue
                with self._state_lock:
                    if not state.dirty or state.unlinked:
                        return
                attempt = 0  # written again while this commit ran: commit the newer bytes too
        finally:
            with self._state_lock:
                state.queued = False
            self._release(holder)

    def _commit_handle(self, handle: Handle) -> None:
        state = handle.write
        pending = self.pending.get(handle.ino)
        if pending is not None and pending.state is not state:
            pending = None
        try:
            self._commit(state, pending)
        except Exception as exc:
            state.commit_failed = True
            if not state.write_error:  # (else nothing is kept: the caller reports it)
                log.warning("commit of %s failed; the written bytes are kept at %s: %s", state.key, state.path, exc)
            raise
        state.commit_failed = False
        if pending is not None and state.record is not None:
            # the file now has a catalog id: later lookups get its stable inode
            with self._state_lock, self._ino_lock:
                self.alias[pending.ino] = state.record.id
                if self.pending.get(pending.ino) is pending:
                    del self.pending[pending.ino]
                    self.writers.setdefault(art_ino(state.record.id), state)
            self._invalidate_entry(pending.dir_id, pending.name)

    def _commit(self, state: WriteState, pending: Pending | None = None) -> None:
        """Blocking: store the staging bytes and commit (new artifact or replace)."""
        with state.lock:
            if not state.dirty or state.unlinked:
                return
            self._check_writes(state)
            if state.record is None and pending is not None:
                # its directory may have been renamed since the create: the key follows it
                state.key = join_key(self.service.dir_by_id(pending.dir_id).path, pending.name)
            for attempt in range(COMMIT_ATTEMPTS):
                over = None if state.record is None else self.service.refresh(state.record)
                generation = state.generation
                try:
                    rec = self.service.commit_file(state.path, over=over, key=state.key, mtime_ns=state.mtime_ns,
                                                   unchanged=lambda g=generation: state.generation == g)
                    break
                except SourceChanged:
                    if attempt == COMMIT_ATTEMPTS - 1:
                        raise
            state.record = rec
            state.key = rec.key
            state.dirty = state.generation != generation  # written again since: a later close commits that
            with self._state_lock:
                journal, state.journal = state.journal, None
                deleted_meanwhile = state.unlinked
            if journal is not None:  # committed: nothing left for a recovery to do
                journal.unlink(missing_ok=True)
            if deleted_meanwhile:  # unlinked while this commit uploaded it: the delete wins, as it came last
                self.service.trash(rec)
            if self.blocks is not None:
                self.blocks.invalidate(rec.storage_key)

    @staticmethod
    def _check_writes(state: WriteState) -> None:
        """A file one of whose writes failed is never committed (nor queued): close(2) says so."""
        if state.write_error:
            what = f"a write to {state.key} failed ({errno.errorcode.get(state.write_error, state.write_error)}): " \
                   f"not committed, the partial copy is deleted when the file is closed"
            raise NoSpace(what) if state.write_error in (errno.ENOSPC, errno.EDQUOT) else LamfsError(what)

    def _invalidate_entry(self, dir_id: int, name: str) -> None:
        if self.unmounted:
            return
        try:
            pyfuse3.invalidate_entry_async(dir_ino(dir_id), os.fsencode(name), ignore_enoent=True)
        except Exception:  # noqa: BLE001 - best effort: the entry TTL expires anyway
            pass

    @fuse_errors
    async def release(self, fh):
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        await self._run(self._release, handle)

    def _release(self, handle: Handle) -> None:
        with self._state_lock:  # a reader joining this one dups its fd under the lock
            fd, handle.fd = handle.fd, None
            pin, handle.pin = handle.pin, None
        if fd is not None:
            os.close(fd)
        if pin is not None:
            pin.close()
        state = handle.write
        if state is None:
            return
        if state.write_error:
            pass  # never committed: deleted below once its last descriptor is gone
        elif state.dirty and not state.unlinked and self.write_back is not None and not state.commit_failed:
            self._enqueue(handle)  # writes after the last flush (e.g. through mmap): queue them too
        elif state.dirty and not state.unlinked and state.handles == 1 and not state.commit_failed:
            try:  # normally flush committed already; this catches writes after the last flush
                self._commit_handle(handle)
            except Exception:  # noqa: BLE001 - logged in _commit_handle; bytes stay in staging
                pass
        with self._state_lock:
            pending = self.pending.get(handle.ino)
            if pending is not None and pending.state is state:
                state.handles -= 1
                if state.handles > 0:
                    return
                del self.pending[handle.ino]
                os.close(state.fd)
                state.fd = -1
            elif state.record is None:  # a new file unlinked before its first commit
                state.handles -= 1
                if state.handles > 0:
                    return
                os.close(state.fd)
                state.fd = -1
            else:
                pending = None
        if pending is not None or state.record is None:
            if state.dirty and not state.unlinked and not state.write_error:
                log.error("uncommitted new file %s is kept at %s", state.key, state.path)
            else:
                self._discard_staging(state)
            return
        self._drop_writer(art_ino(state.record.id), state)

    def _discard_staging(self, state: WriteState) -> None:
        """Delete a staging copy that holds nothing to keep (committed, deleted, or incomplete)."""
        if state.write_error and state.dirty and not state.unlinked:
            log.warning("%s was not committed (a write failed): its partial copy is deleted", state.key)
            self._drop_journal(state)
        state.path.unlink(missing_ok=True)

    # -- namespace changes ---------------------------------------------------------------------------------

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        name_s = self._existing_name(name)
        await self._run(self._unlink, parent_inode, name_s)

    def _unlink(self, parent_inode, name):
        kind, obj = self._resolve(parent_inode)
        dir_id = self._writable_dir(kind, obj)
        with self._state_lock:
            p = self._pending_in(dir_id, name)
            if p is not None and p.state.record is None:
                # not committed: it never reaches the catalog. A commit already uploading it (write-back)
                # is not waited for: it sees the mark when it is done and deletes what it committed.
                p.state.unlinked = True
                journal, p.state.journal = p.state.journal, None
                del self.pending[p.ino]
                if journal is not None:
                    journal.unlink(missing_ok=True)
                return
        # (a pending file committed meanwhile is deleted as the artifact it became, below)
        child = self.service.lookup_child(dir_id, name)
        if child is None:
            raise NotFound(name)
        if isinstance(child, DirectoryRecord):
            raise IsADirectory(name)
        if child.is_folder:
            raise IsADirectory(f"{name} is a folder artifact")
        state = self.writers.get(art_ino(child.id))
        if state is not None:
            with state.lock:
                state.unlinked = True
                self._drop_journal(state)
        self.service.trash(child)

    def _drop_journal(self, state: WriteState) -> None:
        """The file was deleted: a recovery must not bring it back."""
        with self._state_lock:
            journal, state.journal = state.journal, None
        if journal is not None:
            journal.unlink(missing_ok=True)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_s, new_s = self._existing_name(name_old), self._decode(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self.inflight += 1
        try:
            await self._run(self._rename, parent_inode_old, old_s, parent_inode_new, new_s,
                            bool(flags & pyfuse3.RENAME_NOREPLACE))
        finally:
            self.inflight -= 1

    def _rename(self, p_old, old, p_new, new, noreplace):
        kind_o, obj_o = self._resolve(p_old)
        kind_n, obj_n = self._resolve(p_new)
        src_dir = self._writable_dir(kind_o, obj_o)
        dst_dir = self._writable_dir(kind_n, obj_n)
        self._check_new_name(dst_dir, new)
        new_key = join_key(obj_n.path, new)
        validate_key(new_key)
        pending = self._pending_in(src_dir, old)
        if pending is not None:  # still being written: commit it, then move the committed artifact
            self._commit_handle(Handle(ino=pending.ino, write=pending.state))
        src = self.service.lookup_child(src_dir, old)
        if src is None:
            raise NotFound(old)
        state = self.writers.get(art_ino(src.id)) if isinstance(src, ArtifactRecord) else None
        if state is not None and state.dirty and state.queued:
            # write-back: its new bytes are still on their way; a rename over another file moves the
            # source's object and row, so they must be committed first
            self._commit_handle(Handle(ino=art_ino(src.id), write=state))
            src = self.service.refresh(src)
        pending_dst = self._pending_in(dst_dir, new)
        if pending_dst is not None and pending_dst.state is not (pending.state if pending else None):
            # a new file not committed yet (open, or queued in write-back mode) is the target: commit it,
            # so that the rename replaces it as it would any file
            self._commit_handle(Handle(ino=pending_dst.ino, write=pending_dst.state))
        dst = self.service.lookup_child(dst_dir, new)
        if dst is not None and noreplace:
            raise AlreadyExists(new)
        if isinstance(src, DirectoryRecord):
            self._commit_pending_below(src.path)
            if isinstance(dst, ArtifactRecord):
                raise _errno(errno.ENOTDIR, f"{new} is not a directory")
            if isinstance(dst, DirectoryRecord):
                self.service.rmdir(dst.id, prune_parent=False)  # ENOTEMPTY unless empty, as rename(2)
            self.service.rename_dir(src.path, new_key)
            return
        if isinstance(dst, DirectoryRecord):
            raise IsADirectory(new)
        moved = self.service.move(src, new_key)  # over whatever file is at new_key by then
        if moved.id != src.id:  # renamed over another file, which keeps its uid and id
            # the kernel now maps the new name to src's inode: let that inode mean dst from here on
            with self._ino_lock:
                for ino, aid in list(self.alias.items()):
                    if aid == src.id:
                        self.alias[ino] = moved.id
                self.alias[art_ino(src.id)] = moved.id
            if self.blocks is not None:
                self.blocks.invalidate(moved.storage_key)

    def _commit_pending_below(self, dir_path: str) -> None:
        """Commit the new files not committed yet (open for writing, or queued in write-back mode) below
        a directory that is about to move: they are keyed by their directory, whose edges move now."""
        prefix = dir_path.rstrip("/") + "/"
        with self._state_lock:
            below = [p for p in self.pending.values() if p.state.key and p.state.key.startswith(prefix)]
        for p in below:
            self._commit_handle(Handle(ino=p.ino, write=p.state))

    # -- links, nodes: not supported -------------------------------------------------------------------------

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        raise NotPermitted("symlinks are not supported")

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise NotPermitted("hard links are not supported")

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise NotPermitted("device nodes are not supported")

    # -- extended attributes -----------------------------------------------------------------------------------

    def _xattr_values(self, rec: ArtifactRecord) -> dict[str, str]:
        return {
            "uid": rec.uid, "hash": rec.hash, "hash_type": rec.hash_type, "size": str(rec.size),
            "storage_path": self.storage.url(rec.storage_key), "description": rec.description or "",
            "otype": rec.otype or "", "kind": rec.kind or "", "version": rec.version_tag or rec.uid[16:],
        }

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if not name.startswith(XATTR_PREFIX_B):
            # `ls -l` asks for security.selinux and system.posix_acl_* on every file: answer on the
            # loop, without a worker thread and a catalog query (they were 90% of `ls -lR`)
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self._run(self._getxattr, inode, os.fsdecode(name))

    def _getxattr(self, inode, name):
        kind, obj = self._resolve(inode)
        if kind != "art" or not name.startswith(XATTR_PREFIX):
            raise _errno(errno.ENODATA, name)
        value = self._xattr_values(obj).get(name[len(XATTR_PREFIX):])
        if value is None:
            raise _errno(errno.ENODATA, name)
        return value.encode("utf-8")

    @fuse_errors
    async def listxattr(self, inode, ctx):
        kind, _obj = await self._run(self._resolve, inode)
        if kind != "art":
            return []
        return [f"{XATTR_PREFIX}{n}".encode() for n in XATTRS]

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        await self._run(self._setxattr, inode, os.fsdecode(name), value)

    def _setxattr(self, inode, name, value):
        kind, obj = self._resolve(inode)
        if name != XATTR_PREFIX + "description":
            if name.startswith(XATTR_PREFIX):
                raise NotPermitted(f"{name} is read-only")
            raise _errno(errno.ENOTSUP, name)
        if kind != "art":
            raise _errno(errno.ENOTSUP, name)
        if self.read_only:
            raise ReadOnly("mounted read-only")
        self.service.set_attrs(obj, description=value.decode("utf-8", "replace"))

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        name_s = os.fsdecode(name)
        if name_s == XATTR_PREFIX + "description":
            await self._run(self._setxattr, inode, name_s, b"")
            return
        raise pyfuse3.FUSEError(errno.ENODATA if not name_s.startswith(XATTR_PREFIX) else errno.EPERM)

    # -- filesystem ------------------------------------------------------------------------------------------------

    @fuse_errors
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 38  # object storage: report 1 PiB, as s3fs/rclone do
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    @fuse_errors
    async def forget(self, inode_list):
        # the kernel drops `n` of its lookups of `ino`; at zero it no longer knows the number (it sends
        # no request for it again until a lookup hands it out anew): its alias and cache hint can go
        with self._ino_lock:
            for ino, n in inode_list:
                left = self.nlookup.get(ino, 0) - n
                if left > 0:
                    self.nlookup[ino] = left
                    continue
                self.nlookup.pop(ino, None)
                self.alias.pop(ino, None)
                self.last_identity.pop(ino, None)


def _errno(code: int, message: str):
    return OSError(code, message)
