"""Extracting an archive without letting any member land outside the destination.

Tar archives go through the standard library's "data" extraction filter (PEP 706), which refuses
`..` and links that resolve outside the destination (checked against the real paths of what is
already extracted) and device files, and drops dangerous mode bits; absolute names, which that
filter would quietly make relative, we refuse first. Zip archives are checked member by member
before anything is written; zipfile would silently rewrite a bad name, and we would rather
refuse the archive. A link in a zip is refused too: zipfile cannot create one, it would write
the link target as a file.
"""

import gzip
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from domainbed.download.errors import CorruptArchiveError, InstallError, UnsafeArchiveError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def extract(archive: Path, dest: Path) -> None:
    """Extract the .zip or .tar(.gz) `archive` into the folder `dest` (created if needed)."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.endswith(".zip"):
            _extract_zip(archive, dest)
        elif archive.name.endswith(TAR_SUFFIXES):
            _extract_tar(archive, dest)
        else:
            raise InstallError(f"{archive.name}: unknown archive type; expected .zip, .tar, .tar.gz or .tgz")
    except (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, gzip.BadGzipFile, EOFError,
            zlib.error) as error:
        raise CorruptArchiveError(f"{archive}: corrupt or truncated archive ({error})", archive) from None


def check_member_name(archive: Path, name: str) -> None:
    """Refuse a member name that is absolute or climbs out with `..` (both separators)."""
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(f"{archive.name}: refused member {name!r}: absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeArchiveError(f"{archive.name}: refused member {name!r}: '..' would leave the target folder")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            check_member_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"{archive.name}: refused member {info.filename!r}: symbolic link")
        for info in members:
            zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise InstallError("safe tar extraction needs Python >= 3.10.12 or >= 3.11.4 (tarfile extraction filters)")

    def refuse_unsafe(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        # The data filter strips a leading "/" and carries on; we refuse such an archive instead.
        check_member_name(archive, member.name)
        try:
            return tarfile.data_filter(member, dest_path)
        except tarfile.FilterError as error:
            raise UnsafeArchiveError(f"{archive.name}: refused member {member.name!r}: {error}") from None

    with tarfile.open(archive) as tar:
        # errorlevel 2: a member that cannot be extracted is an error, never a debug message.
        tar.errorlevel = 2
        tar.extractall(dest, filter=refuse_unsafe)
