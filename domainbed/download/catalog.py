"""Every dataset the downloader knows: where its files come from (SOURCES, the one table of
URLs, sizes and checksums) and what the finished folder must hold (LAYOUTS, the published
image counts). Folder and domain names come from the dataset classes that read them.

Honesty about the table: most of these archives have no published size or checksum, and none
could be measured here (no network). Those entries say None; the archive is then trusted only
as far as its own CRCs go (zip members, gzip streams), checked during extraction, and the
finished folder is checked against the published counts. The sha256 of every file actually
used is printed and recorded in DATA/.downloads/<dataset>.json, so it can be pinned here later.
"""

from domainbed.datasets import spawrious, wilds_datasets
from domainbed.datasets.image_folder import PACS, SVIRO, VLCS, DomainNet, OfficeHome, TerraIncognita
from domainbed.datasets.mnist import MNIST_FILES
from domainbed.download import build
from domainbed.download.spec import Dataset, IdxFile, IdxLayout, ImageFolderLayout, MetadataLayout, Source

_UNPUBLISHED = "no size or checksum is published; the archive's own CRCs are checked on extraction"
_LILA = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps"
_VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source"
_DOMAINBED_RAW = "https://raw.githubusercontent.com/facebookresearch/DomainBed/main"
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist")
_DOMAIN_NET_ZIPS = {
    "clipart": f"{_VISDA}/groundtruth/clipart.zip",
    "infograph": f"{_VISDA}/infograph.zip",
    "painting": f"{_VISDA}/groundtruth/painting.zip",
    "quickdraw": f"{_VISDA}/quickdraw.zip",
    "real": f"{_VISDA}/real.zip",
    "sketch": f"{_VISDA}/sketch.zip",
}
_MNIST_GZ = {
    # name: (bytes, md5) of the gzipped files, as torchvision's MNIST class publishes them.
    MNIST_FILES["train_images"]: (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    MNIST_FILES["train_labels"]: (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    MNIST_FILES["test_images"]: (1648877, "9fb629c4189551a2d022fa330f9573f3"),
    MNIST_FILES["test_labels"]: (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}
# md5 of the uncompressed IDX bytes (../shared/data/MNIST/MD5SUMS_uncompressed.txt): re-gzipped
# mirrors of MNIST differ in size and md5 from torchvision's files but hold the same bytes.
_MNIST_CONTENT_MD5 = {
    MNIST_FILES["train_images"]: "6bbc9ace898e44ae57da46a324031adb",
    MNIST_FILES["train_labels"]: "a25bea736e30d166cdddb491f175f624",
    MNIST_FILES["test_images"]: "2646ac647ad5339dbf082846283269ea",
    MNIST_FILES["test_labels"]: "27ae3e4e09519cfbb04c329615203637",
}
_WILDS_CODALAB = "https://worksheets.codalab.org/rest/bundles"
_TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")

SOURCES = {
    "PACS": (
        Source("PACS.zip", ("gdrive:1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "gdrive:0B6x7gtvErXgfbF9CSk53UkRxVzg"),
               None, None, f"DomainBed's Drive copy of PACS' kfold folder, SWAD's older id second; {_UNPUBLISHED}"),
    ),
    "VLCS": (
        Source("VLCS.tar.gz", ("gdrive:1skwblH1_okBwxWxmRsp9_qi15hyPpxg8",),
               None, None, f"DomainBed's Drive copy; {_UNPUBLISHED}"),
    ),
    "OfficeHome": (
        Source("office_home.zip", ("gdrive:1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "gdrive:0B81rNlvomiwed0V1YUxQdC1uOTg"),
               None, None, f"DomainBed's Drive copy of OfficeHomeDataset_10072016, SWAD's id second; {_UNPUBLISHED}"),
    ),
    "TerraIncognita": (
        Source("eccv_18_all_images_sm.tar.gz", (f"{_LILA}/eccv_18_all_images_sm.tar.gz",), 6492615601, None,
               "LILA's CCT20 benchmark images (DomainBed's source since its 2024 fix); the size is the one "
               "public download scripts record, no checksum is published"),
        Source("eccv_18_annotations.tar.gz", (f"{_LILA}/eccv_18_annotations.tar.gz",), 2997071, None,
               "LILA's CCT20 annotation files; size as recorded by a public download script, no checksum published"),
    ),
    "DomainNet": tuple(
        Source(url.rsplit("/", 1)[1], (url,), None, None,
               f"the DomainNet authors' archive, the one DomainBed fetches (plain HTTP only); {_UNPUBLISHED}")
        for url in _DOMAIN_NET_ZIPS.values()
    ) + (
        Source("domain_net_duplicates.txt",
               (f"{_DOMAINBED_RAW}/domainbed/misc/domain_net_duplicates.txt",),
               None, None, "DomainBed's list of duplicate images it removes; fetched, not vendored; no checksum"),
    ),
    "SVIRO": (
        Source("sviro_grayscale_rectangle_classification.zip", ("https://sviro.kl.dfki.de/?wpdmdl=1731",),
               None, None, f"the SVIRO authors' DomainBed subset, the archive DomainBed fetches; {_UNPUBLISHED}"),
    ),
    "Spawrious": (
        Source("spawrious224.tar.gz", ("https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1",),
               None, None, "the Spawrious authors' entire dataset (all six challenges), the archive DomainBed "
               "fetches; no size or checksum is published; gzip's CRC is checked on extraction"),
    ),
    # WILDS' own releases, from the URLs and sizes the `wilds` package (2.0) downloads and checks
    "WILDSCamelyon": (
        Source("camelyon17_v1.0.tar.gz", (f"{_WILDS_CODALAB}/0xe45e15f39fb54e9d9e919556af67aabe/contents/blob/",),
               10658709504, None, "WILDS' release 1.0 on CodaLab, the archive the wilds package (and so DomainBed) "
               "fetches; the size is the one the wilds package records, no checksum is published"),
    ),
    "WILDSFMoW": (
        Source("fmow_v1.1.tar.gz", (f"{_WILDS_CODALAB}/0xaec91eb7c9d548ebb15e1b5e60f966ab/contents/blob/",),
               53893324800, None, "WILDS' release 1.1 on CodaLab, the archive the wilds package (and so DomainBed) "
               "fetches; the size is the one the wilds package records, no checksum is published"),
    ),
    "MNIST": tuple(
        Source(f"{name}.gz", tuple(f"{mirror}/{name}.gz" for mirror in _MNIST_MIRRORS), size, f"md5:{md5}",
               "size and md5 as torchvision's MNIST class publishes them; the uncompressed md5 as --verify's",
               content_md5=_MNIST_CONTENT_MD5[name])
        for name, (size, md5) in _MNIST_GZ.items()
    ),
}

# Published image counts per domain: PACS from Li et al. (ICCV 2017), whose per-class counts
# are those of the reference copy in ../shared/data (they add up to the published totals);
# VLCS (10,729), OfficeHome (15,588) and DomainNet after duplicate removal (586,575) from the
# DomainBed paper's dataset table, split per domain as commonly reported (the splits add up to
# those totals); TerraIncognita per location from the SWAD authors (khanrc/miro#9), adding up to
# DomainBed's 24,788. Builds from today's annotation files may differ (24,330 images are
# reported for the 2021 annotation file; see DomainBed#58): --verify then shows the difference.
LAYOUTS = {
    "PACS": ImageFolderLayout.of(
        PACS, {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},
        classes=("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
        class_counts={
            "art_painting": {"dog": 379, "elephant": 255, "giraffe": 285, "guitar": 184, "horse": 201,
                             "house": 295, "person": 449},
            "cartoon": {"dog": 389, "elephant": 457, "giraffe": 346, "guitar": 135, "horse": 324,
                        "house": 288, "person": 405},
            "photo": {"dog": 189, "elephant": 202, "giraffe": 182, "guitar": 186, "horse": 199,
                      "house": 280, "person": 432},
            "sketch": {"dog": 772, "elephant": 740, "giraffe": 753, "guitar": 608, "horse": 816,
                       "house": 80, "person": 160},
        },
    ),
    "VLCS": ImageFolderLayout.of(
        VLCS, {"Caltech101": 1415, "LabelMe": 2656, "SUN09": 3282, "VOC2007": 3376},
        classes=("bird", "car", "chair", "dog", "person"),
    ),
    "OfficeHome": ImageFolderLayout.of(
        OfficeHome, {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real World": 4357}, classes=65,
    ),
    "TerraIncognita": ImageFolderLayout.of(
        TerraIncognita, {"location_100": 4879, "location_38": 9767, "location_43": 4020, "location_46": 6122},
        classes=_TERRA_CATEGORIES,
    ),
    "DomainNet": ImageFolderLayout.of(
        DomainNet, {"clipart": 48129, "infograph": 51605, "painting": 72266, "quickdraw": 172500,
                    "real": 172947, "sketch": 69128},
        classes=345,
    ),
    # No image counts are published for SVIRO's DomainBed subset, nor its classes' names; the
    # folders are counted, not compared
    "SVIRO": ImageFolderLayout.of(SVIRO, {vehicle: None for vehicle in SVIRO.DOMAIN_DIRS}, classes=None),
    # Spawrious nests its domains: <image set>/<location>/<breed>; no per-folder counts are published
    "Spawrious": ImageFolderLayout(
        spawrious.DIRECTORY, {f"{image_set}/{location}": None for image_set in spawrious.IMAGE_SETS
                              for location in spawrious.LOCATIONS},
        classes=spawrious.BREEDS,
    ),
    # WILDS (Koh et al., 2021, table of split sizes): Camelyon17 455,954 patches, hospital 1 its OOD
    # validation split (34,904) and hospital 2 its test split (85,054), hospitals 0, 3 and 4 not
    # published one by one; FMoW 141,696 images outside `seq`, per region not published
    "WILDSCamelyon": MetadataLayout(
        wilds_datasets.WILDSCamelyon.DIRECTORY,
        (wilds_datasets.WILDSCamelyon.RELEASE, wilds_datasets.WILDSCamelyon.METADATA),
        dict(zip(wilds_datasets.WILDSCamelyon.ENVIRONMENTS, (None, 34904, 85054, None, None))), 455954,
        wilds_datasets.camelyon_samples,
    ),
    "WILDSFMoW": MetadataLayout(
        wilds_datasets.WILDSFMoW.DIRECTORY,
        (wilds_datasets.WILDSFMoW.RELEASE, wilds_datasets.WILDSFMoW.METADATA, wilds_datasets.WILDSFMoW.COUNTRIES),
        dict.fromkeys(wilds_datasets.WILDSFMoW.ENVIRONMENTS), 141696, wilds_datasets.fmow_samples,
    ),
    "MNIST": IdxLayout("MNIST", (
        IdxFile(MNIST_FILES["train_images"], 60000, _MNIST_CONTENT_MD5[MNIST_FILES["train_images"]]),
        IdxFile(MNIST_FILES["train_labels"], 60000, _MNIST_CONTENT_MD5[MNIST_FILES["train_labels"]]),
        IdxFile(MNIST_FILES["test_images"], 10000, _MNIST_CONTENT_MD5[MNIST_FILES["test_images"]]),
        IdxFile(MNIST_FILES["test_labels"], 10000, _MNIST_CONTENT_MD5[MNIST_FILES["test_labels"]]),
    )),
}

_BUILDERS = {
    "PACS": build.archive_root("PACS.zip", "kfold"),
    "VLCS": build.archive_root("VLCS.tar.gz", "VLCS"),
    "OfficeHome": build.archive_root("office_home.zip", "OfficeHomeDataset_10072016"),
    "TerraIncognita": build.terra_incognita(
        "eccv_18_all_images_sm.tar.gz", "eccv_18_annotations.tar.gz", images_root="eccv_18_all_images_sm",
        annotation_files=[f"eccv_18_annotation_files/{split}_annotations.json"
                          for split in ("train", "cis_val", "cis_test", "trans_val", "trans_test")],
        locations=("38", "46", "100", "43"),
        categories=_TERRA_CATEGORIES,
    ),
    "DomainNet": build.domain_net([f"{domain}.zip" for domain in _DOMAIN_NET_ZIPS], "domain_net_duplicates.txt"),
    "SVIRO": build.archive_root("sviro_grayscale_rectangle_classification.zip", "SVIRO_DOMAINBED"),
    "Spawrious": build.archive_root("spawrious224.tar.gz", spawrious.DIRECTORY),
    "WILDSCamelyon": build.archive_contents("camelyon17_v1.0.tar.gz", wilds_datasets.WILDSCamelyon.DIRECTORY),
    "WILDSFMoW": build.archive_contents("fmow_v1.1.tar.gz", wilds_datasets.WILDSFMoW.DIRECTORY),
    "MNIST": build.mnist([f"{name}.gz" for name in _MNIST_GZ]),
}

DATASETS = {name: Dataset(name, LAYOUTS[name], SOURCES[name], _BUILDERS[name]) for name in SOURCES}

# Datasets of the harness that read another's folder: the MNIST-based ones read the one MNIST folder.
ALIASES = {"RotatedMNIST": "MNIST", "ColoredMNIST": "MNIST",
           # the six Spawrious challenges read the one spawrious224 folder
           **{name: "Spawrious" for name in ("SpawriousO2O_easy", "SpawriousO2O_medium", "SpawriousO2O_hard",
                                             "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard")}}
