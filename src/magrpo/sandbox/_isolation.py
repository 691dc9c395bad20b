"""Kernel-level isolation used by the sandbox child (stdlib + ctypes only).

This file is loaded by ``_child.py`` inside the freshly started sandbox
interpreter, *before* any untrusted code runs, so it must not import magrpo
(the interpreter is started with ``-I``; importing the package could pull in
torch).  Everything here is Linux specific; callers fall back to weaker tiers
when a call fails.
"""

from __future__ import annotations

import ctypes
import os
import stat

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24

PR_SET_PDEATHSIG, PR_SET_SECUREBITS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 28, 36, 38
# SECBIT_NOROOT | NO_SETUID_FIXUP | KEEP_CAPS_LOCKED, each with its lock bit.
_SECUREBITS_LOCKDOWN = 0x2F

# Per-mount flags that must be kept on a bind remount (they may be locked).
_OPT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def map_self_to_root(uid: int, gid: int) -> None:
    """In a fresh user namespace, become uid/gid 0 mapped onto the outer ids."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _mountinfo() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) for every mount visible to this process."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # undo \040-style escapes
            flags = 0
            for opt in fields[5].split(","):
                flags |= _OPT_FLAGS.get(opt, 0)
            out.append((point, flags))
    return out


def _blocked_ancestor(path: str) -> str | None:
    """First ancestor of ``path`` that an unrelated uid cannot traverse."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:i]) or os.sep
        try:
            mode = os.stat(prefix).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return prefix
    return None


def expose_paths(needed: list[str]) -> None:
    """Make ``needed`` directories reachable for an unprivileged uid.

    An interpreter installed under e.g. ``/root`` (mode 0700) would be unusable
    after dropping to the sandbox uid.  Inside our private mount namespace each
    such blocking ancestor is covered by an empty tmpfs (which also hides the
    rest of that home directory) and only the needed directories are
    bind-mounted back in.
    """
    masks: dict[str, list[str]] = {}
    for d in needed:
        anc = _blocked_ancestor(d)
        if anc and os.path.isdir(d):
            masks.setdefault(anc, []).append(os.path.abspath(d))
    for anc in sorted(masks, key=len):
        fds = [(d, os.open(d, os.O_PATH | os.O_DIRECTORY)) for d in sorted(set(masks[anc]))]
        _mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
        for d, fd in fds:
            os.makedirs(d, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", d, None, MS_BIND | MS_REC)
            os.close(fd)


def read_only_root(writable: str) -> list[str]:
    """Remount every mount read-only except a bind of ``writable``.

    Returns the mount points that could not be made read-only (reported to the
    parent, which warns).
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount(writable, writable, None, MS_BIND | MS_REC)
    failed = []
    for point, flags in _mountinfo():
        if point == writable:
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            failed.append(point)
    return failed


def mount_proc() -> None:
    """Fresh /proc for the new pid namespace: host processes become invisible."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def drop_to_uid(uid: int, gid: int) -> None:
    """Irreversibly become an unprivileged uid with no capabilities."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def drop_capabilities() -> None:
    """Clear all capabilities (used when we are root of a user namespace only)."""
    prctl(PR_SET_SECUREBITS, _SECUREBITS_LOCKDOWN)  # exec as uid 0 must not regain caps

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    hdr, data = Header(0x20080522, 0), (Data * 2)()
    _check(_libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")


def no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries (su, sudo) cannot raise privileges
