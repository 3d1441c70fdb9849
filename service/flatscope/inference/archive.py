"""Size caps on a model file, checked from its directory before Keras opens it.

A ``.keras`` file is a zip: ``config.json`` and ``metadata.json`` (which Keras reads whole
into memory and parses), the weights (``model.weights.h5``) and any ``assets/``. A small
file can inflate to gigabytes: a 1.7 MB one whose config.json inflates to 1 GiB cost the
server 2 GB of memory. Python's zipfile, which Keras reads with, stops each member at the
size the zip's directory declares, so the declared sizes bound what loading inflates.

A legacy ``.h5`` file holds the same under the same caps: the ``model_config`` attribute
(JSON, as config.json) and the weight datasets (each may be compressed, so it is their
declared shape that counts).
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
        json_bytes: The inflated size of each of ``config.json`` and ``metadata.json``
            (in an ``.h5`` file: of its ``model_config`` attribute).
        member_bytes: The inflated size of any other member (the weights; in an ``.h5``
            file, of any dataset).
        total_bytes: The inflated size of all members together.
        members: The number of members (in an ``.h5`` file, of groups and datasets).
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
    _check_file_size(path, caps)
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


def check_hdf5(path: Path, caps: ArchiveCaps = DEFAULT_CAPS) -> None:
    """Refuses a legacy ``.h5`` model file that is, or holds, more than ``caps`` allow.

    Reads the file's structure, the sizes it declares and its ``model_config``; no weights.

    Args:
        path: An ``.h5`` file.
        caps: The limits.

    Raises:
        ModelLoadError: The file is past a cap, or is no HDF5 file.
    """
    import h5py  # a dependency of Keras, needed only for this format

    _check_file_size(path, caps)
    if not h5py.is_hdf5(path):
        raise ModelLoadError(f"cannot load {path}: not a readable HDF5 file (no HDF5 signature)")
    datasets: list[int] = []
    objects = 0

    def visit(_: str, item: h5py.HLObject) -> bool | None:
        nonlocal objects
        objects += 1
        if isinstance(item, h5py.Dataset):
            datasets.append(item.size * item.dtype.itemsize)
        return True if objects > caps.members else None  # True stops the walk

    try:
        with h5py.File(path, "r") as file:
            if "model_config" not in file.attrs:
                raise ModelLoadError(
                    f"cannot load {path}: the HDF5 file holds no model_config (the "
                    "architecture); it is not a Keras model file"
                )
            # A string attribute declares no size, so it is read to be measured: its
            # bytes lie uncompressed in the file, which the file cap bounds, and the
            # cap here keeps Keras from parsing JSON many times its size into objects.
            config = len(file.attrs["model_config"])
            file.visititems(visit)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {path}: not a readable HDF5 file ({exc})") from exc
    if config > caps.json_bytes:
        raise ModelLoadError(
            f"cannot load {path}: its model_config is {_bytes(config)}, past the cap of "
            f"{_bytes(caps.json_bytes)}"
        )
    if objects > caps.members:
        raise ModelLoadError(
            f"cannot load {path}: the file has more than {caps.members:,} groups and "
            "datasets, past the cap"
        )
    for size in datasets:
        if size > caps.member_bytes:
            raise ModelLoadError(
                f"cannot load {path}: a dataset holds {_bytes(size)}, past the cap of "
                f"{_bytes(caps.member_bytes)} for one"
            )
    if sum(datasets) > caps.total_bytes:
        raise ModelLoadError(
            f"cannot load {path}: its datasets hold {_bytes(sum(datasets))} together, past "
            f"the cap of {_bytes(caps.total_bytes)}"
        )


def _check_file_size(path: Path, caps: ArchiveCaps) -> None:
    size = path.stat().st_size
    if size > caps.archive_bytes:
        raise ModelLoadError(
            f"cannot load {path}: the file is {_bytes(size)}, past the cap of "
            f"{_bytes(caps.archive_bytes)} for a model file"
        )


def _bytes(count: int) -> str:
    return f"{count:,} bytes ({count / MiB:,.1f} MiB)"
