"""Getting one source file onto disk and proving it is the right one.

HTTP(S) downloads go to `<file>.part` and resume from its length with a Range request, so an
interrupted run loses nothing; every read has a timeout, and each URL gets a bounded number of
attempts before the error names the URL and says how to fetch the file by hand. Google Drive
files go through gdown (which handles Drive's confirmation page) with the same timeout, retry
and resume settings. A `--mirror` folder is read in place and never written to or deleted from.
"""

import gzip
import hashlib
import os
import socket
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gdown
import gdown.exceptions
import requests
import urllib3
from tqdm import tqdm

from domainbed.download.errors import ChecksumError, DownloadError
from domainbed.download.spec import Source

CHUNK = 1 << 20
GDRIVE = "gdrive:"
# Statuses worth another attempt; any other 4xx means the link itself is wrong or dead.
TRANSIENT_4XX = (408, 425, 429)
NO_DNS = "no DNS answer: offline?"


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 60.0
    connect_timeout: float = 15.0
    retries: int = 5
    backoff: float = 2.0


@dataclass(frozen=True)
class Fetched:
    """A file on disk; `owned` is False for a file in the user's mirror folder, which we never delete."""

    path: Path
    owned: bool
    origin: str


class _Retry(Exception):
    """This attempt failed in a way the next attempt may not."""


def human_url(url: str) -> str:
    return f"https://drive.google.com/uc?id={url[len(GDRIVE):]}" if url.startswith(GDRIVE) else url


def is_remote(mirror: str) -> bool:
    return urllib.parse.urlparse(mirror).scheme in ("http", "https")


def obtain(source: Source, cache_dir: Path, mirror: Optional[str], options: FetchOptions) -> Fetched:
    """The file of `source`: from the mirror folder as it is, from the cache when an earlier
    run finished it, else downloaded into the cache from the mirror host or the table's URLs."""
    if mirror and not is_remote(mirror):
        path = Path(mirror) / source.filename
        if not path.is_file():
            raise DownloadError(
                f"{source.filename} is not in the mirror folder {mirror}; download it from "
                f"{human_url(source.urls[0])} into that folder and run again"
            )
        return Fetched(path, owned=False, origin=str(path))
    dest = Path(cache_dir) / source.filename
    if dest.is_file():
        return Fetched(dest, owned=True, origin=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    urls = [f"{mirror.rstrip('/')}/{urllib.parse.quote(source.filename)}"] if mirror else list(source.urls)
    failures = []
    for url in urls:
        try:
            if url.startswith(GDRIVE):
                _fetch_gdrive(url[len(GDRIVE):], dest, options)
            else:
                _fetch_http(url, dest, source.size, options)
            return Fetched(dest, owned=True, origin=human_url(url))
        except DownloadError as error:
            failures.append(str(error))
    raise DownloadError(
        f"{'; '.join(failures)}. To fetch it by hand, save {human_url(urls[0])} as {dest} "
        "(or into a folder given with --mirror) and run again"
    )


def check_file(fetched: Fetched, source: Source) -> str:
    """Compare size and checksum with the table before anything reads the file; on a mismatch
    delete it if it is ours (so the next run downloads it anew), leave it if it is the user's.
    Returns the file's sha256, to record (and to pin in the table where none is published)."""
    path = fetched.path
    size = path.stat().st_size
    algorithm, expected = source.checksum.split(":", 1) if source.checksum else ("sha256", None)
    problem = None
    if source.size is not None and size != source.size:
        problem = f"is {size} bytes, the sources table says {source.size}"
    else:
        digests = file_digests(path, {"sha256", algorithm})
        if expected is not None and digests[algorithm] != expected.lower():
            problem = f"has {algorithm} {digests[algorithm]}, the sources table says {expected}"
    if problem and source.content_md5 and path.name.endswith(".gz") and _gunzipped_md5(path) == source.content_md5:
        problem = None  # gzipped anew: other bytes on disk, the same content
        digests = file_digests(path, {"sha256"})
    if problem:
        if fetched.owned:
            path.unlink()
            action = "deleted this download; run again to fetch it anew"
        else:
            action = "left it untouched; replace it with a good copy"
        raise ChecksumError(f"{path} {problem} ({action})")
    return digests["sha256"]


def _gunzipped_md5(path: Path) -> Optional[str]:
    digest = hashlib.md5()
    try:
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def file_digests(path: Path, algorithms) -> dict:
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _fetch_http(url: str, dest: Path, size: Optional[int], options: FetchOptions) -> None:
    part = dest.with_name(dest.name + ".part")
    last = None
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(min(options.backoff * 2 ** (attempt - 1), 60.0))
        try:
            _attempt(url, part, size, options)
            os.replace(part, dest)
            return
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            last = f"timed out: no answer within {options.connect_timeout:g} s or no data for {options.timeout:g} s"
        except requests.ConnectionError as error:
            unreachable = _unreachable(error)
            if unreachable:
                # no address or refused: offline or a dead host, which retrying does not change
                raise DownloadError(f"could not reach {urllib.parse.urlparse(url).netloc} for {url} "
                                    f"({unreachable})") from None
            last = _reason(error)
        except (requests.RequestException, urllib3.exceptions.HTTPError, _Retry) as error:
            last = _reason(error)
    raise DownloadError(f"could not download {url} after {options.retries + 1} attempts ({last})")


def _attempt(url: str, part: Path, size: Optional[int], options: FetchOptions) -> None:
    """One request, resuming `part` from its length; returns once `part` is whole."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = _restart(part)
    if size is not None and offset == size:
        return
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    timeout = (options.connect_timeout, options.timeout)
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        total = _expected_total(response, offset, part)
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url} serves {total} bytes, the sources table says {size}")
        if response.status_code == 200:
            offset = 0
        if total == 0:
            raise DownloadError(f"{url} answered HTTP {response.status_code} with an empty body; it serves no file")
        if total is not None and offset == total:
            return
        # Raw bytes, never Content-Encoding-decoded (Range offsets count raw bytes), and a short
        # body returned rather than raised, so that every byte received is kept for the resume.
        response.raw.enforce_content_length = False
        with open(part, "ab" if offset else "wb") as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], disable=None,
        ) as bar:
            for block in iter(lambda: response.raw.read(CHUNK, decode_content=False), b""):
                handle.write(block)
                bar.update(len(block))
    if part.stat().st_size == 0:
        part.unlink()
        raise DownloadError(f"{url} answered with an empty body; it serves no file")
    if total is not None and part.stat().st_size != total:
        raise _Retry(f"connection closed at {part.stat().st_size} of {total} bytes")


def _expected_total(response, offset: int, part: Path) -> Optional[int]:
    """The full file's length as the response tells it; raises for statuses that end the attempt."""
    status = response.status_code
    if status == 416:
        # Nothing left past our offset: either the part is already whole, or the file shrank.
        total = _content_range_total(response)
        if total == offset:
            return total
        _restart(part)
        raise _Retry("the server refused to resume; starting over")
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        raise DownloadError(f"{response.url} answered HTTP {status} {response.reason}")
    response.raise_for_status()
    length = response.headers.get("Content-Length")
    if status == 206:
        start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
        if start != str(offset):
            _restart(part)
            raise _Retry(f"the server resumed at byte {start or '?'}, not {offset}; starting over")
        return _content_range_total(response)
    return int(length) if length is not None else None


def _content_range_total(response) -> Optional[int]:
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _restart(part: Path) -> int:
    part.unlink(missing_ok=True)
    return 0


def _fetch_gdrive(file_id: str, dest: Path, options: FetchOptions) -> None:
    url = human_url(GDRIVE + file_id)
    # gdown retries a refused connection with back-off (half a minute per file offline); one
    # connect first tells offline from a flaky link at once.
    host = urllib.parse.urlparse(url).hostname
    try:
        open_connection(host, 443, options.connect_timeout).close()
    except socket.gaierror:
        raise DownloadError(f"could not reach {host} for {url} ({NO_DNS})") from None
    except ConnectionRefusedError:
        raise DownloadError(f"could not reach {host} for {url} (connection refused)") from None
    except OSError:
        pass  # slow or flaky rather than absent: gdown's own retries deal with it
    try:
        gdown.download(
            id=file_id, output=str(dest), quiet=False, resume=True,
            timeout=(options.connect_timeout, options.timeout), retries=options.retries,
        )
    except (gdown.exceptions.FileURLRetrievalError, gdown.exceptions.DownloadError,
            requests.RequestException) as error:
        raise DownloadError(f"could not download {url} ({_reason(error)})") from None
    if not dest.is_file():
        raise DownloadError(f"could not download {url} (gdown wrote no file)")


def _unreachable(error: requests.ConnectionError) -> Optional[str]:
    """Why no connection could be opened at all (no DNS answer, refused), or None for one that
    broke or stalled."""
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return NO_DNS
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "connection refused or no route: offline, or the host is down"
    return None


def open_connection(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _reason(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
