"""Judge a torch.save file (`*.pt`, `*.pth`, `*.bin`, Lightning's `*.ckpt`) without unpickling it.

Unpickling runs arbitrary code and loads every tensor, so we check the container instead:
torch >= 1.6 writes a zip whose members carry CRC-32s, which catch truncation and flipped bytes.
A quick check reads only the zip's central directory (a file cut short has none, or one that
points past its end); the deep check also reads every byte against the CRCs.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 20  # bytes read between two looks at `cancelled`

# What zipfile raises, besides BadZipFile, on archives damaged in less common ways:
# a corrupt deflate stream, a member cut short, an unknown compression, an encrypted member.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


class Cancelled(Exception):
    """A deep check was stopped by its caller before it had read every byte."""


def check(
    fh: BinaryIO, *, deep: bool = True, cancelled: Callable[[], bool] | None = None
) -> str | None:
    """Return why `fh` (positioned at 0) is not an intact torch.save file, or None.

    Raises Cancelled when `cancelled()` turns true during a deep check.
    """
    magic = fh.read(4)
    fh.seek(0)
    if magic == ZIP_MAGIC:
        return _check_zip(fh, deep, cancelled)
    # torch's legacy (pre-1.6) format is a bare pickle stream, which since protocol 2 starts
    # with the PROTO opcode \x80 and the protocol number. Nothing more can be checked without
    # unpickling, so a truncated legacy file passes: this is only a "right kind of file" test.
    if len(magic) >= 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5:
        return None
    return "not a torch zip or pickle file"


def _check_zip(fh: BinaryIO, deep: bool, cancelled: Callable[[], bool] | None) -> str | None:
    try:
        with zipfile.ZipFile(fh) as archive:
            members = archive.infolist()
            if not any(info.filename.endswith("data.pkl") for info in members):
                return "zip archive has no data.pkl: not a torch checkpoint"
            size = fh.seek(0, 2)
            for info in members:
                if info.header_offset + info.compress_size > size:
                    return f"zip member {info.filename!r} runs past the end of the file"
            if deep:
                for info in members:
                    if not _member_intact(archive, info, cancelled):
                        return f"zip member {info.filename!r} is corrupt (CRC mismatch)"
    except _ZIP_ERRORS as exc:
        return f"corrupt zip archive: {exc}"
    return None


def _member_intact(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, cancelled: Callable[[], bool] | None
) -> bool:
    """Read one member to its end: ZipExtFile checks the CRC-32 there (what testzip does)."""
    with archive.open(info) as member:
        while True:
            if cancelled is not None and cancelled():
                raise Cancelled(info.filename)
            try:
                if not member.read(CHUNK):
                    return True
            except zipfile.BadZipFile as exc:
                if "CRC" in str(exc):
                    return False
                raise
