#!/usr/bin/env python3
"""A FUSE file system that fails the way an SD card does, on command.

    faultfs.py BACKING_DIR MOUNT_POINT

Files live in BACKING_DIR, but what a program writes stays in this process's
memory until the program fsyncs the file: only then is it written to
BACKING_DIR. That is what makes a power cut possible: `cut` throws away
everything written since each file's last fsync, exactly what a disk with a
volatile write cache loses when the power goes. Metadata (create, rename,
link, unlink, mkdir) reaches BACKING_DIR at once: journaling file systems
make it durable in order, and the gateway fsyncs the directory anyway.

Commands, one per line on stdin; each is answered on stdout with `ok ...`
once it has taken effect (or `error ...`):

    full on|off      growing a file fails with ENOSPC, statfs reports 0 free
    eio on|off       every write and fsync fails with EIO
    readonly on|off  every change fails with EROFS (a card that wore out)
    delay MS         every write and every fsync first sleeps MS ms
    cut              drop every un-fsynced write (the power cut); unmount and
                     mount again afterwards so no kernel cache survives it
    status           `ok pending=<files> bytes=<bytes>`
    quit             unmount and exit (also on end of input)

The first line printed is `ready` once the file system is mounted.
"""

import errno
import os
import subprocess
import sys
import threading
import time

import mfusepy as fuse

BLOCK = 4096


class Pending:
    """A file's content as the program sees it, with what is not yet durable."""

    def __init__(self, durable: bytes):
        self.data = bytearray(durable)
        self.dirty = set()
        self.resized = False

    def write(self, offset: int, data: bytes):
        end = offset + len(data)
        if end > len(self.data):
            self.data.extend(b"\0" * (end - len(self.data)))
            self.resized = True
        self.data[offset:end] = data
        self.dirty.update(range(offset // BLOCK, (end - 1) // BLOCK + 1))

    def truncate(self, length: int):
        if length < len(self.data):
            del self.data[length:]
        else:
            self.data.extend(b"\0" * (length - len(self.data)))
        self.resized = True


class FaultFs(fuse.Operations):
    use_ns = True

    def __init__(self, backing: str):
        self.backing = os.path.realpath(backing)
        self.guard = threading.RLock()
        # Keyed by the backing file's inode, so hard links and renames of a
        # file with pending writes keep seeing the same content.
        self.pending = {}
        self.full = False
        self.eio = False
        self.readonly = False
        self.delay = 0.0

    # -- helpers ----------------------------------------------------------

    def real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def refuse_change(self):
        if self.readonly:
            raise fuse.FuseOSError(errno.EROFS)

    def slow(self):
        if self.delay:
            time.sleep(self.delay)

    def pending_for(self, fh: int) -> Pending:
        ino = os.fstat(fh).st_ino
        entry = self.pending.get(ino)
        if entry is None:
            size = os.fstat(fh).st_size
            entry = Pending(os.pread(fh, size, 0) if size else b"")
            self.pending[ino] = entry
        return entry

    def flush_pending(self, path: str, fh: int):
        ino = os.fstat(fh).st_ino
        entry = self.pending.get(ino)
        if entry is None:
            return
        writer = os.open(self.real(path), os.O_WRONLY)
        try:
            for block in sorted(entry.dirty):
                start = block * BLOCK
                chunk = entry.data[start : start + BLOCK]
                if chunk:
                    os.pwrite(writer, chunk, start)
            if entry.resized:
                os.ftruncate(writer, len(entry.data))
        finally:
            os.close(writer)
        del self.pending[ino]

    # -- control ----------------------------------------------------------

    def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error empty"
        name, args = words[0], words[1:]
        with self.guard:
            if name in ("full", "eio", "readonly") and args in (["on"], ["off"]):
                setattr(self, name, args[0] == "on")
            elif name == "delay" and len(args) == 1 and args[0].isdigit():
                self.delay = int(args[0]) / 1000.0
            elif name == "cut":
                self.pending.clear()
            elif name == "status":
                size = sum(len(entry.data) for entry in self.pending.values())
                return f"ok pending={len(self.pending)} bytes={size}"
            else:
                return f"error unknown command: {line.strip()}"
        return "ok " + line.strip()

    # -- file system ------------------------------------------------------

    def init(self, path):
        print("ready", flush=True)

    def getattr(self, path, fh=None):
        st = os.lstat(self.real(path))
        attrs = {
            key: getattr(st, key)
            for key in (
                "st_mode",
                "st_nlink",
                "st_uid",
                "st_gid",
                "st_size",
                "st_atime_ns",
                "st_mtime_ns",
                "st_ctime_ns",
            )
        }
        for key in ("st_atime", "st_mtime", "st_ctime"):
            attrs[key] = attrs.pop(key + "_ns")
        with self.guard:
            entry = self.pending.get(st.st_ino)
            if entry is not None:
                attrs["st_size"] = len(entry.data)
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))

    def statfs(self, path):
        sv = os.statvfs(self.real(path))
        stats = {
            key: getattr(sv, key)
            for key in (
                "f_bsize",
                "f_frsize",
                "f_blocks",
                "f_bfree",
                "f_bavail",
                "f_files",
                "f_ffree",
                "f_favail",
                "f_flag",
                "f_namemax",
            )
        }
        if self.full:
            stats["f_bfree"] = stats["f_bavail"] = 0
        return stats

    def access(self, path, amode):
        if not os.path.lexists(self.real(path)):
            raise fuse.FuseOSError(errno.ENOENT)
        if amode & os.W_OK and self.readonly:
            raise fuse.FuseOSError(errno.EROFS)
        return 0

    def open(self, path, flags):
        with self.guard:
            if flags & (os.O_WRONLY | os.O_RDWR):
                self.refuse_change()
            fh = os.open(self.real(path), flags & ~(os.O_TRUNC | os.O_APPEND | os.O_CREAT))
            if flags & os.O_TRUNC:
                self.pending_for(fh).truncate(0)
            return fh

    def create(self, path, mode, fi=None):
        with self.guard:
            self.refuse_change()
            return os.open(self.real(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        with self.guard:
            entry = self.pending.get(os.fstat(fh).st_ino)
            if entry is not None:
                return bytes(entry.data[offset : offset + size])
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self.slow()
        with self.guard:
            self.refuse_change()
            if self.eio:
                raise fuse.FuseOSError(errno.EIO)
            entry = self.pending_for(fh)
            if self.full and offset + len(data) > len(entry.data):
                raise fuse.FuseOSError(errno.ENOSPC)
            entry.write(offset, data)
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.guard:
            self.refuse_change()
            if self.eio:
                raise fuse.FuseOSError(errno.EIO)
            opened = fh if fh is not None else os.open(self.real(path), os.O_RDONLY)
            try:
                entry = self.pending_for(opened)
                if self.full and length > len(entry.data):
                    raise fuse.FuseOSError(errno.ENOSPC)
                entry.truncate(length)
            finally:
                if fh is None:
                    os.close(opened)
            return 0

    def fsync(self, path, datasync, fh):
        self.slow()
        with self.guard:
            if self.eio:
                raise fuse.FuseOSError(errno.EIO)
            if self.readonly and os.fstat(fh).st_ino in self.pending:
                raise fuse.FuseOSError(errno.EROFS)
            self.flush_pending(path, fh)
            return 0

    def fsyncdir(self, path, datasync, fh):
        if self.eio:
            raise fuse.FuseOSError(errno.EIO)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def unlink(self, path):
        with self.guard:
            self.refuse_change()
            real = self.real(path)
            st = os.lstat(real)
            os.unlink(real)
            if st.st_nlink <= 1:
                self.pending.pop(st.st_ino, None)
            return 0

    def rename(self, old, new):
        with self.guard:
            self.refuse_change()
            os.rename(self.real(old), self.real(new))
            return 0

    def link(self, target, source):
        with self.guard:
            self.refuse_change()
            os.link(self.real(source), self.real(target))
            return 0

    def mkdir(self, path, mode):
        self.refuse_change()
        os.mkdir(self.real(path), mode)
        return 0

    def rmdir(self, path):
        self.refuse_change()
        os.rmdir(self.real(path))
        return 0

    def chmod(self, path, mode):
        self.refuse_change()
        os.chmod(self.real(path), mode)
        return 0

    def chown(self, path, uid, gid):
        self.refuse_change()
        os.chown(self.real(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        self.refuse_change()
        os.utime(self.real(path), ns=times)
        return 0


def control(fs: FaultFs, mount: str):
    try:
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            print(fs.command(line), flush=True)
    finally:
        # Lazily: a killed program's last handles may still be closing.
        subprocess.run(["fusermount3", "-u", "-z", mount], check=False)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    backing, mount = sys.argv[1], sys.argv[2]
    fs = FaultFs(backing)
    threading.Thread(target=control, args=(fs, mount), daemon=True).start()
    fuse.FUSE(
        fs,
        mount,
        foreground=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        fsname="faultfs",
    )


if __name__ == "__main__":
    main()
