"""Private, all-or-nothing outputs: directories and files readable by the owner only, built under a
temporary name next to the destination and renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmclone import interrupts
from llmclone.errors import UserError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@contextmanager
def private_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# The file that marks a directory as an earlier output of each kind: --force replaces such a directory (or
# an empty one) and nothing else, so a mistyped --out never deletes an export, a home or a source tree.
MARKS = {"dataset": "stats.json", "clone": "clone.json", "export": "clone.json", "report": "report.json",
         "memory": "memory.json"}


def check_replaceable(dest: Path, force: bool, what: str) -> None:
    """Refuse, in one sentence, a `dest` that holds something other than an earlier `what` (or anything,
    without `force`)."""
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir():
        raise UserError(f"{dest} is a file, not a {what} directory; choose a directory for the {what}.")
    if not any(dest.iterdir()):
        return
    if not force:
        raise UserError(f"{dest} already exists; choose another {what} directory or pass --force to replace it.")
    mark = MARKS.get(what)
    if mark is not None and not (dest / mark).is_file():
        raise UserError(f"{dest} is not a {what} directory (it has no {mark}); --force replaces only an earlier "
                        f"{what}: choose another directory.")


@contextmanager
def atomic_dir(dest: str | Path, force: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a private temporary directory that becomes `dest` only if the block succeeds.

    An existing non-empty `dest` is kept unless `force`, and with it only if it is an earlier `what`
    (`check_replaceable`); it is replaced only at the end, so a failed run never loses the previous result.
    """
    dest = Path(dest).expanduser().absolute()
    check_replaceable(dest, force, what)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with private_umask():
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as err:
        raise UserError(f"cannot create {dest} ({err.strerror}); choose a writable place.") from None
    try:
        with private_umask():
            yield tmp
        interrupts.check()  # a stop asked for while the block ran leaves no result, even if its signal was lost
        os.chmod(tmp, PRIVATE_DIR)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    with private_umask():
        path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.chmod(path, PRIVATE_FILE)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
