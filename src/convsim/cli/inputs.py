"""What ``convsim analyze`` reads: a model (a user's callable or a run directory), its weights, and data.

**Model** (``--model``): ``FILE.py:CALLABLE`` (the file is imported as a module, with its folder
first on ``sys.path`` so it can import its neighbours), ``package.module:CALLABLE`` (imported
normally), or a ``convsim train`` run directory (:func:`convsim.training.loop.load_run`). The
callable is called with no arguments and must return an ``nn.Module``.

**Weights** (``--weights``): a state dict saved with ``torch.save``, loaded with ``weights_only=True``
on the CPU. Keys the model does not have lose the ``_orig_mod.`` component of ``torch.compile`` and a
leading ``module.`` of DDP/DataParallel; the keys must then match the model's exactly (the first
missing and unexpected keys are named otherwise), with the same shapes.

**Data** (``--data``):

* a convsim dataset name (:data:`convsim.data.DATASETS`): its test split, normalised as convsim's
  trainer does (:func:`convsim.data.normalize`), with its labels;
* a tensor file, ``.pt`` (``torch.save`` of one tensor, loaded with ``weights_only=True``) or
  ``.npy`` (``numpy.save``, no pickles), of shape (N, C, \\*spatial): a floating tensor is used as
  it is, a ``uint8`` one is scaled to [0, 1];
* a folder of images (what Pillow opens: PNG, JPEG, BMP, GIF, TIFF, WebP), either flat or with
  one subfolder per class (the sorted subfolder names give labels 0, 1, ...). Images are read as
  grayscale (1 channel) when every image is grayscale, else as RGB (3 channels; alpha dropped),
  scaled to [0, 1], and resized (bilinear) to ``--image-size H W``; without it every image must
  have the same size.

Every problem a user can fix raises an :class:`InputError` (a :class:`~convsim._internal.errors.UserError`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from convsim import data as datasets
from convsim._internal.errors import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "InputNotFoundError",
    "UserCodeError",
    "WeightsMismatchError",
    "load_data",
    "load_model",
    "load_weights",
    "read_image_folder",
    "read_tensor_file",
    "strip_wrapper_prefixes",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class InputError(UserError, ValueError):
    """A ``--model``, ``--weights`` or ``--data`` that cannot be used; the message says why."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder named on the command line does not exist."""


class UserCodeError(InputError):
    """The user's model file or module failed to import, or its callable failed."""


class WeightsMismatchError(InputError):
    """A state dict whose keys or shapes do not fit the model."""


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}" if str(e).strip() else type(e).__name__


# ------------------------------------------------------------------------------------------- model


def _where(e: BaseException, path: Path) -> str:
    """`` (FILE line N)``: the last line of ``path`` in the traceback of ``e``, if any."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == path.resolve():
        lines.append(e.lineno or 0)
    return f" ({path.name} line {lines[-1]})" if lines else ""


@contextlib.contextmanager
def _first_on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise InputNotFoundError(f"--model: {path} does not exist (expected FILE.py:CALLABLE)")
    name = f"_convsim_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"--model: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up here
    try:
        with _first_on_path(path.parent):
            spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise UserCodeError(f"--model: importing {path} failed{_where(e, path)}: {_one_line(e)}") from e
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise UserCodeError(
                f"--model: no module named {e.name!r} (install it, add its folder to PYTHONPATH, "
                f"or pass FILE.py:CALLABLE)"
            ) from e
        raise UserCodeError(f"--model: importing {name} failed: {_one_line(e)}") from e
    except Exception as e:
        raise UserCodeError(f"--model: importing {name} failed: {_one_line(e)}") from e


def _call_factory(spec: str) -> nn.Module:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(
            f"--model {spec}: expected FILE.py:CALLABLE, package.module:CALLABLE or a run directory of convsim train"
        )
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserCodeError(f"--model {spec}: {target} has no callable named {attr!r}")
    try:
        model = factory()
    except Exception as e:
        raise UserCodeError(f"--model {spec}: calling {attr}() failed: {_one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise UserCodeError(f"--model {spec}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(spec: str, weights: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model named by ``--model`` (and ``--weights``), in eval mode, and a description of it.

    The description has ``model`` (the spec), ``weights`` and, for a run directory, ``trained_on``
    (the run's dataset).
    """
    info: dict[str, Any] = {"model": spec, "weights": weights}
    if Path(spec).is_dir():
        from convsim.training.loop import load_run  # the trainer is heavy: only for run directories

        model, config, _ = load_run(spec)
        info["trained_on"] = config.dataset
    else:
        model = _call_factory(spec)
    if weights is not None:
        load_weights(model, weights)
    return model.eval(), info


# ----------------------------------------------------------------------------------------- weights


def strip_wrapper_prefixes(state: Mapping[str, Any], keep: set[str]) -> dict[str, Any]:
    """``state`` with torch.compile's ``_orig_mod.`` and a leading DDP ``module.`` removed from keys not in ``keep``.

    Example:
        >>> strip_wrapper_prefixes({"module._orig_mod.conv.weight": 1, "head.module.bias": 2}, set())
        {'conv.weight': 1, 'head.module.bias': 2}
    """
    out = {}
    for key, value in state.items():
        if key not in keep:
            parts = [p for p in key.split(".") if p != "_orig_mod"]
            while len(parts) > 1 and parts[0] == "module":
                parts = parts[1:]
            key = ".".join(parts)
        out[key] = value
    return out


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputNotFoundError(f"--weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"--weights {path}: cannot be read as a state dict ({_one_line(e)})") from e
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise InputError(
            f"--weights {path}: holds a {type(state).__name__}, not a state dict; "
            f"save one with torch.save(model.state_dict(), FILE)"
        )
    return dict(state)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the state dict at ``path`` into ``model`` (see the module docstring); names what does not fit."""
    path = Path(path)
    expected = model.state_dict()
    state = strip_wrapper_prefixes(_read_state(path), set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [
            f"{len(keys)} {what} keys (first: {keys[0]!r})"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise WeightsMismatchError(f"--weights {path} does not fit the model: {', '.join(parts)}")
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k].shape):
            raise WeightsMismatchError(
                f"--weights {path} does not fit the model: {k!r} has shape {tuple(v.shape)} in the file "
                f"and {tuple(expected[k].shape)} in the model"
            )
    model.load_state_dict(state)


# -------------------------------------------------------------------------------------------- data


def read_tensor_file(path: Path) -> torch.Tensor:
    """The inputs (N, C, \\*spatial) in a ``.pt``/``.pth`` or ``.npy`` file, as float32 (uint8 scaled to [0, 1])."""
    try:
        if path.suffix == ".npy":
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"--data {path}: cannot be read ({_one_line(e)})") from e
    if not isinstance(x, torch.Tensor):
        raise InputError(f"--data {path}: holds a {type(x).__name__}, not a tensor of shape (N, C, *spatial)")
    if x.dim() < 3 or x.shape[0] == 0:
        raise InputError(f"--data {path}: expected a tensor of shape (N, C, *spatial), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise InputError(f"--data {path}: expected floating or uint8 values, got {x.dtype}")
    return x.float() if x.dtype != torch.float64 else x


def _image_files(folder: Path) -> tuple[list[Path], list[int] | None]:
    """Image files of a flat folder (labels None) or of one subfolder per class (labels by sorted name)."""
    flat = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [sorted(q for q in c.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES) for c in classes]
    if flat and any(per_class):
        raise InputError(f"--data {folder}: holds images and class subfolders; use one layout (flat or one per class)")
    if flat:
        return flat, None
    files = [f for fs in per_class for f in fs]
    if not files:
        raise InputError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its subfolders")
    return files, [i for i, fs in enumerate(per_class) for _ in fs]


def read_image_folder(folder: Path, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N, C, H, W) float32 in [0, 1] and labels (class subfolders) or None; see the module docstring."""
    from PIL import Image, UnidentifiedImageError

    files, labels = _image_files(folder)
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"--data {folder}: cannot read {f.name} ({_one_line(e)})") from e
    mode = "L" if all(im.mode in _GRAY_MODES for im in images) else "RGB"
    if size is None and len({im.size for im in images}) > 1:
        a, b = images[0], next(im for im in images if im.size != images[0].size)
        raise InputError(
            f"--data {folder}: images differ in size ({files[0].name} is {a.height}x{a.width}, "
            f"{files[images.index(b)].name} is {b.height}x{b.width}); pass --image-size H W"
        )
    arrays = []
    for im in images:
        im = im.convert(mode)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, -1))
    hwc = torch.from_numpy(np.stack(arrays))
    # copied into a fresh (N, C, H, W) tensor: with C = 1 a permuted view would pass for contiguous and
    # look channels-last to conv kernels, which then round differently from the same values laid out plainly
    x = torch.empty(hwc.shape[0], hwc.shape[3], *hwc.shape[1:3]).copy_(hwc.permute(0, 3, 1, 2)) / 255.0
    return x, None if labels is None else torch.tensor(labels, dtype=torch.long)


def load_data(
    spec: str, image_size: tuple[int, int] | None = None, data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(inputs, labels or None, description)`` for ``--data``: a tensor file, an image folder or a dataset name."""
    path = Path(spec)
    if path.is_dir():
        x, y = read_image_folder(path, image_size)
        return x, y, f"image folder {path} ({x.shape[0]} images" + (", class subfolders)" if y is not None else ")")
    if path.suffix.lower() in TENSOR_SUFFIXES:
        if not path.is_file():
            raise InputNotFoundError(f"--data: {path} does not exist")
        return read_tensor_file(path), None, f"tensor file {path}"
    if path.exists():
        raise InputError(f"--data {path}: unsupported file; expected {', '.join(TENSOR_SUFFIXES)} or a folder")
    try:
        images, labels = datasets.load(spec, "test", root=data_dir)
    except datasets.DatasetError:
        raise
    except ValueError as e:
        raise InputNotFoundError(
            f"--data {spec}: no such file or folder, and not a dataset name (one of {', '.join(datasets.DATASETS)})"
        ) from e
    return datasets.normalize(images, spec), labels, f"{spec} test split ({images.shape[0]} images, normalised)"
