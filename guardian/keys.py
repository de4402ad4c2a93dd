"""Bot keys and secret files: keys generated with the OS's CSPRNG, each secret in a file of its own (mode
0600, in a directory of mode 0700, never overwritten), and the errors `guardian init` and `guardian keys`
exit with (sysexits codes).

A secret is printed once by the command that made it and is never put in a message, a log line or a
`repr`; an error names the file or the key, never a value.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from guardian.config import CLIENT_PERMISSIONS
from guardian.errors import GuardianError
from guardian.secret import ApiSecret

# sysexits(3): what the commands exit with when they cannot do what was asked.
EX_USAGE: Final = 64  # the command was used wrongly: a missing option, an unknown bot or account
EX_DATAERR: Final = 65  # the input is wrong: a key that is not base64, a bot that already exists
EX_NOINPUT: Final = 66  # an input file does not exist or cannot be read
EX_CANTCREAT: Final = 73  # a file to be written exists already: nothing is overwritten
EX_TEMPFAIL: Final = 75  # another edit of the configuration held it too long: try again
EDIT_LOCK_WAIT_S: Final = 30.0
EDIT_LOCK_POLL_S: Final = 0.05
SECRET_FILE_MODE: Final = 0o600
SECRETS_DIR_MODE: Final = 0o700
BOT_SECRET_BYTES: Final = 64  # as long as Kraken's own secrets
KEY_ID_BYTES: Final = 6  # the random part of a generated api_key: 12 hex digits
DEFAULT_PERMISSIONS: Final = ("read", "trade")


class SetupError(GuardianError):
    """`guardian init` or `guardian keys` could not do what was asked; `exit_code` is the sysexits code."""

    exit_code: int = EX_USAGE


class UsageError(SetupError):
    exit_code = EX_USAGE


class InputError(SetupError):
    exit_code = EX_DATAERR


class NoInputError(SetupError):
    exit_code = EX_NOINPUT


class Busy(SetupError):
    exit_code = EX_TEMPFAIL


class CannotCreate(SetupError):
    """A file that would be written exists: it is named, and left as it is."""

    exit_code = EX_CANTCREAT


@dataclass(frozen=True, slots=True)
class NewKey:
    """A bot key just made: its secret is shown once (`reveal()`), then lives only in `secret_file`."""

    bot: str
    api_key: str = field(repr=False)
    api_secret: ApiSecret
    secret_file: Path = field(repr=False)

    @property
    def reference(self) -> str:
        """How the configuration names the secret file: its bare name, looked up in the credentials
        directory ($CREDENTIALS_DIRECTORY, the way systemd and Docker hand secrets over)."""
        return self.secret_file.name


def new_api_key(bot: str) -> str:
    """A fresh api_key for `bot`: its name and 12 random hex digits (printable, no spaces, not secret)."""
    return f"{bot}-{secrets.token_hex(KEY_ID_BYTES)}"


def new_api_secret() -> ApiSecret:
    """A fresh bot secret: base64 of 64 bytes from the OS's CSPRNG, as Kraken's secrets look."""
    return ApiSecret(base64.b64encode(secrets.token_bytes(BOT_SECRET_BYTES)).decode(), name="new bot secret")


def secret_file_name(api_key: str) -> str:
    return f"{api_key}_api_secret"


def parse_permissions(text: str) -> tuple[str, ...]:
    """`read,trade` as a tuple, each checked against what a bot may be given."""
    allowed = [p.value for p in CLIENT_PERMISSIONS]
    found = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not found or any(p not in allowed for p in found):
        raise UsageError(f"--permissions must be a comma-separated list drawn from {', '.join(allowed)}")
    return found


# --- files -----------------------------------------------------------------------------------------------


def ensure_secrets_dir(directory: Path) -> None:
    """Create `directory` with mode 0700, or check that an existing one is closed to others."""
    try:
        directory.mkdir(mode=SECRETS_DIR_MODE, parents=True)
        os.chmod(directory, SECRETS_DIR_MODE)  # whatever the umask
    except FileExistsError:
        if not directory.is_dir():
            raise CannotCreate(f"{directory} exists and is not a directory") from None
        if stat.S_IMODE(directory.stat().st_mode) & 0o077:
            raise CannotCreate(
                f"{directory} is open to other users (mode {stat.S_IMODE(directory.stat().st_mode):04o}): "
                f"chmod 700 {directory}, or choose another directory"
            ) from None


def write_new_file(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path`, which must not exist (O_EXCL: never overwritten, even in a race)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise CannotCreate(f"{path} exists: guardian overwrites nothing; move it away first") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            fd = -1
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    finally:
        if fd != -1:
            os.close(fd)


def write_secret(directory: Path, name: str, value: str) -> Path:
    """A secret in a file of its own, mode 0600, in `directory` (mode 0700)."""
    ensure_secrets_dir(directory)
    path = directory / name
    write_new_file(path, value + "\n", SECRET_FILE_MODE)
    return path


def make_key(bot: str, directory: Path, taken: Iterable[str] = ()) -> NewKey:
    """A new key for `bot`, its secret written to `directory`; `taken`: api_keys already in use."""
    used = set(taken)
    api_key = new_api_key(bot)
    while api_key in used:  # 48 random bits: never in practice, but cheap to rule out
        api_key = new_api_key(bot)
    secret = new_api_secret()
    path = write_secret(directory, secret_file_name(api_key), secret.reveal())
    return NewKey(bot, api_key, secret, path)


class EditLock:
    """An exclusive lock on one configuration file for one edit, held from reading the file to replacing
    it: two `guardian keys` edits at once (two operators, a script's parallel runs) are made one after
    the other, the second on what the first wrote. Without it, the last to write wins, and a key whose
    secret was printed is missing from the file.

    `flock` on the file itself (advisory: every edit takes it; the daemon only reads). Each edit replaces
    the file with a new inode, so a lock won on an inode the path no longer names is let go and taken
    again on the file the path names now."""

    def __init__(
        self, path: Path, wait_s: float = EDIT_LOCK_WAIT_S, on_wait: Callable[[], None] | None = None
    ) -> None:
        """`on_wait` is called once if the lock is held by another edit (a person is told why nothing
        happens yet)."""
        self.path = path.resolve()
        self._fd: int | None = None
        deadline = time.monotonic() + wait_s
        while self._fd is None:
            fd = _open_for_lock(self.path)
            try:
                if not _try_lock(fd):
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    _lock_before(fd, deadline, self.path, wait_s)
                locked, named = os.fstat(fd), _stat(self.path)
            except BaseException:
                os.close(fd)
                raise
            if (locked.st_dev, locked.st_ino) == (named.st_dev, named.st_ino):
                self._fd = fd
            else:  # replaced by the edit that held it: lock the new file
                os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor lets go of the lock
            self._fd = None


def _open_for_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NoInputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:  # removed while this edit waited for the one before it
        raise NoInputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _lock_before(fd: int, deadline: float, path: Path, wait_s: float) -> None:
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            raise Busy(f"{path} is being edited by another guardian keys (waited {wait_s:g} s): try again")
        time.sleep(EDIT_LOCK_POLL_S)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def replace_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (a crash leaves the old file or the new one), keeping its mode
    and, where permitted, its owner. A symbolic link is followed: the file it points at is replaced."""
    path = path.resolve()
    info = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, stat.S_IMODE(info.st_mode))
        with contextlib.suppress(PermissionError):
            os.chown(temporary, info.st_uid, info.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
