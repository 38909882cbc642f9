"""Run an experiments script on a disk that is full for some files.

    python -m tests.enospc 'GLOB' experiments.train --config=... --workdir=W

Every file opened for writing whose path matches GLOB (fnmatch) opens, but its first write
fails with ENOSPC, as on a full disk; other files are written normally. With a GLOB
starting with 'open:', the open itself fails.
"""

import builtins
import errno
import fnmatch
import os
import runpy
import sys

_open = builtins.open


class FullFile:
    """A file whose writes fail with ENOSPC; everything else is the real file's."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        self.write("")

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __iter__(self):
        return iter(self._file)


def main() -> None:
    pattern, module = sys.argv[1], sys.argv[2]
    at_open = pattern.startswith("open:")
    pattern = pattern.removeprefix("open:")

    def full_open(file, mode="r", *args, **kwargs):
        writes = any(c in mode for c in "wax+")
        if (
            writes
            and isinstance(file, str | os.PathLike)
            and fnmatch.fnmatch(os.fspath(file), pattern)
        ):
            if at_open:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
            return FullFile(_open(file, mode, *args, **kwargs))
        return _open(file, mode, *args, **kwargs)

    builtins.open = full_open
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
