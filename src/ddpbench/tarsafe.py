"""The checks every tar archive ddpbench reads goes through (the CIFAR-10 archive, result bundles):
members are read into memory, never extracted, and a member that could write outside a folder or
is not a plain file or folder (absolute path, '..', link, device) refuses the whole archive."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path


def safe_member_name(archive: Path, member: tarfile.TarInfo, error: type[Exception] = ValueError) -> str:
    """The member's normalised name, or ``error`` for a member no honest archive of ours holds."""
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
        raise error(f"unsafe path {name!r} in archive {archive}: refusing to read it")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "device or special file"
        raise error(f"unsafe member {name!r} ({kind}) in archive {archive}: refusing to read it")
    return "/".join(p for p in parts if p != ".")
