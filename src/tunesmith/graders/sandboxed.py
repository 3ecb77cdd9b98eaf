"""The program a python grader runs in: ``python -I sandboxed.py`` (stdlib only, never imported).

Reads ``{"source", "sample", "item", "limits"}`` as JSON on stdin, then, before any of the
grader's code runs: limits its own CPU seconds, address space, file sizes and processes
(setrlimit), moves into the temporary folder it was started in, and installs an audit hook
(PEP 578) that refuses sockets, new processes, ctypes, reading files outside that folder and the
Python standard library, and any change to files outside that folder. Writes ``{"score": x}`` or
``{"error": "..."}`` as one JSON line on the stdout it was given; the grader's own prints go to
stderr, so they cannot forge the answer.

Why an audit hook and not seccomp or namespaces: neither is available to an unprivileged process
here (no libseccomp binding in the stdlib, ``unshare`` needs privileges this container lacks). An
audit hook sees every open, socket, exec and ctypes use Python makes; with ctypes refused, C code
is reachable only through modules the stdlib already ships, so the hook is what stands between
the grader and the server's files. It cannot be removed once installed.
"""

import json
import os
import resource
import sys
import sysconfig

# Modules that reach files or memory in C without an audit event the hook could check.
_FORBIDDEN_MODULES = (
    "ctypes",
    "_ctypes",
    "cffi",
    "_posixsubprocess",
    "_xxsubinterpreters",
    "_interpreters",
    "_sqlite3",
    "sqlite3",
    "_dbm",
    "_gdbm",
    "dbm",
    "readline",
)
_FORBIDDEN_EVENTS = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.symlink",  # a link inside the folder could point anywhere
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "os.startfile",
    "ctypes.",
    "resource.setrlimit",  # as root the grader could raise its own hard limits
    "resource.prlimit",
    "code.__new__",  # hand-made bytecode can read and write the interpreter's memory
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "sys.setprofile",
    "sys.settrace",
    "mmap.__new__",
    "pty.spawn",
    "webbrowser.open",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
    "imaplib.open",
    "poplib.connect",
    "telnetlib.Telnet.open",
)
# Events whose first argument is a path the grader changes: only inside its own folder.
_CHANGES = (
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.rmdir",
    "os.link",
    "os.truncate",
    "os.chmod",
    "os.chown",
    "os.utime",
    "os.chflags",
    "os.lchflags",
    "os.setxattr",
    "os.removexattr",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
    "shutil.copytree",
    "shutil.chown",
    "shutil.make_archive",
    "shutil.unpack_archive",
)
_LISTS = ("os.listdir", "os.scandir", "glob.glob", "os.listxattr", "os.getxattr")


def _limit(limits: dict) -> None:
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    disk = int(limits["file_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork even if the hook were bypassed (non-root)


def _hook(folder: str, readable: tuple[str, ...]):
    # Everything the hook uses is bound here, never looked up in a module at call time: the
    # grader can replace module attributes (os.path.realpath, os.getcwd), not these locals.
    import pathlib
    import posix
    import stat as stat_module

    getcwd, lstat, readlink, fsdecode, is_link = (
        posix.getcwd,
        posix.lstat,
        posix.readlink,
        os.fsdecode,
        stat_module.S_ISLNK,
    )
    path_types = (str, bytes, pathlib.PosixPath, pathlib.PurePosixPath)
    forbidden_modules, forbidden_events = _FORBIDDEN_MODULES, _FORBIDDEN_EVENTS
    changes, lists, write_flags = _CHANGES, _LISTS, os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    writable = (folder,)
    third_party = ("site-packages", "dist-packages")

    def resolve(path) -> str:
        """The real absolute path, symlinks followed, with the captured system calls."""
        if type(path) not in path_types:  # a PathLike of the grader's could name one path to the hook, another to open
            raise PermissionError(f"the grader names files by str or bytes, not {type(path).__name__}")
        text = fsdecode(str(path) if isinstance(path, pathlib.PurePath) else path)
        parts = (text if text.startswith("/") else getcwd() + "/" + text).split("/")
        real: list[str] = []
        for hops, part in enumerate(parts):
            if part in ("", "."):
                continue
            if part == "..":
                real = real[:-1]
                continue
            real.append(part)
            try:
                if hops < 200 and is_link(lstat("/" + "/".join(real)).st_mode):
                    target = fsdecode(readlink("/" + "/".join(real)))
                    real = resolve(target if target.startswith("/") else "/".join(["", *real[:-1], target]))[1:].split(
                        "/"
                    )
            except OSError:
                pass  # a path that does not exist yet resolves lexically
        return "/" + "/".join(p for p in real if p)

    def inside(path, roots: tuple[str, ...]) -> bool:
        if isinstance(path, int):
            return path in (0, 1, 2)  # the standard streams, never another descriptor
        real = resolve(path)
        if roots is not writable and not real.startswith(folder + "/") and any(t in real for t in third_party):
            return False
        return any(real == root or real.startswith(root + "/") for root in roots)

    def hook(event: str, args: tuple) -> None:
        if event == "import" and args[0].split(".")[0] in forbidden_modules:
            raise PermissionError(f"the grader may not import {args[0]}")
        if event.startswith(forbidden_events):
            raise PermissionError(f"the grader may not do this: {event}")
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            writes = any(c in (mode or "") for c in "wax+") or (flags or 0) & write_flags
            if not inside(path, writable if writes else readable):
                what = "write" if writes else "read"
                raise PermissionError(f"the grader may not {what} {path!r}: only its own temporary folder")
        elif event in changes or event in lists or event == "os.chdir":
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))] or ["."]
            roots = readable if event in lists else writable
            for path in paths:
                if not inside(path, roots):
                    raise PermissionError(f"the grader may not {event} {path!r}: only its own temporary folder")

    return hook


def _stdlib() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib")}
    return tuple(sorted(roots))


def main() -> None:
    request = json.loads(sys.stdin.read())
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the grader's prints go to stderr
    sys.stdout = sys.stderr
    folder = os.path.realpath(os.getcwd())
    _limit(request["limits"])
    stdlib = _stdlib()
    # Inside the stdlib folders, third-party packages (site-packages) stay out of reach.
    sys.path[:] = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p]
    sys.addaudithook(_hook(folder, (folder, *stdlib)))
    try:
        namespace = {"__name__": "grader"}
        exec(compile(request["source"], "grader.py", "exec"), namespace)
        score = namespace["grade"](request["sample"], request["item"])
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise TypeError(f"grade() must return a number, returned {type(score).__name__}")
        result = {"score": float(score)}
    except MemoryError:
        result = {"error": "MemoryError: the grader went over its memory limit"}
    except BaseException as error:  # the grader's failure is its score of 0, never the caller's
        result = {"error": f"{type(error).__name__}: {error}"[:2000]}
    try:
        answer.write(json.dumps(result, allow_nan=False) + "\n")
    except ValueError:  # a float the JSON cannot carry (nan)
        answer.write(json.dumps({"error": f"grade() returned {result.get('score')}"}) + "\n")
    answer.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
