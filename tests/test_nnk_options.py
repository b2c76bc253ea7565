"""NNKOptions: validation of every field, and one options object shared by every NNK entry point."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from torch import nn

from convsim.nnk import NNKOptions, channel_loo_error, channel_overlap, layer_overlap, nnk_graph, nnk_neighbors


@pytest.mark.parametrize(
    "kwargs,err,message",
    [
        ({"k": 0}, ValueError, "k must be an int >= 1, got 0"),
        ({"k": 2.5}, TypeError, "k must be an int >= 1, got float"),
        ({"k": True}, TypeError, "k must be an int >= 1, got bool"),
        ({"kernel": "rbf"}, ValueError, "kernel must be one of ('cosine', 'gaussian'), got 'rbf'"),
        ({"sigma": 1.0}, ValueError, "sigma is only used by the gaussian kernel"),
        ({"kernel": "gaussian", "sigma": 0.0}, ValueError, "sigma must be a positive number or None"),
        ({"kernel": "gaussian", "sigma": "1"}, ValueError, "sigma must be a positive number or None"),
        ({"solver": "lbfgs"}, ValueError, "solver must be one of ('exact', 'pgd', 'pruning'), got 'lbfgs'"),
        ({"solver": "fast"}, ValueError, "(solver='fast' is now solver='pgd')"),
        ({"threshold": -1e-3}, ValueError, "threshold must be a number >= 0, got -0.001"),
        ({"threshold": "0"}, TypeError, "threshold must be a number >= 0, got str"),
        ({"jitter": float("nan")}, ValueError, "jitter must be a number >= 0, got nan"),
        ({"duplicates": "merge"}, ValueError, "duplicates must be one of ('keep', 'drop'), got 'merge'"),
        ({"dup_tol": 1.0}, ValueError, "dup_tol must be a number in [0, 1), got 1.0"),
        ({"search": "annoy"}, ValueError, "search must be one of ('auto', 'torch', 'faiss', 'kdtree'), got 'annoy'"),
        ({"max_elements": 0}, ValueError, "max_elements must be an int >= 1, got 0"),
        ({"max_elements": 1e6}, TypeError, "max_elements must be an int >= 1, got float"),
        (
            {"dtype": torch.int64},
            TypeError,
            "dtype must be a floating torch.dtype (e.g. torch.float64), got torch.int64",
        ),
        ({"dtype": "float64"}, TypeError, "dtype must be a floating torch.dtype"),
        ({"threads": 0}, ValueError, "threads must be an int >= 1 or None, got 0"),
        ({"solver_options": [("tol", 1e-9)]}, TypeError, "solver_options must be a mapping of keyword arguments"),
        (
            {"solver_options": {"accelerated": False}},
            ValueError,
            "solver_options for solver='exact' must be keywords of active_set",
        ),
        (
            {"solver_options": {"backend": "torch"}},
            ValueError,
            "(solver_options['backend'] is now solver_options['engine'])",
        ),
        (
            {"solver_options": {"engine": "gpu"}},
            ValueError,
            "solver_options['engine'] must be one of ('auto', 'torch', 'numba'), got 'gpu'",
        ),
        (
            {"solver": "pgd", "solver_options": {"engine": "torch"}},
            ValueError,
            "solver_options for solver='pgd' must be keywords of projected_gradient",
        ),
    ],
)
def test_each_bad_value_names_the_field_and_what_was_expected(kwargs, err, message):
    with pytest.raises(err, match=re.escape(message)):
        NNKOptions(**kwargs)


def test_valid_values_are_accepted():
    """The boundaries of each range, and the documented alternatives, construct."""
    NNKOptions(
        k=1,
        kernel="gaussian",
        sigma=2,
        threshold=0,
        jitter=0.0,
        dup_tol=0.0,
        max_elements=1,
        dtype=torch.float32,
        threads=None,
        solver="pgd",
        solver_options={"max_iter": 10, "accelerated": False},
    )
    NNKOptions(solver_options={"engine": "torch", "kkt_tol": 1e-9}, search="kdtree")


def test_options_are_frozen_and_keep_a_copy_of_solver_options():
    given = {"kkt_tol": 1e-9}
    opts = NNKOptions(solver_options=given)
    given["engine"] = "gpu"  # changing the caller's dict afterwards changes nothing
    assert opts.solver_options == {"kkt_tol": 1e-9}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.k = 3  # type: ignore[misc]
    assert opts == NNKOptions(solver_options={"kkt_tol": 1e-9}) and hash(opts) == hash(NNKOptions())


def test_summary_is_json_ready():
    s = NNKOptions(k=7, kernel="gaussian", dtype=torch.float32).summary()
    assert json.loads(json.dumps(s))["dtype"] == "torch.float32"
    assert s["k"] == 7 and s["search"] == "auto" and "threads" not in s and "solver_options" not in s


def test_unknown_and_renamed_keywords_raise_type_error():
    X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        TypeError,
        match=re.escape("nnk_neighbors() got an unexpected keyword argument 'backend' (backend= is now search=)"),
    ):
        nnk_neighbors(X, k=3, backend="torch")
    with pytest.raises(TypeError, match="unexpected keyword argument 'kernal'"):
        channel_overlap(torch.rand(20, 2, 2, 2), k=3, kernal="cosine")
    with pytest.raises(TypeError, match="options must be an NNKOptions or None, got dict"):
        nnk_neighbors(X, options={"k": 3})


def test_bad_values_raise_through_every_entry_point():
    X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    acts, y = torch.rand(20, 2, 2, 2), torch.arange(20) % 2
    for call in (
        lambda: nnk_neighbors(X, solver="fast"),
        lambda: nnk_graph(X, solver="fast"),
        lambda: channel_overlap(acts, k=3, solver="fast"),
        lambda: channel_loo_error(acts, y, k=3, solver="fast"),
    ):
        with pytest.raises(ValueError, match="solver must be one of"):
            call()


def test_keywords_override_the_options_object():
    X = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    base = NNKOptions(k=5, kernel="gaussian")
    r = nnk_neighbors(X, options=base, k=7)
    assert r.indices.shape == (30, 7) and r.options["kernel"] == "gaussian" and r.options["k"] == 7
    assert torch.equal(r.weights, nnk_neighbors(X, k=7, kernel="gaussian").weights)


def equal_overlap(a, b):
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)
    )


def test_channel_overlap_with_options_equals_the_same_keywords():
    acts = torch.randn(60, 3, 2, 2, generator=torch.Generator().manual_seed(2)).relu()
    y = torch.arange(60) % 3
    kw = dict(k=6, kernel="gaussian", solver="pgd", duplicates="drop", solver_options={"max_iter": 300})
    a = channel_overlap(acts, labels=y, options=NNKOptions(**kw))
    b = channel_overlap(acts, labels=y, **kw)
    assert equal_overlap(a, b) and a.options == b.options
    assert a.options["solver"] == "pgd" and a.options["search"] == "auto"


def test_channel_defaults_drop_duplicates_unless_an_options_object_says_otherwise():
    """Keywords start from the channel analysis' default duplicates='drop'; an NNKOptions is used as given."""
    acts = torch.rand(30, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    assert channel_overlap(acts, k=4).options["duplicates"] == "drop"
    assert channel_overlap(acts, options=NNKOptions(k=4)).options["duplicates"] == "keep"


def test_one_options_object_serves_every_entry_point():
    """nnk_graph, channel_loo_error and layer_overlap give with options= what they give with keywords."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    opts = NNKOptions(k=6, kernel="gaussian", sigma=0.7, search="kdtree")
    kw = dict(k=6, kernel="gaussian", sigma=0.7, search="kdtree")
    assert (nnk_graph(X, options=opts) != nnk_graph(X, **kw)).nnz == 0
    acts, y = torch.randn(50, 3, 2, 2, generator=g), torch.arange(50) % 2
    assert torch.equal(
        channel_loo_error(acts, y, options=dataclasses.replace(opts, duplicates="drop")),
        channel_loo_error(acts, y, **kw),
    )
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    data = torch.randn(30, 1, 6, 6, generator=g)
    a = layer_overlap(net, data, options=dataclasses.replace(opts, duplicates="drop"))
    b = layer_overlap(net, data, **kw)
    assert list(a) == list(b) and all(equal_overlap(a[name], b[name]) for name in a)
