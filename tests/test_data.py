"""convsim.data: parsers on tiny generated files, look-up order, downloads (no network), loaders."""

import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from convsim import data
from convsim.data import DatasetError, DatasetNotFoundError

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
HAS_SYSTEM_FASHION = all((SYSTEM_FASHION / f).is_file() for f in data._IDX_FILES["train"] + data._IDX_FILES["test"])


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, a private HOME (so ~/.cache/convsim is empty), no $CONVSIM_DATA, no system copy."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVSIM_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})


# ---------------------------------------------------------------------------------------------
# helpers: write tiny files in the publishers' formats
# ---------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_bytes(path: Path, raw: bytes, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_idx_split(folder: Path, split: str = "train", n: int = 20, seed: int = 0, gz: bool = True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    img_name, lbl_name = data._IDX_FILES[split]
    if not gz:
        img_name, lbl_name = img_name[:-3], lbl_name[:-3]
    write_bytes(folder / img_name, idx_bytes(images), gz)
    write_bytes(folder / lbl_name, idx_bytes(labels), gz)
    return images, labels


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"test",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
    }


def write_cifar_dir(folder: Path, n: int = 4) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(data._CIFAR_BATCHES["train"] + data._CIFAR_BATCHES["test"]):
        batches[name] = cifar_batch(n, seed=i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return batches


def write_cifar_tar(path: Path, batches: dict, skip: tuple = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            if name in skip:
                continue
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{data._CIFAR_DIR}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def expected_cifar(batches: dict, split: str):
    names = data._CIFAR_BATCHES[split]
    rows = np.concatenate([batches[b][b"data"] for b in names])
    labels = np.concatenate([batches[b][b"labels"] for b in names])
    # Reference layout, written out slowly: each row is 1024 R, 1024 G, 1024 B values, row-major.
    images = np.zeros((rows.shape[0], 3, 32, 32), dtype=np.uint8)
    for i in range(rows.shape[0]):
        for c in range(3):
            for y in range(32):
                images[i, c, y] = rows[i, c * 1024 + y * 32 : c * 1024 + (y + 1) * 32]
    return images, labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# idx parser
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_any_shape(tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, size=(3, 5, 7), dtype=np.uint8)
    path = write_bytes(tmp_path / "x-idx3-ubyte", idx_bytes(arr), gz)
    out = data.read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def test_read_idx_truncated_data_names_file(tmp_path):
    raw = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10]
    path = write_bytes(tmp_path / "short-idx3-ubyte.gz", raw)
    with pytest.raises(DatasetError, match=r"short-idx3-ubyte\.gz: truncated: dims \(4, 28, 28\)"):
        data.read_idx(path, ndim=3)


def test_read_idx_trailing_bytes_rejected(tmp_path):
    path = write_bytes(tmp_path / "long-idx1-ubyte.gz", idx_bytes(np.zeros(5, np.uint8)) + b"\0")
    with pytest.raises(DatasetError, match=r"long-idx1-ubyte\.gz: trailing bytes"):
        data.read_idx(path, ndim=1)


@pytest.mark.parametrize("header", [bytes([0, 0, 8, 1]), bytes([0, 0, 0x0D, 3]), bytes([1, 0, 8, 3])])
def test_read_idx_wrong_magic_names_file(tmp_path, header):
    raw = header + struct.pack(">3I", 1, 2, 2) + bytes(4)
    path = write_bytes(tmp_path / "magic.gz", raw)
    with pytest.raises(DatasetError, match=r"magic\.gz: bad idx magic number .* expected 0x00000803"):
        data.read_idx(path, ndim=3)


def test_read_idx_truncated_header_names_file(tmp_path):
    path = write_bytes(tmp_path / "hdr.gz", bytes([0, 0, 8, 3]) + struct.pack(">I", 2))
    with pytest.raises(DatasetError, match=r"hdr\.gz: truncated idx header"):
        data.read_idx(path, ndim=3)


def test_read_idx_corrupt_gzip_names_file(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"cut\.gz: corrupt or truncated gzip"):
        data.read_idx(path)


# ---------------------------------------------------------------------------------------------
# idx datasets: layout, look-up order, consistency checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["subfolder", "flat", "uncompressed"])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_load_idx_from_root(tmp_path, name, layout):
    folder = tmp_path / "d" / name if layout == "subfolder" else tmp_path / "d"
    images, labels = write_idx_split(folder, "test", gz=layout != "uncompressed")
    x, y = data.load(name, "test", root=tmp_path / "d")
    assert x.dtype == torch.uint8 and x.shape == (20, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (20,)
    assert torch.equal(x[:, 0], torch.from_numpy(images))
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


def test_load_accepts_root_as_str_and_name_alias(tmp_path):
    images, _ = write_idx_split(tmp_path / "fashion-mnist")
    x, _ = data.load("Fashion_MNIST", "train", root=str(tmp_path))
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def _first_image_seed(x: torch.Tensor, candidates: dict) -> str:
    return next(k for k, v in candidates.items() if torch.equal(x[:, 0], torch.from_numpy(v)))


@pytest.mark.parametrize(
    "present,winner",
    [
        (("root", "env", "cache", "system"), "root"),
        (("env", "cache", "system"), "env"),
        (("cache", "system"), "cache"),
        (("system",), "system"),
    ],
)
def test_lookup_order_root_env_cache_system(tmp_path, monkeypatch, present, winner):
    folders = {
        "root": tmp_path / "root",
        "env": tmp_path / "env",
        "cache": tmp_path / "home" / ".cache" / "convsim",
        "system": tmp_path / "sys",
    }
    written = {}
    for seed, key in enumerate(present):
        target = folders[key] if key == "system" else folders[key] / "fashion-mnist"
        written[key] = write_idx_split(target, "train", seed=seed)[0]
    if "system" in present:  # let the fake system copy pass the Debian size check
        for f in data._IDX_FILES["train"]:
            p = folders["system"] / f
            monkeypatch.setitem(data._DEBIAN_FASHION, f, (p.stat().st_size, md5(p)))
    monkeypatch.setenv("CONVSIM_DATA", str(folders["env"]))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (folders["system"],)})
    x, _ = data.load("fashion-mnist", "train", root=folders["root"])
    assert _first_image_seed(x, written) == winner


def test_lookup_needs_both_files_in_one_folder(tmp_path, monkeypatch):
    # Images alone in root must not be paired with labels from elsewhere.
    write_bytes(tmp_path / "root" / data._IDX_FILES["train"][0], idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    images, _ = write_idx_split(tmp_path / "env", "train", seed=5)
    monkeypatch.setenv("CONVSIM_DATA", str(tmp_path / "env"))
    x, _ = data.load("fashion-mnist", "train", root=tmp_path / "root")
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_image_label_count_mismatch_raises(tmp_path):
    write_bytes(tmp_path / data._IDX_FILES["train"][0], idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    write_bytes(tmp_path / data._IDX_FILES["train"][1], idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetError, match="3 images but .*train-labels-idx1-ubyte.gz has 4 labels"):
        data.load("mnist", "train", root=tmp_path)


def test_wrong_image_size_raises(tmp_path):
    write_bytes(tmp_path / data._IDX_FILES["train"][0], idx_bytes(np.zeros((2, 32, 32), np.uint8)))
    write_bytes(tmp_path / data._IDX_FILES["train"][1], idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: images are 32x32, mnist has 28x28"):
        data.load("mnist", "train", root=tmp_path)


def test_label_out_of_range_raises(tmp_path):
    write_bytes(tmp_path / data._IDX_FILES["test"][0], idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    write_bytes(tmp_path / data._IDX_FILES["test"][1], idx_bytes(np.array([3, 10], np.uint8)))
    with pytest.raises(DatasetError, match=r"label 10 out of range 0\.\.9"):
        data.load("mnist", "test", root=tmp_path)


def test_missing_fashion_mnist_lists_every_way(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        data.load("fashion-mnist", "train", root=tmp_path)
    msg = str(err.value)
    for needle in (
        "root=DIR",
        "CONVSIM_DATA",
        str(tmp_path / "home" / ".cache" / "convsim"),
        "dataset-fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
        "download=True",
        "train-images-idx3-ubyte.gz",
        str(tmp_path / "fashion-mnist"),
    ):
        assert needle in msg, needle
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_missing_mnist_does_not_offer_the_debian_package(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ossci-datasets") as err:
        data.load("mnist", "test", root=tmp_path)
    assert "dataset-fashion-mnist" not in str(err.value)


def test_system_copy_with_wrong_size_and_unknown_md5_is_rejected(tmp_path, monkeypatch):
    write_idx_split(tmp_path / "sys", "test")
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "sys",)})
    with pytest.raises(
        DatasetError,
        match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch: md5 [0-9a-f]{32}"
        r".*reinstall dataset-fashion-mnist",
    ):
        data.load("fashion-mnist", "test")


def test_system_copy_with_known_md5_but_other_size_is_accepted(tmp_path, monkeypatch):
    images, _ = write_idx_split(tmp_path / "sys", "test")
    for f in data._IDX_FILES["test"]:  # as if a re-packaged copy had a published checksum
        monkeypatch.setitem(data._DEBIAN_FASHION, f, (1, md5(tmp_path / "sys" / f)))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "sys",)})
    x, _ = data.load("fashion-mnist", "test")
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_verify_rejects_files_with_unpublished_md5(tmp_path):
    write_idx_split(tmp_path, "test")
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        data.load("mnist", "test", root=tmp_path, verify=True)


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("layout", ["batch-dir", "flat", "archive"])
def test_load_cifar_layouts(tmp_path, split, layout):
    root = tmp_path / "r"
    if layout == "batch-dir":
        batches = write_cifar_dir(root / "cifar10" / data._CIFAR_DIR)
    elif layout == "flat":
        batches = write_cifar_dir(root / "cifar10")
    else:
        batches = write_cifar_dir(tmp_path / "src")
        write_cifar_tar(root / data._CIFAR_ARCHIVE, batches)
    x, y = data.load("cifar10", split, root=root)
    ex, ey = expected_cifar(batches, split)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(ex)) and torch.equal(y, torch.from_numpy(ey))


def test_cifar_batch_reads_legacy_numpy_core_pickles(tmp_path):
    # The published batches name numpy.core.multiarray (numpy 2 writes numpy._core).
    batch = cifar_batch(3, seed=0)
    raw = pickle.dumps(batch, protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert legacy != raw
    x, y = data.read_cifar_batch(io.BytesIO(legacy), "legacy")
    assert np.array_equal(x.reshape(3, -1), batch[b"data"]) and y.tolist() == batch[b"labels"]


def test_cifar_batch_rejects_code_in_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match=r"data_batch_1: not a readable CIFAR batch .*posix\.mkdir"):
        data.read_cifar_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj,match",
    [
        ([1, 2], "expected a pickled dict, got list"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "expected keys b'data' and b'labels'"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, r"b.data. must be uint8 of shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"b.data. must be uint8 of shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must lie in 0\.\.9"),
    ],
)
def test_cifar_batch_validation_names_file(tmp_path, obj, match):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DatasetError, match="test_batch: " + match):
        data.read_cifar_batch(path)


def test_cifar_truncated_batch_names_file(tmp_path):
    root = tmp_path / "cifar10"
    write_cifar_dir(root)
    raw = (root / "test_batch").read_bytes()
    (root / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR batch"):
        data.load("cifar10", "test", root=tmp_path)


def test_cifar_truncated_archive_names_file(tmp_path):
    archive = write_cifar_tar(tmp_path / "src" / data._CIFAR_ARCHIVE, write_cifar_dir(tmp_path / "b"))
    raw = archive.read_bytes()
    (tmp_path / data._CIFAR_ARCHIVE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz: corrupt or truncated archive"):
        data.load("cifar10", "train", root=tmp_path)


def test_cifar_archive_missing_member_raises(tmp_path):
    write_cifar_tar(tmp_path / data._CIFAR_ARCHIVE, write_cifar_dir(tmp_path / "b"), skip=("data_batch_3",))
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz: archive lacks data_batch_3"):
        data.load("cifar10", "train", root=tmp_path)


def test_cifar_verify_rejects_unpublished_archive(tmp_path):
    write_cifar_tar(tmp_path / data._CIFAR_ARCHIVE, write_cifar_dir(tmp_path / "b"))
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz: checksum mismatch: md5 .*c58f3010"):
        data.load("cifar10", "test", root=tmp_path, verify=True)


def test_cifar_missing_lists_ways(tmp_path):
    with pytest.raises(
        DatasetNotFoundError,
        match=r"(?s)cifar-10-python\.tar\.gz.*CONVSIM_DATA.*"
        r"download=True.*cs\.toronto\.edu",
    ):
        data.load("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# download (file:// URLs and a patched opener; never the network)
# ---------------------------------------------------------------------------------------------


def serve_split(monkeypatch, tmp_path, name="mnist", split="test", algorithm="md5", corrupt=None, dead_mirror=False):
    """Write the split's files to a 'server' folder and point RESOURCES at them via file:// URLs."""
    images, labels = write_idx_split(tmp_path / "server", split)
    table = dict(data.RESOURCES[name])
    for f in data._IDX_FILES[split]:
        src = tmp_path / "server" / f
        digest = hashlib.new(algorithm, src.read_bytes()).hexdigest()
        if f == corrupt:
            digest = "0" * len(digest)
        urls = (src.as_uri(),)
        if dead_mirror:
            urls = ((tmp_path / "nowhere" / f).as_uri(),) + urls
        table[f] = data._Resource(f, urls, f"{algorithm}:{digest}")
    monkeypatch.setitem(data.RESOURCES, name, table)
    return images, labels


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_download_verifies_and_saves_into_root(tmp_path, monkeypatch, algorithm):
    images, labels = serve_split(monkeypatch, tmp_path, algorithm=algorithm)
    x, y = data.load("mnist", "test", root=tmp_path / "root", download=True)
    assert torch.equal(x[:, 0], torch.from_numpy(images))
    saved = sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir())
    assert saved == sorted(data._IDX_FILES["test"])  # no temporary files left


def test_download_without_root_goes_to_cache(tmp_path, monkeypatch):
    serve_split(monkeypatch, tmp_path)
    data.load("mnist", "test", download=True)
    cached = tmp_path / "home" / ".cache" / "convsim" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(data._IDX_FILES["test"])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    bad = data._IDX_FILES["test"][0]
    serve_split(monkeypatch, tmp_path, corrupt=bad)
    good = hashlib.md5((tmp_path / "server" / bad).read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match=f"checksum mismatch for {bad}.*expected md5 0{{32}}, got {good}"):
        data.load("mnist", "test", root=tmp_path / "root", download=True)
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_download_tries_next_mirror(tmp_path, monkeypatch):
    images, _ = serve_split(monkeypatch, tmp_path, dead_mirror=True)
    x, _ = data.load("mnist", "test", root=tmp_path / "root", download=True)
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_download_broken_transfer_leaves_nothing(tmp_path, monkeypatch):
    serve_split(monkeypatch, tmp_path)

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset")
            return super().read(16)

    monkeypatch.setattr(data, "_open_url", lambda url: Broken(b"x" * 64))
    with pytest.raises(DatasetError, match="(?s)could not download t10k-images.*connection reset"):
        data.load("mnist", "test", root=tmp_path / "root", download=True)
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_download_renames_only_after_verification(tmp_path, monkeypatch):
    """While bytes stream in, the destination name does not exist yet (atomic rename)."""
    serve_split(monkeypatch, tmp_path)
    dest_dir = tmp_path / "root" / "mnist"
    seen = []
    real_open = data._open_url

    class Watching(io.BytesIO):
        def __init__(self, url):
            super().__init__(real_open(url).read())
            self.dest = dest_dir / url.rsplit("/", 1)[1]

        def read(self, n=-1):
            seen.append(self.dest.exists())
            return super().read(n)

    monkeypatch.setattr(data, "_open_url", Watching)
    data.load("mnist", "test", root=tmp_path / "root", download=True)
    assert seen and not any(seen)
    assert all((dest_dir / f).is_file() for f in data._IDX_FILES["test"])


def test_download_is_skipped_when_data_present(tmp_path, monkeypatch):
    images, _ = write_idx_split(tmp_path / "mnist", "train")
    monkeypatch.setattr(data, "_open_url", lambda url: pytest.fail("downloaded although present"))
    x, _ = data.load("mnist", "train", root=tmp_path, download=True)
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_published_checksums_are_well_formed():
    for table in data.RESOURCES.values():
        for res in table.values():
            algorithm, digest = res.checksum.split(":")
            assert algorithm == "md5" and len(digest) == 32 and int(digest, 16) >= 0
            assert all(u.startswith("https://") or u.startswith("http://fashion-mnist.s3") for u in res.urls)


# ---------------------------------------------------------------------------------------------
# real Fashion-MNIST (Debian package), digits, synthetic
# ---------------------------------------------------------------------------------------------

needs_fashion = pytest.mark.skipif(not HAS_SYSTEM_FASHION, reason="Debian dataset-fashion-mnist not installed")


@needs_fashion
def test_real_fashion_mnist_train(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (SYSTEM_FASHION,)})
    x, y = data.load("fashion-mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.bincount().tolist() == [6000] * 10
    f = x.double() / 255
    assert f.mean().item() == pytest.approx(data.DATASETS["fashion-mnist"].mean[0], abs=1e-4)
    assert f.std().item() == pytest.approx(data.DATASETS["fashion-mnist"].std[0], abs=1e-4)


@needs_fashion
def test_real_fashion_mnist_test_passes_md5_verification(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (SYSTEM_FASHION,)})
    x, y = data.load("fashion-mnist", "test", verify=True)
    assert x.shape == (10000, 1, 28, 28) and y.bincount().tolist() == [1000] * 10


def test_digits_splits_partition_the_bundled_set():
    from sklearn.datasets import load_digits

    ref = load_digits()
    xtr, ytr = data.load("digits", "train")
    xte, yte = data.load("digits", "test")
    info = data.DATASETS["digits"]
    assert xtr.shape == (info.train_size, 1, 8, 8) and xte.shape == (info.test_size, 1, 8, 8)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    # Slow reference of the documented rule: per class, every fifth image in order is test.
    seen, test_rows = {}, []
    for i, c in enumerate(ref.target):
        seen[c] = seen.get(c, 0) + 1
        if seen[c] % 5 == 0:
            test_rows.append(i)
    expected = np.round(ref.images[test_rows] * 255 / 16).astype(np.uint8)
    assert torch.equal(xte[:, 0], torch.from_numpy(expected))
    assert torch.equal(yte, torch.from_numpy(ref.target[test_rows].astype(np.int64)))
    assert int(xtr.max()) == 255 and int(xtr.min()) == 0


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_generated_sets_match_their_table_stats(name):
    x, y = data.load(name, "train")
    info = data.DATASETS[name]
    f = x.double() / 255
    assert f.mean().item() == pytest.approx(info.mean[0], abs=1e-4)
    assert f.std().item() == pytest.approx(info.std[0], abs=1e-4)
    assert x.shape[1:] == (info.channels, info.size, info.size) and int(y.max()) == info.classes - 1


def test_synthetic_is_deterministic_and_balanced():
    x1, y1 = data.load("synthetic", "test")
    x2, y2 = data.load("synthetic", "test")
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (500, 1, 28, 28) and y1.bincount().tolist() == [50] * 10


def test_synthetic_seed_changes_samples():
    x1, _ = data.make_synthetic(2, seed=0)
    x2, _ = data.make_synthetic(2, seed=1)
    assert not torch.equal(x1, x2)


def test_synthetic_is_learnable():
    xtr, ytr = data.load("synthetic", "train")
    xte, yte = data.load("synthetic", "test")
    means = torch.stack([xtr[ytr == c].double().flatten(1).mean(0) for c in range(10)])
    pred = torch.cdist(xte.double().flatten(1), means).argmin(1)
    acc = (pred == yte).double().mean().item()
    assert 0.6 < acc < 0.95  # learnable, but not solved by template matching


def test_make_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_per_class must be an int >= 1"):
        data.make_synthetic(0, seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        data.make_synthetic(1, seed=0.5)


# ---------------------------------------------------------------------------------------------
# load() arguments, DATASETS, normalize, subset
# ---------------------------------------------------------------------------------------------


def test_load_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; expected one of fashion-mnist, mnist"):
        data.load("imagenet", "train")


def test_load_rejects_bad_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        data.load("digits", "val")


def test_dataset_info_reads_as_mapping():
    info = data.DATASETS["cifar10"]
    assert info["channels"] == info.channels == 3 and len(info["mean"]) == 3
    with pytest.raises(KeyError):
        info["nope"]


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_normalize_matches_per_pixel_reference(name):
    info = data.DATASETS[name]
    x = torch.randint(0, 256, (3, info.channels, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = data.normalize(x, name)
    ref = torch.empty(x.shape, dtype=torch.float64)
    for n, c, i, j in np.ndindex(*x.shape):
        ref[n, c, i, j] = (x[n, c, i, j].item() / 255 - info.mean[c]) / info.std[c]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6)


def test_normalize_overrides_stats():
    x = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    out = data.normalize(x, "cifar10", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(out.flatten(), expected)


def test_normalize_rejects_wrong_channels_and_dtype():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3, H, W\) for cifar10"):
        data.normalize(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "cifar10")
    with pytest.raises(TypeError, match="uint8 tensor, got torch.float32"):
        data.normalize(torch.zeros(2, 1, 4, 4), "mnist")


def _reference_counts(labels: list, n: int) -> dict:
    """Largest-remainder allocation written out with plain Python."""
    total = len(labels)
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    take = {c: (k * n) // total for c, k in counts.items()}
    rema = sorted(counts, key=lambda c: (-(counts[c] * n / total - take[c]), c))
    for c in rema[: n - sum(take.values())]:
        take[c] += 1
    return take


@pytest.mark.parametrize("n", [1, 7, 50, 99])
def test_subset_is_stratified(n):
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, 6, (100,), generator=g) ** 2  # uneven classes, non-contiguous ids
    idx = data.subset_indices(labels, n, seed=3)
    assert idx.numel() == n and torch.equal(idx, idx.unique())  # sorted, no repeats
    got = {c: int((labels[idx] == c).sum()) for c in labels.unique().tolist()}
    ref = _reference_counts(labels.tolist(), n)
    assert got == ref


def test_subset_is_seeded():
    x, y = data.load("digits", "train")
    a = data.subset(x, y, 200, seed=0)
    b = data.subset(x, y, 200, seed=0)
    c = data.subset(x, y, 200, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_subset_rejects_bad_n():
    y = torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"n must be an int in 1\.\.10, got 11"):
        data.subset(torch.zeros(10, 1, 2, 2), y, 11, seed=0)
    with pytest.raises(ValueError, match="as many rows as labels"):
        data.subset(torch.zeros(9, 1, 2, 2), y, 5, seed=0)
