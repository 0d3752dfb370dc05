"""What is wrong with a path a file operation failed on, in a few words ("no such file", "afile is not a
directory"), for the one-line errors of the command and the store: never Python's ``[Errno 2] No such file
or directory: 'x'``."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["why_unusable"]

_REASONS = {
    errno.EISDIR: "is a directory, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "on a read-only file system",
    errno.ENAMETOOLONG: "name too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def why_unusable(exc: OSError, *, directory: bool = False, given: str | None = None) -> str:
    """Why ``exc.filename`` could not be used, ``directory``: when a directory was expected there. A path
    through a file (``afile/sub``, or ``mkdir`` of an existing file) names the file that is in the way,
    unless it is the path ``given`` (default: ``exc.filename``), which the line names already."""
    if exc.errno == errno.ENOENT:
        return "no such directory" if directory else "no such file"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename is not None:
        path = Path(os.fsdecode(exc.filename))
        in_the_way = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        named = Path(given) if given is not None else path
        if in_the_way is not None:
            return "is not a directory" if in_the_way == named else f"{in_the_way} is not a directory"
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = exc.strerror or exc.__class__.__name__
    return text[:1].lower() + text[1:]
