"""The downloader against generated archives served from 127.0.0.1: normal, resumed, corrupt,
truncated, unsafe and stalled downloads, the second run that skips, mirrors, and the builders."""

import hashlib
import io
import json
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from domainbed.datasets import get_dataset_class
from domainbed.download import build, catalog
from domainbed.download.errors import CorruptArchiveError, InstallError, UnsafeArchiveError
from domainbed.download.extract import extract
from domainbed.download.fetch import FetchOptions
from domainbed.download.install import CACHE, install
from domainbed.download.spec import Dataset, ImageFolderLayout, Source
from domainbed.download.verify import check

FAST = FetchOptions(timeout=0.5, connect_timeout=2.0, retries=2, backoff=0.0)
TOY_LAYOUT = ImageFolderLayout("Toy", {"d1": 2, "d2": 2}, classes=("a", "b"),
                               class_counts={"d1": {"a": 1, "b": 1}, "d2": {"a": 1, "b": 1}})


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def toy_members(root="toy_root"):
    return {f"{root}/{d}/{c}/{i}.png": png_bytes(i) for i, (d, c) in
            enumerate([("d1", "a"), ("d1", "b"), ("d2", "a"), ("d2", "b")])}


def zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict, links=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ArchiveServer(ThreadingHTTPServer):
    """Serves `files` with Range support; `modes[name]` makes a file misbehave:
    "interrupt_once" closes after half the body once, "truncate" always does,
    "stall" sends a few bytes and then nothing for `stall_seconds`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.modes, self.requests, self.interrupted = {}, {}, [], set()
        self.stall_seconds = 2.0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server, name = self.server, self.path.lstrip("/")
        byte_range = self.headers.get("Range")
        server.requests.append((name, byte_range))
        if name not in server.files:
            self.send_error(404)
            return
        data, start = server.files[name], 0
        if byte_range:
            start = int(byte_range.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body, mode = data[start:], server.modes.get(name)
        if mode == "truncate" or (mode == "interrupt_once" and name not in server.interrupted):
            server.interrupted.add(name)
            self.wfile.write(body[: len(body) // 2])
        elif mode == "stall":
            self.wfile.write(body[:10])
            self.wfile.flush()
            time.sleep(server.stall_seconds)
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ArchiveServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def toy_dataset(url, data=None, *, filename="toy.zip", size=True, checksum=True):
    data = zip_bytes(toy_members()) if data is None else data
    source = Source(filename, (url,), len(data) if size else None, sha256(data) if checksum else None, "test")
    return Dataset("Toy", TOY_LAYOUT, (source,), build.archive_root(filename, "toy_root"))


def served_toy(server, data=None, **kwargs):
    data = zip_bytes(toy_members()) if data is None else data
    server.files["toy.zip"] = data
    return toy_dataset(f"{server.url}/toy.zip", data, **kwargs)


def leftovers(data_dir):
    """Anything an install may leave behind besides a finished dataset and its record."""
    hidden = [p.name for p in data_dir.glob(".Toy*")]
    cached = [p.name for p in (data_dir / CACHE).glob("*") if not p.name.endswith(".json")]
    return hidden + cached


def test_normal_download_installs_a_complete_folder_and_cleans_up(server, tmp_path):
    outcome = install(served_toy(server), tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "installed" and outcome.ok
    assert (tmp_path / "Toy" / "d2" / "b" / "3.png").is_file()
    assert check("Toy", TOY_LAYOUT, tmp_path / "Toy").complete
    assert leftovers(tmp_path) == []
    record = json.loads((tmp_path / CACHE / "Toy.json").read_text())
    assert record["counts"] == {"d1": 2, "d2": 2}
    assert record["files"]["toy.zip"]["sha256"] == sha256(server.files["toy.zip"]).split(":")[1]


def test_second_run_skips_without_a_request(server, tmp_path):
    dataset = served_toy(server)
    install(dataset, tmp_path, options=FAST, log=lambda _: None)
    n_requests = len(server.requests)
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "skipped" and outcome.ok
    assert len(server.requests) == n_requests


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    dataset = served_toy(server)
    server.modes["toy.zip"] = "interrupt_once"
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "installed"
    half = (len(server.files["toy.zip"]) // 2)
    assert server.requests == [("toy.zip", None), ("toy.zip", f"bytes={half}-")]


def test_partial_file_of_an_earlier_run_is_resumed(server, tmp_path):
    dataset = served_toy(server)
    (tmp_path / CACHE).mkdir()
    (tmp_path / CACHE / "toy.zip.part").write_bytes(server.files["toy.zip"][:100])
    assert install(dataset, tmp_path, options=FAST, log=lambda _: None).status == "installed"
    assert server.requests == [("toy.zip", "bytes=100-")]


def test_corrupted_archive_is_a_checksum_error_and_leaves_nothing(server, tmp_path):
    good = zip_bytes(toy_members())
    dataset = toy_dataset(f"{server.url}/toy.zip", good)
    server.files["toy.zip"] = good[:50] + bytes([good[50] ^ 0xFF]) + good[51:]
    (tmp_path / "Toy").mkdir()
    (tmp_path / "Toy" / "mine.txt").write_text("the user's")
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed"
    assert "toy.zip" in outcome.message and "sha256" in outcome.message and "deleted this download" in outcome.message
    assert (tmp_path / "Toy" / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in (tmp_path / "Toy").iterdir()) == ["mine.txt"]
    assert leftovers(tmp_path) == []


def test_server_that_always_truncates_fails_naming_the_url(server, tmp_path):
    dataset = served_toy(server)
    server.modes["toy.zip"] = "truncate"
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed"
    assert f"{server.url}/toy.zip" in outcome.message and "3 attempts" in outcome.message
    assert "by hand" in outcome.message
    assert not (tmp_path / "Toy").exists()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_archive_without_checksum_is_refused_at_extraction(server, tmp_path, kind):
    whole = zip_bytes(toy_members()) if kind == "zip" else tar_bytes(toy_members())
    truncated = whole[: len(whole) * 2 // 3]
    server.files[f"toy.{kind}"] = truncated
    dataset = toy_dataset(f"{server.url}/toy.{kind}", truncated, filename=f"toy.{kind}", size=False, checksum=False)
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed" and "corrupt or truncated" in outcome.message
    assert not (tmp_path / "Toy").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind, members, links, reason", [
    ("zip", {"toy_root/../../evil.txt": b"x"}, (), "'..'"),
    ("zip", {"/tmp/abs_evil.txt": b"x"}, (), "absolute"),
    ("tar.gz", {"toy_root/../../evil.txt": b"x"}, (), "'..'"),
    ("tar.gz", {"/tmp/abs_evil.txt": b"x"}, (), "absolute"),
    ("tar.gz", {}, [("toy_root/link", "../../..")], "outside"),
    ("tar.gz", {}, [("toy_root/link", "/etc/passwd")], "absolute"),
    # Each link looks harmless alone ("t/.." is "." on paper); resolved, "s" is the parent.
    ("tar.gz", {}, [("t", "."), ("s", "t/..")], "outside"),
])
def test_unsafe_members_are_refused(tmp_path, kind, members, links, reason):
    archive = tmp_path / f"bad.{kind}"
    members = {**toy_members(), **members}
    archive.write_bytes(zip_bytes(members) if kind == "zip" else tar_bytes(members, links))
    with pytest.raises(UnsafeArchiveError, match=reason):
        extract(archive, tmp_path / "out" / "dest")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_zip_links_are_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("toy_root/link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "../../etc")
    (tmp_path / "bad.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract(tmp_path / "bad.zip", tmp_path / "dest")


def test_unsafe_archive_installs_nothing(server, tmp_path):
    data = tar_bytes(toy_members(), links=[("toy_root/d1/a/escape", "../../../../../etc/passwd")])
    server.files["toy.tar.gz"] = data
    dataset = toy_dataset(f"{server.url}/toy.tar.gz", data, filename="toy.tar.gz")
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed" and "refused member 'toy_root/d1/a/escape'" in outcome.message
    assert not (tmp_path / "Toy").exists() and not list(tmp_path.glob(".Toy*"))


def test_stalled_server_times_out_with_a_clear_message(server, tmp_path):
    dataset = served_toy(server)
    server.modes["toy.zip"] = "stall"
    started = time.monotonic()
    outcome = install(dataset, tmp_path, options=FetchOptions(timeout=0.3, retries=1, backoff=0.0),
                      log=lambda _: None)
    assert time.monotonic() - started < 5
    assert outcome.status == "failed"
    assert f"could not download {server.url}/toy.zip after 2 attempts" in outcome.message
    assert "timed out" in outcome.message.lower() and "by hand" in outcome.message


def test_dead_link_fails_at_once_and_the_next_url_is_tried(server, tmp_path):
    data = zip_bytes(toy_members())
    server.files["toy.zip"] = data
    source = Source("toy.zip", (f"{server.url}/gone.zip", f"{server.url}/toy.zip"), len(data), sha256(data), "test")
    dataset = Dataset("Toy", TOY_LAYOUT, (source,), build.archive_root("toy.zip", "toy_root"))
    assert install(dataset, tmp_path, options=FAST, log=lambda _: None).status == "installed"
    assert [name for name, _ in server.requests] == ["gone.zip", "toy.zip"]


def test_mirror_url_replaces_the_public_source(server, tmp_path):
    data = zip_bytes(toy_members())
    server.files["toy.zip"] = data
    dataset = toy_dataset("http://127.0.0.1:9/unreachable/toy.zip", data)
    outcome = install(dataset, tmp_path, mirror=server.url + "/", options=FAST, log=lambda _: None)
    assert outcome.status == "installed"


def test_mirror_folder_is_read_in_place_and_never_deleted(tmp_path):
    data = zip_bytes(toy_members())
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "toy.zip").write_bytes(data)
    dataset = toy_dataset("http://127.0.0.1:9/toy.zip", data)
    assert install(dataset, tmp_path / "data", mirror=str(mirror), log=lambda _: None).status == "installed"
    assert (mirror / "toy.zip").read_bytes() == data
    corrupt = toy_dataset("http://127.0.0.1:9/toy.zip", data + b"!")
    outcome = install(corrupt, tmp_path / "data2", mirror=str(mirror), log=lambda _: None)
    assert outcome.status == "failed" and "left it untouched" in outcome.message
    assert (mirror / "toy.zip").read_bytes() == data


def test_incomplete_folder_is_moved_aside_not_deleted(server, tmp_path):
    (tmp_path / "Toy" / "d1" / "a").mkdir(parents=True)
    (tmp_path / "Toy" / "d1" / "a" / "old.png").write_bytes(png_bytes(9))
    outcome = install(served_toy(server), tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "installed"
    [aside] = tmp_path.glob("Toy.incomplete-*")
    assert (aside / "d1" / "a" / "old.png").is_file()
    assert check("Toy", TOY_LAYOUT, tmp_path / "Toy").complete


def test_interrupted_build_leaves_no_dataset_folder_and_the_next_run_cleans_up(server, tmp_path):
    dataset = served_toy(server)

    def interrupted(archives, work):
        assert dataset.build(archives, work).is_dir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        install(Dataset("Toy", TOY_LAYOUT, dataset.sources, interrupted), tmp_path, options=FAST, log=lambda _: None)
    assert not (tmp_path / "Toy").exists() and not list(tmp_path.glob(".Toy*"))
    (tmp_path / ".Toy.staging-killed" / "toy_root").mkdir(parents=True)
    assert install(dataset, tmp_path, options=FAST, log=lambda _: None).status == "installed"
    assert leftovers(tmp_path) == []


def test_archive_without_the_expected_layout_installs_nothing(server, tmp_path):
    members = {name: data for name, data in toy_members().items() if "/d2/" not in name}
    outcome = install(served_toy(server, zip_bytes(members)), tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed" and "d2: domain folder missing" in outcome.message
    assert not (tmp_path / "Toy").exists() and not list(tmp_path.glob(".Toy*"))


def test_google_drive_sources_go_through_gdown(monkeypatch, tmp_path):
    data = zip_bytes(toy_members())
    calls = []

    def fake_download(*, id, output, timeout, retries, resume, **kwargs):
        calls.append((id, timeout, retries, resume))
        with open(output, "wb") as handle:
            handle.write(data)
        return output

    monkeypatch.setattr("gdown.download", fake_download)
    monkeypatch.setattr("domainbed.download.fetch.open_connection", lambda *args: io.BytesIO())
    dataset = toy_dataset("gdrive:FILE_ID", data)
    assert install(dataset, tmp_path, options=FAST, log=lambda _: None).status == "installed"
    assert calls == [("FILE_ID", (FAST.connect_timeout, FAST.timeout), FAST.retries, True)]


def test_mnist_from_a_mirror_folder(mnist_data, tmp_path):
    """The real MNIST files: torchvision's sizes and md5s are of differently gzipped files, but the
    uncompressed md5s (those --verify checks) match, so the table accepts ours as --verify does;
    with their own checksums they build a complete folder too."""
    raw = mnist_data / "MNIST" / "raw"
    outcome = install(catalog.DATASETS["MNIST"], tmp_path / "by_content", mirror=str(raw), log=lambda _: None)
    assert outcome.status == "installed" and outcome.ok  # re-gzipped: accepted by the uncompressed md5s
    sources = tuple(Source(s.filename, s.urls, None, sha256((raw / s.filename).read_bytes()), "test")
                    for s in catalog.SOURCES["MNIST"])
    mnist = Dataset("MNIST", catalog.LAYOUTS["MNIST"], sources, catalog.DATASETS["MNIST"].build)
    outcome = install(mnist, tmp_path, mirror=str(raw), log=lambda _: None)
    assert outcome.status == "installed" and outcome.ok
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(s.filename for s in sources)


def test_terra_incognita_builder_sorts_images_by_location_and_category(tmp_path):
    images = {f"eccv_18_all_images_sm/{i}.jpg": png_bytes(i) for i in range(4)}
    annotations = {
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "car"}],
        "images": [{"id": f"i{i}", "file_name": f"{i}.jpg", "location": location}
                   for i, location in enumerate([38, 46, 7, 38])],
        "annotations": [{"image_id": "i0", "category_id": 1}, {"image_id": "i0", "category_id": 2},
                        {"image_id": "i1", "category_id": 2}, {"image_id": "i2", "category_id": 1},
                        {"image_id": "i3", "category_id": 3}],
    }
    files = {"ann/a.json": json.dumps(annotations).encode(), "ann/b.json": b'{"images": [], "annotations": []}'}
    (tmp_path / "images.tar.gz").write_bytes(tar_bytes(images))
    (tmp_path / "ann.tar.gz").write_bytes(tar_bytes(files))
    builder = build.terra_incognita("images.tar.gz", "ann.tar.gz", "eccv_18_all_images_sm",
                                    ["ann/a.json", "ann/b.json"], locations=("38", "46"), categories=("cat", "dog"))
    tree = builder({"images.tar.gz": tmp_path / "images.tar.gz", "ann.tar.gz": tmp_path / "ann.tar.gz"}, tmp_path / "w")
    found = sorted(str(p.relative_to(tree)) for p in tree.rglob("*.jpg"))
    assert found == ["location_38/cat/0.jpg", "location_38/dog/0.jpg", "location_46/cat/1.jpg"]


def test_domain_net_builder_removes_listed_duplicates_and_refuses_escapes(tmp_path):
    (tmp_path / "clipart.zip").write_bytes(zip_bytes({"clipart/cup/1.jpg": b"1", "clipart/cup/2.jpg": b"2"}))
    (tmp_path / "real.zip").write_bytes(zip_bytes({"real/cup/3.jpg": b"3"}))
    (tmp_path / "dups.txt").write_text("clipart/cup/2.jpg\nreal/cup/absent.jpg\n\n")
    archives = {name: tmp_path / name for name in ("clipart.zip", "real.zip", "dups.txt")}
    tree = build.domain_net(["clipart.zip", "real.zip"], "dups.txt")(archives, tmp_path / "w")
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*.jpg")) == ["clipart/cup/1.jpg", "real/cup/3.jpg"]
    (tmp_path / "dups.txt").write_text("../../victim.txt\n")
    with pytest.raises(UnsafeArchiveError):
        build.domain_net(["clipart.zip"], "dups.txt")(archives, tmp_path / "w2")


def test_extract_refuses_unknown_and_non_archives(tmp_path):
    (tmp_path / "x.rar").write_bytes(b"x")
    with pytest.raises(InstallError, match="unknown archive type"):
        extract(tmp_path / "x.rar", tmp_path / "out")
    (tmp_path / "x.zip").write_bytes(b"not a zip at all")
    with pytest.raises(CorruptArchiveError):
        extract(tmp_path / "x.zip", tmp_path / "out")


def test_catalog_matches_the_dataset_classes_and_states_every_source():
    for name, dataset in catalog.DATASETS.items():
        readers = [alias for alias, target in catalog.ALIASES.items() if target == name] or [name]
        for cls in map(get_dataset_class, readers):
            assert name == "MNIST" or dataset.layout.directory == cls.DIRECTORY
            if getattr(cls, "DOMAIN_DIRS", None):
                assert list(dataset.layout.domain_counts) == cls.DOMAIN_DIRS
        filenames = [source.filename for source in dataset.sources]
        assert len(set(filenames)) == len(filenames)
        for source in dataset.sources:
            assert source.urls and source.provenance
            assert source.checksum is None or source.checksum.split(":")[0] in ("md5", "sha256")
    pacs = catalog.LAYOUTS["PACS"]
    assert {d: sum(c.values()) for d, c in pacs.class_counts.items()} == dict(pacs.domain_counts)
    assert sum(catalog.LAYOUTS["DomainNet"].domain_counts.values()) == 586575
    assert sum(catalog.LAYOUTS["TerraIncognita"].domain_counts.values()) == 24788


def test_empty_200_response_is_a_one_line_failure(server, tmp_path):
    server.files["toy.zip"] = b""
    dataset = toy_dataset(f"{server.url}/toy.zip", b"", size=False, checksum=False)
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed" and "empty body" in outcome.message and "\n" not in outcome.message
    assert not (tmp_path / "Toy").exists() and leftovers(tmp_path) == []


def test_truncated_install_is_detected_and_reinstalled(server, tmp_path):
    dataset = served_toy(server)
    assert install(dataset, tmp_path, options=FAST, log=lambda _: None).status == "installed"
    image = tmp_path / "Toy" / "d2" / "a" / "2.png"
    image.write_bytes(image.read_bytes()[:20])
    messages = []
    outcome = install(dataset, tmp_path, options=FAST, log=messages.append)
    assert outcome.status == "installed"
    assert any("truncated" in line and "d2" in line for line in messages), messages
    assert image.read_bytes() == png_bytes(2)
    [aside] = tmp_path.glob("Toy.incomplete-*")
    assert len((aside / "d2" / "a" / "2.png").read_bytes()) == 20
    assert install(dataset, tmp_path, options=FAST, log=lambda _: None).status == "skipped"


def test_symlink_to_outside_the_dataset_is_refused(server, tmp_path):
    members = {**toy_members(), "elsewhere/secret.png": png_bytes(7)}
    data = tar_bytes(members, links=[("toy_root/d1/a/link.png", "../../../elsewhere/secret.png")])
    server.files["toy.tar.gz"] = data
    dataset = toy_dataset(f"{server.url}/toy.tar.gz", data, filename="toy.tar.gz")
    outcome = install(dataset, tmp_path, options=FAST, log=lambda _: None)
    assert outcome.status == "failed" and "symbolic link" in outcome.message and "link.png" in outcome.message
    assert not (tmp_path / "Toy").exists() and not list(tmp_path.glob(".Toy*"))


def test_regzipped_file_is_accepted_by_its_uncompressed_md5(tmp_path):
    import gzip

    from domainbed.download.errors import ChecksumError
    from domainbed.download.fetch import Fetched, check_file

    content = bytes(range(256)) * 40
    published = gzip.compress(content, compresslevel=9, mtime=0)
    regzipped = tmp_path / "idx.gz"
    regzipped.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    md5 = hashlib.md5(published).hexdigest()
    table = Source("idx.gz", ("x",), len(published), f"md5:{md5}", "test",
                   content_md5=hashlib.md5(content).hexdigest())
    fetched = Fetched(regzipped, owned=False, origin="mirror")
    assert check_file(fetched, table) == hashlib.sha256(regzipped.read_bytes()).hexdigest()
    other = Source("idx.gz", ("x",), len(published), f"md5:{md5}", "test", content_md5=hashlib.md5(b"x").hexdigest())
    with pytest.raises(ChecksumError, match="left it untouched"):
        check_file(fetched, other)


def test_offline_fails_at_once_and_names_every_missing_file_once(tmp_path, monkeypatch):
    import socket

    from domainbed.download import fetch

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: every connection is refused, as offline
    sleeps = []
    monkeypatch.setattr(fetch.time, "sleep", sleeps.append)
    names = ["a.zip", "b.zip", "c.zip"]
    sources = tuple(Source(name, (f"http://127.0.0.1:{port}/{name}", f"http://127.0.0.1:{port}/m/{name}"),
                           None, None, "test") for name in names)
    dataset = Dataset("Toy", TOY_LAYOUT, sources, build.archive_root("a.zip", "toy_root"))
    outcome = install(dataset, tmp_path, options=FetchOptions(), log=lambda _: None)
    assert outcome.status == "failed" and "could not reach" in outcome.message
    assert sleeps == []  # no retry, no back-off: a refused connection fails at once
    listed = outcome.message.split(" (first:")[0]
    assert "3 files could not be fetched" in listed and all(listed.count(name) == 1 for name in names)
    assert not (tmp_path / CACHE).exists()  # no empty .downloads left behind


def test_google_drive_offline_fails_at_once_without_gdown(monkeypatch, tmp_path):
    import socket

    calls = []
    monkeypatch.setattr("gdown.download", lambda **kwargs: calls.append(kwargs))

    def no_dns(host, port, timeout):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr("domainbed.download.fetch.open_connection", no_dns)
    sources = tuple(Source(name, ("gdrive:ID1", "gdrive:ID2"), None, None, "test") for name in ("a.zip", "b.zip"))
    dataset = Dataset("Toy", TOY_LAYOUT, sources, build.archive_root("a.zip", "toy_root"))
    outcome = install(dataset, tmp_path, options=FetchOptions(), log=lambda _: None)
    assert outcome.status == "failed" and "could not reach drive.google.com" in outcome.message
    assert calls == [] and "2 files could not be fetched: a.zip, b.zip" in outcome.message
