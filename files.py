"""Writing a file whole: a reader, a crash or a full disk never leaves half of one.

One way for every file ankisync writes itself: clips and recordings in the media
folder, the credentials, backups. The data goes to a temporary file (mode 0600 from
the start, as mkstemp makes it) beside its place or in a folder of the caller's on
the same file system, is flushed to disk, then renamed over the target.
"""

import os
import tempfile

TEMP_PREFIX = ".ankisync-"  # files being written: "<TEMP_PREFIX>*.tmp"


def write_whole(path, data, temp_dir=None):
    """Write data (bytes) to path, whole or not at all, readable by its owner only until
    the caller says otherwise. temp_dir: where the temporary file goes (default: path's
    folder), e.g. outside the media folder, which a half-written file must never reach."""
    temp_dir = path.parent if temp_dir is None else temp_dir
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=temp_dir, prefix=TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:  # a full disk, a kill: no half file left behind
        os.unlink(temp)
        raise
