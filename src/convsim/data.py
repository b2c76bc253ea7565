"""Image-classification data, offline first: Fashion-MNIST, MNIST, CIFAR-10, digits, synthetic.

Every loader returns the whole split as two tensors kept in memory (no ``DataLoader`` workers):
``images`` uint8 of shape (N, C, H, W) and ``labels`` int64 of shape (N,).

File-based sets (``fashion-mnist``, ``mnist``, ``cifar10``) are looked up, in this order, in

1. the ``root`` argument,
2. ``$CONVSIM_DATA`` (several folders may be joined with ``os.pathsep``),
3. ``~/.cache/convsim`` (where ``download=True`` saves when no ``root`` is given),
4. Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``).

Under a folder ``D`` the files may lie in ``D/<name>/`` or directly in ``D``. The first folder
holding every file of the split wins. Idx files may be gzipped (``*.gz``, as published) or not.
CIFAR-10 is read from the python-pickle batches (``cifar-10-batches-py/``, or the batch files
directly) or straight from the ``cifar-10-python.tar.gz`` archive.

Errors: a file that is truncated, corrupt, of the wrong kind or fails a checksum raises
:class:`DatasetError` (a ``ValueError``) naming the file and what was wrong; a dataset that is
nowhere to be found raises :class:`DatasetNotFoundError` (a ``DatasetError`` and a
``FileNotFoundError``) whose message lists every way to get it.

``download=True`` fetches missing files from the original publishers, streams each to a
temporary name beside its destination while hashing it, and renames it into place only when the
checksum matches (see ``convsim._internal.files.atomic_write``): a mismatch or a broken transfer leaves nothing
behind.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import pickle
import struct
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from convsim._internal.errors import UserError
from convsim._internal.files import atomic_write

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "cache_dir",
    "load",
    "make_synthetic",
    "normalize",
    "read_cifar_batch",
    "read_idx",
    "subset",
    "subset_indices",
]

SPLITS = ("train", "test")


class DatasetError(UserError, ValueError):
    """A data file is truncated, corrupt, of the wrong format, or fails its checksum (a user error: see
    :class:`convsim._internal.errors.UserError`)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset is in none of the places searched; the message lists every way to get it."""


# ----------------------------------------------------------------------------------------------
# Dataset table
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a trainer needs to know about a dataset.

    ``mean``/``std`` are per-channel statistics of the training split on the [0, 1] scale (pixel
    value / 255), used by :func:`normalize`. ``size`` is the side of the square images.
    Fields can also be read as ``info["channels"]``.
    """

    name: str
    channels: int
    size: int
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    train_size: int
    test_size: int
    source: str

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


_DIGIT_NAMES = tuple(str(i) for i in range(10))

#: name -> :class:`DatasetInfo`. Statistics: Fashion-MNIST 0.2860/0.3530 and MNIST 0.1307/0.3081
#: (the customary values, both training-split pixel statistics); CIFAR-10 its own training-split
#: channel statistics (not the ImageNet ones the CS authors' CIFAR script used; pass ``mean``/``std``
#: to :func:`normalize` to reproduce that); digits and synthetic computed from their training
#: splits as built here (the tests recompute all that are available offline).
DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        1,
        28,
        10,
        (0.2860,),
        (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        60000,
        10000,
        "Zalando Research (idx files)",
    ),
    "mnist": DatasetInfo(
        "mnist",
        1,
        28,
        10,
        (0.1307,),
        (0.3081,),
        _DIGIT_NAMES,
        60000,
        10000,
        "LeCun, Cortes, Burges (idx files)",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        3,
        32,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        50000,
        10000,
        "Krizhevsky, Toronto (python pickle batches)",
    ),
    "digits": DatasetInfo(
        "digits",
        1,
        8,
        10,
        (0.3052,),
        (0.3760,),
        _DIGIT_NAMES,
        1442,
        355,
        "scikit-learn load_digits (bundled, 1,797 images)",
    ),
    "synthetic": DatasetInfo(
        "synthetic",
        1,
        28,
        10,
        (0.2058,),
        (0.2505,),
        tuple(f"pattern {i}" for i in range(10)),
        2000,
        500,
        "generated by convsim.data.make_synthetic",
    ),
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


def _dataset_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return key


# ----------------------------------------------------------------------------------------------
# Files, publishers and checksums
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resource:
    filename: str
    urls: tuple[str, ...]
    checksum: str  # "md5:<hex>" or "sha256:<hex>"


_FASHION_URLS = (
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _resources(base_urls: Sequence[str], md5s: dict[str, str]) -> dict[str, _Resource]:
    return {f: _Resource(f, tuple(u + f for u in base_urls), "md5:" + m) for f, m in md5s.items()}


# Publishers' md5s (Zalando's README; torchvision's mnist.py and cifar.py list the same values).
RESOURCES: dict[str, dict[str, _Resource]] = {
    "fashion-mnist": _resources(
        _FASHION_URLS,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": _resources(
        _MNIST_URLS,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": _resources((_CIFAR_URL,), {_CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a"}),
}

# Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1) re-gzips the four files: same
# decompressed bytes (60,000/10,000 images, 6,000/1,000 per class), other .gz bytes. Sizes and
# md5s below were measured on the installed package (sha256 in the comments).
_DEBIAN_FASHION = {
    # sha256 b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
    "train-images-idx3-ubyte.gz": (26421856, "cf8536b0aa1a6ac5fa3f23001093305c"),
    # sha256 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
    "train-labels-idx1-ubyte.gz": (29491, "10bea18fdb374794d4bb42e356e600c9"),
    # sha256 cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
    "t10k-images-idx3-ubyte.gz": (4422079, "f78720b4224f21cce2f2ccf2d7a94c9a"),
    # sha256 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
    "t10k-labels-idx1-ubyte.gz": (5125, "0d30e22e447f3c33dab9ed536400ac01"),
}

# md5s of the extracted CIFAR-10 batches (the publisher's, as listed by torchvision).
_CIFAR_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

#: Read-only system copies searched last (tests may point these elsewhere).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def _known_md5s(name: str, filename: str) -> set[str]:
    known = set()
    res = RESOURCES.get(name, {}).get(filename)
    if res is not None and res.checksum.startswith("md5:"):
        known.add(res.checksum[4:])
    if name == "fashion-mnist" and filename in _DEBIAN_FASHION:
        known.add(_DEBIAN_FASHION[filename][1])
    if name == "cifar10" and filename in _CIFAR_BATCH_MD5:
        known.add(_CIFAR_BATCH_MD5[filename])
    return known


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_md5(name: str, path: Path) -> None:
    known = _known_md5s(name, path.name)
    if not known:
        raise DatasetError(f"{path}: no known checksum for this file name, so it cannot be verified")
    got = _file_digest(path, "md5")
    if got not in known:
        raise DatasetError(f"{path}: checksum mismatch: md5 {got}, expected one of {sorted(known)}")


def _check_system_copy(path: Path) -> None:
    """Cheap integrity check of the Debian copy: its size, and the md5 only if the size is off."""
    entry = _DEBIAN_FASHION.get(path.name)
    if entry is None:
        return
    size = path.stat().st_size
    if size != entry[0]:
        try:
            _verify_md5("fashion-mnist", path)  # a re-packaged but intact copy still passes
        except DatasetError as e:
            raise DatasetError(
                f"{e}; its size is {size} bytes, the Debian package installs "
                f"{entry[0]}: reinstall dataset-fashion-mnist"
            ) from None


# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: corrupt or truncated gzip stream ({e})") from e


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Parse one idx file (gzipped or not) of unsigned bytes into a uint8 array.

    Format (big-endian): two zero bytes, the type code ``0x08`` (unsigned byte), the number of
    dimensions ``d``; then ``d`` int32 sizes; then ``prod(sizes)`` data bytes, nothing after.
    So the magic number is ``0x00000801`` for labels (d = 1) and ``0x00000803`` for images.

    Args:
        path: the file.
        ndim: the number of dimensions the caller expects (checked), or None for any.

    Returns:
        a writable uint8 array of shape ``sizes``.

    Raises:
        DatasetError: naming the file: bad gzip stream, wrong magic number, short header, or a
            data length other than ``prod(sizes)`` (truncated or with trailing bytes).

    Example:
        >>> import gzip, tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
        >>> _ = p.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 2])))
        >>> read_idx(p, ndim=1)
        array([7, 1, 2], dtype=uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    d = raw[3]
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or d == 0 or (ndim is not None and d != ndim):
        want = f"0x{0x800 + ndim:08x}" if ndim is not None else "0x000008NN"
        raise DatasetError(f"{path}: bad idx magic number 0x{magic:08x}, expected {want} (unsigned bytes)")
    header = 4 + 4 * d
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{d}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes"
        raise DatasetError(f"{path}: {what}: dims {tuple(dims)} need {expected} data bytes, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch contains (numpy arrays, lists, bytes): no code runs."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith(("numpy.core.", "numpy._core.")):
            # numpy 2 renamed numpy.core to numpy._core; accept pickles from either side.
            tail = module.split(".", 2)[2]
            for prefix in ("numpy._core.", "numpy.core."):
                try:
                    return getattr(importlib.import_module(prefix + tail), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def read_cifar_batch(file: str | os.PathLike | BinaryIO, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 python batch into ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    A batch is a pickled dict with ``b"data"``: uint8 (N, 3072), rows stored channel-major
    (1024 red, 1024 green, 1024 blue, each row-major 32×32), and ``b"labels"``: N ints in 0..9.
    Unpickling is restricted to numpy arrays and plain containers, so a tampered file cannot run
    code.

    Args:
        file: a path or a binary file object.
        source: the name used in error messages (default: the path).

    Raises:
        DatasetError: naming the file: not a pickle, not a dict, missing keys, wrong shapes or
            dtypes, or labels out of range.

    Example:
        >>> import io, pickle, numpy as np
        >>> b = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 9]})
        >>> x, y = read_cifar_batch(io.BytesIO(b), "batch")
        >>> x.shape, y.tolist()
        ((2, 3, 32, 32), [3, 9])
    """
    source = source or str(file)
    try:
        if isinstance(file, (str, os.PathLike)):
            with open(file, "rb") as f:
                obj = _BatchUnpickler(f, encoding="bytes").load()
        else:
            obj = _BatchUnpickler(file, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
    ) as e:
        raise DatasetError(f"{source}: not a readable CIFAR batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DatasetError(f"{source}: expected keys b'data' and b'labels', found {sorted(obj)}")
    data, labels = obj["data"], obj["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{source}: b'data' must be uint8 of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{source}: b'labels' is not a list of integers ({e})") from e
    if labels.shape[0] != data.shape[0]:
        raise DatasetError(f"{source}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{source}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32).copy(), labels


# ----------------------------------------------------------------------------------------------
# Look-up
# ----------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``~/.cache/convsim``: the last user folder searched, and where downloads go by default."""
    return Path.home() / ".cache" / "convsim"


def _user_roots(root: str | os.PathLike | None) -> list[Path]:
    roots = []
    if root is not None:
        roots.append(Path(root).expanduser())
    env = os.environ.get("CONVSIM_DATA", "")
    roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    roots.append(cache_dir())
    return roots


def _candidate_dirs(name: str, root: str | os.PathLike | None) -> list[tuple[Path, bool]]:
    """(folder, is_system_copy) in look-up order."""
    dirs = []
    for r in _user_roots(root):
        dirs += [(r / name, False), (r, False)]
    dirs += [(d, True) for d in SYSTEM_DIRS.get(name, ())]
    return dirs


def _find_file(folder: Path, filename: str) -> Path | None:
    """``filename`` in ``folder``, or its un-gzipped twin."""
    for cand in (filename, filename[:-3] if filename.endswith(".gz") else None):
        if cand and (folder / cand).is_file():
            return folder / cand
    return None


def _locate_idx(name: str, split: str, root: str | os.PathLike | None) -> tuple[list[Path], bool] | None:
    for folder, system in _candidate_dirs(name, root):
        found = [p for p in (_find_file(folder, f) for f in _IDX_FILES[split]) if p is not None]
        if len(found) == len(_IDX_FILES[split]):
            return found, system
    return None


def _locate_cifar(split: str, root: str | os.PathLike | None) -> tuple[str, Path] | None:
    """("dir", folder holding the batches) or ("tar", archive path)."""
    for folder, _ in _candidate_dirs("cifar10", root):
        for batch_dir in (folder / _CIFAR_DIR, folder):
            if all((batch_dir / b).is_file() for b in _CIFAR_BATCHES[split]):
                return "dir", batch_dir
        if (folder / _CIFAR_ARCHIVE).is_file():
            return "tar", folder / _CIFAR_ARCHIVE
    return None


def _not_found(name: str, split: str, root: str | os.PathLike | None) -> DatasetNotFoundError:
    wanted = (
        " and ".join(_IDX_FILES[split])
        if name != "cifar10"
        else f"{_CIFAR_DIR}/{{{','.join(_CIFAR_BATCHES[split])}}} or {_CIFAR_ARCHIVE}"
    )
    looked = "\n".join(f"    {d}" for d, _ in _candidate_dirs(name, root))
    urls = sorted({u.rsplit("/", 1)[0] + "/" for r in RESOURCES[name].values() for u in r.urls})
    ways = [
        f"pass root=DIR to load() (files in DIR/{name}/ or directly in DIR)",
        "set the environment variable CONVSIM_DATA=DIR (same layout)",
        f"copy the files into {cache_dir() / name}/",
    ]
    if name == "fashion-mnist":
        ways.append(
            "install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist), which provides "
            "/usr/share/datasets/fashion-mnist/"
        )
    ways.append(
        f"call load({name!r}, {split!r}, download=True) to fetch from {', '.join(urls)} "
        "and verify the published checksums"
    )
    return DatasetNotFoundError(
        f"{name} ({split} split) not found; get it in one of the ways listed below "
        f"(on the command line: --download, or --data-dir DIR)\nLooked for {wanted} in\n{looked}\n"
        "Ways to get it:\n" + "\n".join(f"  - {w}" for w in ways)
    )


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def _open_url(url: str) -> BinaryIO:
    """A readable binary stream for ``url`` (tests replace this; ``file://`` works too)."""
    return urllib.request.urlopen(url, timeout=60)


def _download(resource: _Resource, folder: Path) -> Path:
    """Fetch ``resource`` into ``folder``, verifying its checksum before the final rename.

    Mirrors are tried in order when one cannot be reached; a checksum mismatch raises at once.
    """
    algorithm, expected = resource.checksum.split(":", 1)
    dest = folder / resource.filename
    failures = []
    for url in resource.urls:

        def write(out: BinaryIO, url: str = url) -> None:
            h = hashlib.new(algorithm)
            with _open_url(url) as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != expected:
                raise DatasetError(
                    f"checksum mismatch for {resource.filename} from {url}: "
                    f"expected {algorithm} {expected}, got {h.hexdigest()}; "
                    "the download was discarded"
                )

        print(f"convsim: downloading {url} -> {dest}", file=sys.stderr)
        try:
            return atomic_write(dest, write)
        except DatasetError:
            raise
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            failures.append(f"{url}: {e}")
    raise DatasetError(f"could not download {resource.filename}:\n  " + "\n  ".join(failures))


def _download_split(name: str, split: str, root: str | os.PathLike | None) -> None:
    folder = (Path(root).expanduser() if root is not None else cache_dir()) / name
    files = _IDX_FILES[split] if name != "cifar10" else (_CIFAR_ARCHIVE,)
    for f in files:
        if not (folder / f).is_file():
            _download(RESOURCES[name][f], folder)


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


def _load_idx(
    name: str, split: str, root: str | os.PathLike | None, download: bool, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    found = _locate_idx(name, split, root)
    if found is None and download:
        _download_split(name, split, root)
        found = _locate_idx(name, split, root)
    if found is None:
        raise _not_found(name, split, root)
    (img_path, lbl_path), system = found
    for p in (img_path, lbl_path):
        if verify:
            _verify_md5(name, p)
        elif system:
            _check_system_copy(p)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
    info = DATASETS[name]
    if images.shape[1:] != (info.size, info.size):
        raise DatasetError(
            f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, {name} has {info.size}x{info.size}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= info.classes:
        raise DatasetError(f"{lbl_path}: label {labels.max()} out of range 0..{info.classes - 1}")
    return images[:, None], labels.astype(np.int64)


def _load_cifar(
    split: str, root: str | os.PathLike | None, download: bool, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    found = _locate_cifar(split, root)
    if found is None and download:
        _download_split("cifar10", split, root)
        found = _locate_cifar(split, root)
    if found is None:
        raise _not_found("cifar10", split, root)
    kind, path = found
    wanted = _CIFAR_BATCHES[split]
    parts = {}
    if kind == "dir":
        for b in wanted:
            if verify:
                _verify_md5("cifar10", path / b)
            parts[b] = read_cifar_batch(path / b)
    else:
        if verify:
            _verify_md5("cifar10", path)
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:  # one pass: a gzipped tar cannot seek cheaply
                    base = member.name.rsplit("/", 1)[-1]
                    if base in wanted and member.isfile() and (f := tar.extractfile(member)) is not None:
                        parts[base] = read_cifar_batch(io.BytesIO(f.read()), f"{path}:{member.name}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DatasetError(f"{path}: corrupt or truncated archive ({e})") from e
        missing = [b for b in wanted if b not in parts]
        if missing:
            raise DatasetError(f"{path}: archive lacks {', '.join(missing)}")
    images = np.concatenate([parts[b][0] for b in wanted])
    labels = np.concatenate([parts[b][1] for b in wanted])
    return images, labels


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is a test extra, not a core dependency
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    # 0..16 -> 0..255, rounded half to even by numpy.
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def _digits_split(labels: np.ndarray, split: str) -> np.ndarray:
    """Within each class, in the bundled order, every fifth image (4th, 9th, ...) is test."""
    test = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        test[np.flatnonzero(labels == c)[4::5]] = True
    return np.flatnonzero(test if split == "test" else ~test)


def _synthetic_templates(classes: int, size: int) -> np.ndarray:
    # Fixed templates (seed 0): smoothed Gaussian noise, thresholded to bright blobs on black.
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    t = gaussian_filter(rng.standard_normal((classes, size, size)), sigma=(0, 2.5, 2.5), mode="wrap")
    t /= t.std(axis=(1, 2), keepdims=True)
    t = np.maximum(t - 0.5, 0.0)
    return t / t.max(axis=(1, 2), keepdims=True)


def make_synthetic(
    n_per_class: int, seed: int, *, size: int = 28, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, learnable image-classification set: ``(uint8 (N, 1, size, size), int64 (N,))``.

    Each class ``k`` has a fixed template ``T_k`` (Gaussian noise smoothed with σ = 2.5 px,
    standardised, thresholded at 0.5 and scaled to max 1: bright blobs on black; the same
    templates for every seed). Image ``i`` of class ``y`` is

        ``x = a·roll(T_y, s) + b·roll(T_z, s') + 0.3·ε``,  then ``clip(round(255·x), 0, 255)``

    with ``a ~ U[0.6, 1]``, a distractor of another class ``z ≠ y`` at ``b ~ U[0, 0.6]``, cyclic
    shifts ``s, s'`` uniform in ``[-4, 4]²`` and ``ε ~ N(0, 1)`` per pixel. Shifts defeat
    template matching (a nearest-class-mean classifier gets ≈78% on the test split, chance is
    10%), so a CNN has something to learn. Labels are balanced (``n_per_class`` each) and
    shuffled. Everything comes from ``numpy.random.default_rng(seed)`` (PCG64, stable across
    numpy versions). ``load("synthetic", "train")`` is ``make_synthetic(200, seed=1)`` and
    ``"test"`` is ``make_synthetic(50, seed=2)``.

    Example:
        >>> x, y = make_synthetic(3, seed=0)
        >>> tuple(x.shape), x.dtype, y.bincount().tolist()
        ((30, 1, 28, 28), torch.uint8, [3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    """
    for label, v, lo in (("n_per_class", n_per_class, 1), ("size", size, 9), ("classes", classes, 2)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{label} must be an int >= {lo}, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    templates = _synthetic_templates(classes, size)
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    rng.shuffle(y)
    n = y.shape[0]
    other = (y + rng.integers(1, classes, size=n)) % classes
    shifts = rng.integers(-4, 5, size=(n, 4))
    amp = rng.uniform(0.6, 1.0, size=n)
    amp_other = rng.uniform(0.0, 0.6, size=n)
    x = np.empty((n, size, size))
    for i in range(n):
        x[i] = amp[i] * np.roll(templates[y[i]], tuple(shifts[i, :2]), axis=(0, 1)) + amp_other[i] * np.roll(
            templates[other[i]], tuple(shifts[i, 2:]), axis=(0, 1)
        )
    x += 0.3 * rng.standard_normal(x.shape)
    images = np.clip(np.round(255.0 * x), 0, 255).astype(np.uint8)[:, None]
    return torch.from_numpy(images), torch.from_numpy(y.astype(np.int64))


def load(
    name: str = "fashion-mnist",
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a dataset as in-memory tensors ``(images uint8 (N, C, H, W), labels int64 (N,))``.

    ===============  ======  ===========  =============================================
    name             C×H×W   train/test   where it comes from
    ===============  ======  ===========  =============================================
    fashion-mnist    1×28×28 60000/10000  idx files (look-up below; Debian package)
    mnist            1×28×28 60000/10000  idx files (look-up below)
    cifar10          3×32×32 50000/10000  python batches or cifar-10-python.tar.gz
    digits           1×8×8   1442/355     scikit-learn ``load_digits`` (bundled)
    synthetic        1×28×28 2000/500     :func:`make_synthetic` (generated, seeded)
    ===============  ======  ===========  =============================================

    ``digits``: the 1,797 8×8 images with values 0..16 rescaled to ``round(v·255/16)``; within
    each class, in scikit-learn's order, every fifth image (the 5th, 10th, ...) is the test split
    (deterministic, stratified). ``root``, ``download`` and ``verify`` do not apply to
    ``digits`` and ``synthetic``.

    File-based sets are searched in ``root``, ``$CONVSIM_DATA``, ``~/.cache/convsim`` and (for
    Fashion-MNIST) ``/usr/share/datasets/fashion-mnist``, each as ``D/<name>/`` then ``D``; see
    the module docstring. The Debian copy is size-checked on every read (md5 when the size is
    off). ``verify=True`` checks the md5 of every file read against the publisher's (or
    Debian's) value.

    Args:
        name: one of ``DATASETS`` (default ``"fashion-mnist"``).
        split: ``"train"`` or ``"test"``.
        root: a folder searched first; also where ``download=True`` saves (else the cache).
        download: fetch missing files from the original publishers, checksum-verified.
        verify: md5-check every file read (slow for the large files; off by default).

    Raises:
        ValueError: unknown ``name`` or ``split``.
        DatasetNotFoundError: no copy found (and ``download`` is off); lists every way to get one.
        DatasetError: a file is truncated, corrupt, of the wrong format, or fails a checksum.

    Example:
        >>> x, y = load("digits", "test")
        >>> tuple(x.shape), x.dtype, y.dtype
        ((355, 1, 8, 8), torch.uint8, torch.int64)
    """
    name = _dataset_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name in ("fashion-mnist", "mnist"):
        images, labels = _load_idx(name, split, root, download, verify)
    elif name == "cifar10":
        images, labels = _load_cifar(split, root, download, verify)
    elif name == "digits":
        images, labels = _load_digits()
        keep = _digits_split(labels, split)
        images, labels = images[keep], labels[keep]
    else:
        return make_synthetic(200 if split == "train" else 50, seed=1 if split == "train" else 2)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels))


# ----------------------------------------------------------------------------------------------
# Normalisation and subsets
# ----------------------------------------------------------------------------------------------


def normalize(
    images: torch.Tensor,
    dataset: str | DatasetInfo,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """uint8 images to float32 ``(x / 255 − mean_c) / std_c`` per channel ``c``.

    Args:
        images: uint8 tensor of shape (..., C, H, W) (any device); C must match the dataset.
        dataset: a name in ``DATASETS`` or a :class:`DatasetInfo`; supplies mean and std.
        mean: per-channel override of the dataset's mean (e.g. the ImageNet statistics
            (0.485, 0.456, 0.406) that the CS authors' CIFAR-10 script used).
        std: per-channel override of the dataset's standard deviation (ImageNet: (0.229, 0.224, 0.225)).

    Returns:
        float32 tensor of the same shape and device.

    Example:
        >>> x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
        >>> normalize(x, "mnist")[0, 0, 0, 0].item()  # (1 - 0.1307) / 0.3081
        2.821486711502075
    """
    info = dataset if isinstance(dataset, DatasetInfo) else DATASETS[_dataset_name(dataset)]
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be a uint8 tensor, got {got}")
    if images.dim() < 3 or images.shape[-3] != info.channels:
        raise ValueError(
            f"images must have shape (..., {info.channels}, H, W) for {info.name}, got {tuple(images.shape)}"
        )
    m = tuple(info.mean if mean is None else mean)
    s = tuple(info.std if std is None else std)
    if len(m) != info.channels or len(s) != info.channels or min(s) <= 0:
        raise ValueError(f"mean and std need {info.channels} values each (std > 0), got {m}, {s}")
    m_t = torch.tensor(m, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    s_t = torch.tensor(s, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (images.to(torch.float32) / 255.0 - m_t) / s_t


def subset_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices (sorted, int64) of a stratified random subset of size ``n``: the package's one stratified sampler.

    The trainer draws its training and test subsets, its validation split (the held-out part) and
    its early-stopping samples with it. Class ``c`` with ``N_c`` of the ``N`` labels gets
    ``floor(n·N_c/N)`` samples, and the ``n − Σ floor`` left over go one each to the classes with
    the largest remainders (ties: lower class first); within a class the samples are a uniform
    draw without replacement from ``torch.Generator().manual_seed(seed)``.

    Example:
        >>> subset_indices(torch.tensor([0, 0, 0, 0, 1, 1]), 3, seed=0).shape
        torch.Size([3])
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise TypeError("labels must be a 1-D integer tensor")
    total = labels.shape[0]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= total:
        raise ValueError(f"n must be an int in 1..{total}, got {n!r}")
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.to(torch.float64) * n / total
    take = quota.floor().to(torch.int64)
    left = n - int(take.sum())
    if left:
        # Stable sort on -remainder: largest remainders first, lower class first on ties.
        order = torch.sort(-(quota - take.to(torch.float64)), stable=True).indices
        take[order[:left]] += 1
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        idx = torch.nonzero(labels == c).flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.sort(torch.cat(chosen)).values


def subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified, seeded subset ``(images[idx], labels[idx])`` of ``n`` samples.

    ``idx = subset_indices(labels, n, seed)``: class proportions are kept to within one sample,
    and the original order is preserved.

    Example:
        >>> x, y = load("digits", "train")
        >>> xs, ys = subset(x, y, 100, seed=0)
        >>> tuple(xs.shape), ys.bincount().tolist()
        ((100, 1, 8, 8), [10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    """
    if not isinstance(images, torch.Tensor) or images.shape[:1] != labels.shape[:1]:
        raise ValueError("images must be a tensor with as many rows as labels")
    idx = subset_indices(labels, n, seed)
    return images[idx], labels[idx]
