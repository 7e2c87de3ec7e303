"""One job per run directory: <run>/.lock names the holder (host, PID, SLURM job, start time) and is refreshed
while it runs, so a second job on the same output_dir stops before it writes anything.

A lock is stale, and taken over with a message, when its holder is gone: the same host and a dead PID, the same
SLURM job (a requeued job continues its own run), or no refresh for `STALE_S` (a dead node on a shared
filesystem). A kill -9 leaves the lock behind; the next start on that host takes it over.

Readers (export, chat, evaluate, publish) hold the run shared: each writes <run>/.lock.reader-<host>-<pid> for
as long as it runs. A training job does not start on a run while a live reader holds it (overwrite=true would
replace the adapter under an export that is merging it), and a reader does not start while a job writes it.

The folders export derives (merged/, gguf/) have a lock of their own, <run>/.derived.lock (`derived`): export holds
it alone while it writes them, publish shared while it uploads one, so a second export never writes into the first
one's merged.partial and no folder is replaced under an upload.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

from finetune.config import ConfigError, UserError

LOCK = ".lock"
READER = ".lock.reader-"  # + host-pid: one file per reading process
DERIVED = ".derived.lock"  # flock(2)ed: the kernel lets go when its process ends, even after kill -9
_held: list = []  # the derived locks' open files, held until this process ends
CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only mount, another user's folder
REFRESH_S = 20  # the holder touches the lock this often
STALE_S = 120  # a lock nobody touched for this long belongs to a dead host


class RunInUse(UserError):
    """A reader and a training job on one run at once: the one starting second stops, naming the other."""


def me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def holder_gone(held: dict, age_s: float) -> str | None:
    """Why the holder of a lock is gone, or None while it may still run."""
    if age_s > STALE_S:
        return f"not refreshed for {age_s:.0f} s"
    if held.get("job") and held.get("job") == os.environ.get("SLURM_JOB_ID"):
        return f"SLURM job {held['job']} was requeued"
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except ProcessLookupError:
            return f"process {held.get('pid')} is gone"
        except (PermissionError, ValueError):
            return None
    return None


def acquire(run_dir: Path) -> str | None:
    """Hold <run>/.lock for this process (rank 0); a note when a stale lock was taken over. ConfigError when
    another job holds it, RunInUse while a reader holds the run."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    note = None
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            held, age = json.loads(path.read_text() or "{}"), time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            held, age = {}, STALE_S + 1  # half-written by a killed process
        why = holder_gone(held, age)
        if why is None and held.get("pid") != os.getpid():
            raise ConfigError(
                [
                    f"output_dir={run_dir} is in use by another job (host {held.get('host')}, PID "
                    f"{held.get('pid')}, started {held.get('started')}): wait for it to end, or "
                    "choose another output_dir="
                ]
            ) from None
        note = f"run lock: took over {path} from host {held.get('host')} PID {held.get('pid')} ({why})" if why else None
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(me()))
    if reader := live_reader(Path(run_dir)):
        release(run_dir)
        raise RunInUse(
            f"output_dir={run_dir} is being read by {reader.get('command', 'another process')} (host "
            f"{reader.get('host')}, PID {reader.get('pid')}, started {reader.get('started')}): wait for "
            "it to end, then start again"
        )
    atexit.register(release, run_dir)
    threading.Thread(target=refresh, args=(path, os.getpid()), daemon=True).start()
    return note


def share(run_dir: Path, command: str) -> None:
    """Hold the run as a reader until this process ends. RunInUse when a training job writes it now. A run this
    process cannot write (a read-only mount, another user's folder) is read without a reader file: no training
    job of ours can replace what is in it either."""
    path = Path(run_dir) / f"{READER}{socket.gethostname()}-{os.getpid()}"
    tmp = path.with_name(".tmp" + path.name)  # written aside and renamed: a writer never reads half of it
    try:
        tmp.write_text(json.dumps({**me(), "command": command}))
    except OSError as exc:
        if exc.errno not in CANNOT_WRITE:
            raise
        return refuse_if_written(Path(run_dir), command)
    tmp.replace(path)
    atexit.register(path.unlink, missing_ok=True)
    try:
        refuse_if_written(Path(run_dir), command)
    except RunInUse:
        path.unlink(missing_ok=True)
        raise
    threading.Thread(target=refresh, args=(path, os.getpid()), daemon=True).start()


def refuse_if_written(run_dir: Path, command: str) -> None:
    if writer := live_holder(run_dir / LOCK):
        raise RunInUse(
            f"run={run_dir} is being written by a training job (host {writer.get('host')}, PID "
            f"{writer.get('pid')}, started {writer.get('started')}): wait for it to end, then run "
            f"{command} again"
        )


def live_reader(run_dir: Path) -> dict | None:
    """A reader of the run other than this process that is still running; files of gone readers are removed."""
    for path in sorted(run_dir.glob(READER + "*")):
        if held := live_holder(path):
            return held
        if path.is_file() and not held_by_me(path):
            path.unlink(missing_ok=True)
    return None


def live_holder(path: Path) -> dict | None:
    """What a lock file names as its holder, while that holder (another process) may still run."""
    try:
        held, age = json.loads(path.read_text() or "{}"), time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    mine = held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()
    return None if mine or holder_gone(held, age) else held


def held_by_me(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def refresh(path: Path, pid: int) -> None:
    """Touch the lock every REFRESH_S while this process holds it."""
    while True:
        time.sleep(REFRESH_S)
        try:
            if json.loads(path.read_text()).get("pid") != pid:
                return
            os.utime(path)
        except (OSError, ValueError):
            return


def release(run_dir: Path) -> None:
    path = Path(run_dir) / LOCK
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def derived(run_dir: Path, command: str, write: bool) -> None:
    """Hold <run>/.derived.lock, alone (`write`: export) or shared (publish); RunInUse naming the holder when
    another process holds it the other way."""
    import fcntl

    try:
        fh = (Path(run_dir) / DERIVED).open("a+")
    except OSError as exc:  # a run this process cannot write: no export writes merged/ or gguf/ there either
        if write or exc.errno not in CANNOT_WRITE:
            raise
        return
    try:
        fcntl.flock(fh, (fcntl.LOCK_EX if write else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunInUse(
            f"run={run_dir}: merged/ and gguf/ are being {derived_holder(fh)} now: wait for it to end, then run "
            f"{command} again"
        ) from None
    if write:
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({**me(), "command": command}))
        fh.flush()
    _held.append(fh)


def derived_holder(fh) -> str:
    """Who holds the derived lock that `fh` could not take: an export (alone; the file names it) or publishes
    (shared: a shared lock is then still free). Closes `fh`."""
    import fcntl

    try:
        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return "published by another command"
    except BlockingIOError:
        fh.seek(0)
        try:
            held = json.loads(fh.read() or "{}")
        except ValueError:
            held = {}
        return f"written by {held.get('command', 'export.py')} (host {held.get('host')}, PID {held.get('pid')})"
    finally:
        fh.close()
