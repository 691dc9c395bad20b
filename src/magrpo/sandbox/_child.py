"""Sandbox child process: isolate, load the program once, fork one process per test.

Started by ``runner.py`` as ``python -I -B -u _child.py <run-marker>`` with the
job as JSON on stdin.  Process tree (namespace tiers)::

    supervisor  (trusted; host pid namespace; never runs untrusted code)
      └─ loader  (pid 1 of a new pid namespace; loads the program, then untrusted)
           └─ one forked process per test

Only cheap stdlib modules are imported (no re, json, enum) because every
millisecond here is paid once per graded program.  Each test
reports on a dedicated pipe with a per-test random token; anything else the
program writes (stdout, fake report lines) earns nothing.

A test is timed by the CPU its processes spend (read from /proc while it runs, from the
loader's rusage of its reaped children after), with a wall-clock backstop for a test that
blocks or sleeps; the whole program's limits are the parent's (runner.py).
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` would import enum (milliseconds per program)
import binascii
import builtins
import marshal
import os
import resource
import select
import sys
import time

_EFBIG = 27
_MAX_MSG = 1000  # bytes of message per report: keeps each report line < PIPE_BUF (atomic write)


_SIGNAL_NAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")}


def _load(name: str):
    # Loaded by path: -I keeps this directory off sys.path, which we want for the program.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    module = type(sys)(f"_magrpo_sandbox{name}")
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)
    return module


def _ctl(fd: int, msg: dict) -> None:
    """A control line for the parent (read with ast.literal_eval; only trusted code writes here)."""
    os.write(fd, (repr(msg) + "\n").encode())


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # a hostile __str__ must not break reporting
        text = "<unprintable>"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _line(token: str, status: str, reason: str, message: str, calls: int = 0) -> bytes:
    msg = binascii.b2a_base64(message.encode("utf-8", "replace")[:_MAX_MSG], newline=False).decode()
    return f"{token} {status} {reason or '-'} {calls} {msg}\n".encode()


def _plain_checker():
    """``is_plain(value)``: the value is made only of plain types (exactly int, float, complex, str,
    bytes, bool, None, or list/tuple/dict/set/frozenset of such), so ``==``, ``in``, ``abs`` and
    truthiness behave as the test means them; an object with its own ``__eq__`` or ``__bool__``
    (or a subclass of a plain type) is not. Built before the program runs, from pristine builtins."""
    type_, all_, dict_items = type, all, dict.items
    scalars = frozenset({int, float, complex, str, bytes, bool, type(None)})
    sequences = frozenset({list, tuple, set, frozenset})

    def is_plain(value, depth=0) -> bool:
        kind = type_(value)
        if kind in scalars:
            return True
        if depth > 50:  # deep or cyclic: not a plain answer
            return False
        if kind in sequences:
            return all_(is_plain(v, depth + 1) for v in value)
        if kind is dict:
            return all_(is_plain(k, depth + 1) and is_plain(v, depth + 1) for k, v in dict_items(value))
        return False

    return is_plain


def _set_limits(lim: dict, cap_processes: bool) -> None:
    def setr(which: int, value: int) -> None:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            soft, hard = resource.getrlimit(which)
            resource.setrlimit(which, (min(value, hard) if hard != resource.RLIM_INFINITY else value, hard))

    setr(resource.RLIMIT_AS, lim["memory_bytes"])
    # A backstop only (the program's CPU is measured as a whole by the parent, each test's by the
    # loader): no one process may spend more than the whole program's CPU time.
    cpu = int(lim["cpu_time_s"]) + 1
    try:  # soft < hard: SIGXCPU (classified as "cpu") arrives before the kernel's SIGKILL
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    except (ValueError, OSError):
        setr(resource.RLIMIT_CPU, cpu)
    setr(resource.RLIMIT_FSIZE, lim["file_size_bytes"])
    setr(resource.RLIMIT_NOFILE, lim["open_files"])
    setr(resource.RLIMIT_CORE, 0)
    if cap_processes:
        setr(resource.RLIMIT_NPROC, lim["processes"])


def _block_sockets() -> None:
    """Fallback network block (no network namespace): refuse sockets via an audit hook.

    Python-level only: a program that execs an external binary bypasses it.
    """
    blocked = {
        "socket.__new__",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
    }

    def hook(event: str, args: tuple, _blocked=blocked) -> None:
        if event in _blocked:
            raise PermissionError(1, "network access is disabled in the sandbox")

    sys.addaudithook(hook)


def _watcher(tree_cpu_s):
    """``watch(pid, cpu_limit, wall_limit) -> (wait status or None, "cpu" | "wall" | "")``: wait
    for test process ``pid`` to end while its processes (it and its descendants, this process's
    other children being none: the loader sweeps between tests) spend less than ``cpu_limit``
    seconds of CPU and ``wall_limit`` seconds pass. Built before the program loads, from the
    functions it will use."""
    pidfd_open, select_, waitpid = getattr(os, "pidfd_open", None), select.select, os.waitpid
    monotonic, sleep = time.monotonic, time.sleep
    readlink, close, cores, WNOHANG = os.readlink, os.close, max(1, os.cpu_count() or 1), os.WNOHANG

    def watch(pid: int, cpu_limit: float, wall_limit: float) -> tuple[int | None, str]:
        me = int(readlink("/proc/self"))  # this process as its /proc numbers it (pid 1 in its own namespace)
        start = checked = monotonic()
        used = 0.0
        try:
            pfd = pidfd_open(pid) if pidfd_open is not None else None
        except OSError:
            pfd = None
        try:
            while True:
                now = monotonic()
                if now - start >= wall_limit:
                    return None, "wall"
                if used + (now - checked) * cores >= cpu_limit:  # it may have reached the limit: measure
                    used, checked = tree_cpu_s(me, include_root=False), now
                    if used >= cpu_limit:
                        return None, "cpu"
                # the earliest the limit can be reached, with every core busy; at least 10 ms apart
                pause = min(start + wall_limit, checked + max(0.01, (cpu_limit - used) / cores)) - now
                if pfd is not None:
                    if select_([pfd], [], [], max(0.0, pause))[0]:
                        return waitpid(pid, 0)[1], ""
                else:
                    done, status = waitpid(pid, WNOHANG)
                    if done:
                        return status, ""
                    sleep(min(max(0.0, pause), 0.02))
        finally:
            if pfd is not None:
                close(pfd)

    return watch


def _classify_exit(status: int, lim: dict) -> tuple[str, str, str] | None:
    """(status, reason, message) for a test process that died without reporting."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout", "cpu", f"a process used more than the program's {lim['cpu_time_s']} s of CPU time"
        if sig == signal.SIGXFSZ:
            return "killed", "file_size", f"file size limit exceeded ({lim['file_size_bytes']} bytes)"
        return "error", "", f"test process died from signal {_SIGNAL_NAMES.get(sig, sig)}"
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return "error", "", f"test process exited with status {code}"
    return None  # exit 0: it reported (or chose not to; the parent treats that as an error)


def _run_program(job: dict, res_fd: int, sweep_namespace: bool, proctree) -> None:
    """Load the program, then run each test in its own forked process.  Never returns."""
    # Everything the harness needs is bound here, before untrusted code can patch modules.
    fork, write, _exit, getpid, kill, killpg = os.fork, os.write, os._exit, os.getpid, os.kill, os.killpg
    setpgid, waitpid, settrace, setprofile = os.setpgid, os.waitpid, sys.settrace, sys.setprofile
    exec_, compile_, AssertionError_, MemoryError_, OSError_ = exec, compile, AssertionError, MemoryError, OSError
    stdout, stderr = sys.stdout, sys.stderr
    lim, tests, tokens, entry = job["limits"], job["tests"], job["tokens"], job["entry_point"]
    strict, counted = job.get("strict_results", False), job.get("count_calls")
    is_plain, callable_, type_ = _plain_checker(), callable, type
    watch, descendants, monotonic = _watcher(proctree.tree_cpu_s), proctree.descendants, time.monotonic
    getrusage, RUSAGE_CHILDREN, readlink = resource.getrusage, resource.RUSAGE_CHILDREN, os.readlink

    def children_cpu() -> float:
        usage = getrusage(RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def type_name(value) -> str:
        try:
            return str(type_(value).__name__)
        except BaseException:
            return "<unnamed>"

    def checked(func, name):
        """A function as the tests see it: a result that is not a plain value fails the test."""

        def call(*args, **kwargs):
            result = func(*args, **kwargs)
            if not is_plain(result):
                raise AssertionError_(
                    f"{name} returned a {type_name(result)} object; only plain values (numbers, strings, bytes, "
                    "None, and lists/tuples/dicts/sets of them) are compared"
                )
            return result

        return call

    def counting(func, box):
        """``func`` counting in ``box[0]`` the calls that returned (a call that raises did no work
        for the caller, so a ``try: return aux() except: ...`` fallback around a broken helper
        does not count as using it)."""

        def call(*args, **kwargs):
            result = func(*args, **kwargs)
            box[0] += 1
            return result

        return call

    clean_builtins = dict(builtins.__dict__)
    builtin_names = frozenset(clean_builtins)
    loader_pid = getpid()

    def flush() -> None:
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except BaseException:
                pass

    def exc_report(exc: BaseException) -> tuple[str, str, str]:
        if isinstance(exc, MemoryError_):
            return "killed", "memory", f"memory limit exceeded ({lim['memory_bytes']} bytes of address space)"
        if isinstance(exc, OSError_) and exc.errno == _EFBIG:  # Python ignores SIGXFSZ, so RLIMIT_FSIZE shows as EFBIG
            return "killed", "file_size", f"file size limit exceeded ({lim['file_size_bytes']} bytes)"
        if isinstance(exc, AssertionError_):
            try:
                return "failed", "", str(exc)
            except BaseException:
                return "failed", "", "<unprintable>"
        return "error", "", _describe(exc)

    # The program gets its own module, registered as __main__ so that it cannot
    # reach the harness through sys.modules["__main__"].
    module = type(sys)("__sandbox_program__")
    sys.modules["__main__"] = sys.modules["__sandbox_program__"] = module
    ns = module.__dict__
    try:
        exec_(compile_(job["code"], "<program>", "exec", dont_inherit=True), ns)
        if entry and entry not in ns:
            raise NameError(f"entry point {entry!r} is not defined by the program")
        setup = None
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit, anything at import time
        setup = exc_report(exc)
        if setup[0] == "failed":
            setup = ("error", "", _describe(exc))
        del exc
    settrace(None)  # C calls: no Python-level hook of the program runs before these take effect
    setprofile(None)
    if getpid() != loader_pid:  # a process the program forked while loading
        _exit(0)
    if setup is not None:
        flush()
        write(res_fd, _line(job["setup_token"], "setup", setup[1], setup[2]))
        _exit(0)

    def sweep(pid: int) -> None:
        if sweep_namespace:  # we are pid 1 of our own namespace: kill(-1) reaches only the program's processes
            try:
                kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while True:
                try:
                    waitpid(-1, 0)
                except ChildProcessError:
                    return
        else:
            try:
                killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                waitpid(pid, 0)
            except ChildProcessError:
                pass
            # a process that left the test's group came to us (a child subreaper): kill and reap it
            for _ in range(100):
                left = descendants(int(readlink("/proc/self")))
                for stray in left:
                    try:
                        kill(stray, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                try:
                    while waitpid(-1, os.WNOHANG)[0]:
                        pass
                except ChildProcessError:
                    return
                if not left:
                    return
                time.sleep(0.01)

    function_type = type(_plain_checker)
    graded = (
        [entry]
        if entry
        else [
            k
            for k, v in ns.items()
            if type_(v) is function_type and v.__module__ == module.__name__ and k not in builtin_names
        ]
    )
    write(res_fd, _line(job["setup_token"], "loaded", "", ""))
    if sweep_namespace:
        sweep(0)  # nothing the program started while loading survives into the tests
    cpu_limit, wall_limit = lim["test_cpu_time_s"], lim["test_timeout_s"]
    for i, (source, token) in enumerate(zip(tests, tokens)):
        spent_before, started = children_cpu(), monotonic()
        pid = fork()
        if pid == 0:
            me = getpid()
            try:
                setpgid(0, 0)
            except OSError:
                pass
            settrace(None)
            setprofile(None)
            # Fresh globals: program names (minus ones shadowing builtins) over pristine builtins,
            # so patching builtins or the program's own globals cannot change the test's meaning.
            glb = {k: v for k, v in ns.items() if k not in builtin_names or k == entry}
            glb["__builtins__"] = dict(clean_builtins)
            glb["__name__"] = "__sandbox_test__"
            if strict:  # the functions the tests call: the entry point, or every function the program defines
                for name in graded:
                    glb[name] = checked(ns[name], name)
            if entry:
                glb["candidate"] = glb[entry]
            calls = [0]
            if counted and callable_(ns.get(counted)):
                # in the program's own globals: the entry point's lookups of this name reach the counter
                ns[counted] = counting(ns[counted], calls)
            try:
                exec_(compile_(source, f"<test {i}>", "exec", dont_inherit=True), glb)
                result = ("passed", "", "")
            except BaseException as exc:
                result = exc_report(exc)
                del exc
            if getpid() != me:
                _exit(0)
            flush()
            write(res_fd, _line(token, result[0], result[1], result[2], calls[0]))
            _exit(0)
        status, limit = watch(pid, cpu_limit, wall_limit)
        sweep(pid)  # every process of the test reaped: their CPU is in our children's rusage
        cpu, wall = children_cpu() - spent_before, monotonic() - started
        if limit == "cpu":
            write(res_fd, _line(token, "timeout", "cpu", f"test used more than {cpu_limit} s of CPU time"))
        elif limit == "wall":
            message = f"test exceeded {wall_limit} s wall clock, using {cpu:.2f} s of CPU time (it blocked or slept)"
            write(res_fd, _line(token, "timeout", "wall", message))
        else:
            verdict = _classify_exit(status, lim)
            if verdict is not None:
                write(res_fd, _line(token, *verdict))
        write(res_fd, _line(token, "usage", "", f"{cpu:.3f} {wall:.3f}"))
    flush()
    _exit(0)


def _supervise(job: dict) -> None:
    res_fd, ctl_fd = job["res_fd"], job["ctl_fd"]
    lim, workdir, want = job["limits"], job["workdir"], job["isolation"]
    iso, proctree = _load("_isolation"), _load("_proctree")
    notes: list[str] = []
    euid, egid = os.geteuid(), os.getegid()
    tier = "none"
    ns_flags = iso.CLONE_NEWNS | iso.CLONE_NEWPID | iso.CLONE_NEWIPC | iso.CLONE_NEWUTS
    if not lim["network"]:
        ns_flags |= iso.CLONE_NEWNET
    if want == "auto" and euid == 0:
        try:
            iso.unshare(ns_flags)
            tier = "namespaces"
        except OSError as exc:
            notes.append(f"root namespaces unavailable ({exc})")
    if tier == "none" and want in ("auto", "userns"):
        try:
            iso.unshare(iso.CLONE_NEWUSER | ns_flags)
            iso.map_self_to_root(euid, egid)
            tier = "userns"
        except OSError as exc:
            notes.append(f"user namespaces unavailable ({exc})")
    # The sandbox uid: unique per live run (derived from our host pid) so that
    # RLIMIT_NPROC and kill(-1) only ever see this run's processes.
    run_uid = 1_000_000 + os.getpid() if euid == 0 and tier != "userns" else euid
    if run_uid != euid:
        os.chown(workdir, run_uid, run_uid)
    readonly = False
    if tier != "none":
        try:
            iso._mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
            if tier == "namespaces":
                iso.expose_paths(job["needed_paths"])
            failed = iso.read_only_root(workdir)
            readonly = not any(p in ("/", "/tmp", "/dev/shm") for p in failed)
            if failed:
                notes.append("could not make read-only: " + ", ".join(failed))
        except OSError as exc:
            notes.append(f"read-only filesystem setup failed ({exc})")
    go_r, go_w = os.pipe()  # the loader mounts its own /proc (which we see too) only after we read ours
    pid = os.fork() if tier != "none" else 0
    if pid:
        os.close(go_r)
        ns_ino = os.stat(f"/proc/{pid}/ns/pid").st_ino
        os.close(go_w)
        msg = {
            "tier": tier,
            "loader": pid,
            "uid": run_uid,
            "pidns": ns_ino,
            "readonly": readonly,
            "net": tier != "none" and not lim["network"],
            "notes": notes,
        }
        _ctl(ctl_fd, msg)
        os.close(res_fd)
        try:
            status = os.waitpid(pid, 0)[1]  # returns once the whole pid namespace is gone
        except ChildProcessError:
            status = 0
        # How the loader ended, from a process the program never controlled (e.g. SIGXCPU at load).
        _ctl(ctl_fd, {"loader_exit": os.waitstatus_to_exitcode(status)})
        os._exit(0)
    # Loader: still trusted until the program is exec'd below.
    if tier == "none":
        try:  # a test's orphans come to the loader, which measures and sweeps them (pid 1 does elsewhere)
            iso.prctl(iso.PR_SET_CHILD_SUBREAPER, 1)
        except OSError:
            notes.append("no child subreaper: a test's orphaned processes are neither timed nor swept by the loader")
        msg = {
            "tier": tier,
            "loader": os.getpid(),
            "uid": run_uid,
            "pidns": 0,
            "readonly": False,
            "net": False,
            "notes": notes,
        }
        _ctl(ctl_fd, msg)
    else:
        iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.close(go_w)
        os.read(go_r, 1)  # EOF once the supervisor has read our namespace id
        try:
            iso.mount_proc()
        except OSError:
            pass  # host /proc stays (read-only); pid namespace still hides nothing from it
    os.close(ctl_fd)
    os.close(go_r)
    if tier == "none":
        os.close(go_w)
    os.chdir(workdir)
    _set_limits(lim, cap_processes=tier != "none" or run_uid != euid)
    if run_uid != euid:
        iso.drop_to_uid(run_uid, run_uid)
    elif tier == "userns":
        iso.drop_capabilities()
    iso.no_new_privs()
    if tier == "none" and not lim["network"]:
        _block_sockets()
    sys.path.extend(job["site_paths"])  # started with -S: site-packages without running .pth hooks
    _run_program(job, res_fd, sweep_namespace=tier != "none", proctree=proctree)


def main() -> None:
    data = b""
    while chunk := os.read(0, 1 << 20):
        data += chunk
    fd = os.open(os.devnull, os.O_RDONLY)  # stdin: nothing to read for the program
    os.dup2(fd, 0)
    os.close(fd)
    _supervise(marshal.loads(data))


if __name__ == "__main__":
    main()
