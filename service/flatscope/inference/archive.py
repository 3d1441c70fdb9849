"""Size caps on a ``.keras`` archive, checked from its zip directory before Keras opens it.

A ``.keras`` file is a zip: ``config.json`` and ``metadata.json`` (which Keras reads whole
into memory and parses), the weights (``model.weights.h5``) and any ``assets/``. A small
file can inflate to gigabytes: a 1.7 MB one whose config.json inflates to 1 GiB cost the
server 2 GB of memory. Python's zipfile, which Keras reads with, stops each member at the
size the zip's directory declares, so the declared sizes bound what loading inflates.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

from flatscope.errors import ModelLoadError

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclasses.dataclass(frozen=True)
class ArchiveCaps:
    """The most a model file may hold.

    Attributes:
        archive_bytes: The size of the file itself.
        json_bytes: The inflated size of each of ``config.json`` and ``metadata.json``.
        member_bytes: The inflated size of any other member (the weights).
        total_bytes: The inflated size of all members together.
        members: The number of members.
    """

    archive_bytes: int = 2 * GiB
    json_bytes: int = 64 * MiB
    member_bytes: int = 4 * GiB
    total_bytes: int = 4 * GiB
    members: int = 10_000


DEFAULT_CAPS = ArchiveCaps()
JSON_MEMBERS = ("config.json", "metadata.json")


def check_archive(path: Path, caps: ArchiveCaps = DEFAULT_CAPS) -> None:
    """Refuses a model file that is, or inflates to, more than ``caps`` allow.

    Reads only the zip's directory; inflates nothing.

    Args:
        path: A ``.keras`` file.
        caps: The limits.

    Raises:
        ModelLoadError: The file is past a cap, or is no zip.
    """
    size = path.stat().st_size
    if size > caps.archive_bytes:
        raise ModelLoadError(
            f"cannot load {path}: the file is {_bytes(size)}, past the cap of "
            f"{_bytes(caps.archive_bytes)} for a model file"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"cannot load {path}: not a readable zip ({exc})") from exc
    if len(members) > caps.members:
        raise ModelLoadError(
            f"cannot load {path}: the archive has {len(members):,} members, past the cap "
            f"of {caps.members:,}"
        )
    for member in members:
        cap = caps.json_bytes if member.filename in JSON_MEMBERS else caps.member_bytes
        if member.file_size > cap:
            raise ModelLoadError(
                f"cannot load {path}: member {member.filename} inflates to "
                f"{_bytes(member.file_size)}, past the cap of {_bytes(cap)} for it "
                f"({_bytes(member.compress_size)} in the archive)"
            )
    total = sum(member.file_size for member in members)
    if total > caps.total_bytes:
        raise ModelLoadError(
            f"cannot load {path}: its members inflate to {_bytes(total)} together, past the "
            f"cap of {_bytes(caps.total_bytes)}"
        )


def _bytes(count: int) -> str:
    return f"{count:,} bytes ({count / MiB:,.1f} MiB)"
