"""What can go wrong while installing a dataset, each a one-line message fit to print as it is."""


class InstallError(RuntimeError):
    """A dataset could not be installed; the message names the file or URL and what to do."""


class DownloadError(InstallError):
    """Every attempt at a URL failed (dead link, refused, stalled past the timeout)."""


class ChecksumError(InstallError):
    """A file's size or checksum differs from the sources table."""


class CorruptArchiveError(InstallError):
    """An archive could not be read to its end (truncated, bad CRC, not an archive at all)."""

    def __init__(self, message: str, path):
        super().__init__(message)
        self.path = path


class UnsafeArchiveError(InstallError):
    """An archive member would land outside the extraction folder (absolute path, `..`, link)."""
