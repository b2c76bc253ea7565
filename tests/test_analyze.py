"""convsim.analyze and `convsim analyze`: the numbers against conv_similarity, FeatureMapSimilarity,
CW-NNK and float64 loops; streaming; transposed and depthwise layers; the command on a user's file,
compiled weights, tensor files, image folders and run directories; one-line user errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from convsim import analyze, cli, data
from convsim._internal.hooks import capture
from convsim.analysis import AnalysisError
from convsim.measure import FeatureMapSimilarity
from convsim.nnk import layer_overlap
from convsim.similarity import conv_similarity

QUICK = {"n_samples": 30, "k": 4, "progress": False}
MODEL_FILE = """
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.ConvTranspose2d(4, 3, 2)
    )
"""


def user_model() -> nn.Module:
    namespace: dict = {}
    exec(MODEL_FILE, namespace)
    return namespace["build"]()


def mixed_net() -> nn.Module:
    """Conv2d, a grouped Conv2d, a depthwise Conv2d and a grouped ConvTranspose2d."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ConvTranspose2d(8, 6, 3, stride=2, groups=2),
    )


def abs_cos_oracle(rows: torch.Tensor) -> float:
    """Mean |cos| over pairs i < j of the rows, in float64 loops."""
    rows = rows.double()
    vals = []
    for i in range(rows.shape[0]):
        for j in range(i + 1, rows.shape[0]):
            vals.append(abs(float(rows[i] @ rows[j]) / math.sqrt(float(rows[i] @ rows[i]) * float(rows[j] @ rows[j]))))
    return sum(vals) / len(vals)


def transposed_filters_oracle(m: nn.ConvTranspose2d) -> torch.Tensor:
    """Output filters (C_out, C_in/groups, kh, kw) of a transposed conv, by index loops."""
    g, c_in = m.groups, m.in_channels
    per_in, per_out = c_in // g, m.out_channels // g
    out = torch.zeros(m.out_channels, per_in, *m.kernel_size, dtype=torch.float64)
    for o in range(m.out_channels):
        grp = o // per_out
        for i in range(per_in):
            out[o, i] = m.weight[grp * per_in + i, o - grp * per_out].double()
    return out


def layer_outputs(net: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    with torch.no_grad(), capture(net, [name]) as store:
        net(x)
    return store[name].double()


def error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convsim analyze: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------------------- library


def test_weight_measures_match_conv_similarity_and_a_cosine_loop():
    net = mixed_net()
    a = analyze(net, torch.randn(40, 2, 9, 9), **QUICK)
    for name in ("0", "2"):
        w, lay = net.get_submodule(name).weight.detach().double(), a.layer(name)
        groups = net.get_submodule(name).groups
        assert lay.cs == pytest.approx(float(conv_similarity(w, groups=groups)), rel=1e-12)
        assert lay.cs_normalized == pytest.approx(float(conv_similarity(w, groups=groups, normalize=True)), rel=1e-12)
        assert lay.kernel_abs_cos == pytest.approx(abs_cos_oracle(w.flatten(1)), rel=1e-9)


def test_transposed_layers_are_measured_on_their_output_filters():
    net = mixed_net()
    x = torch.randn(40, 2, 9, 9)
    lay = analyze(net, x, **QUICK).layer("5")
    w = transposed_filters_oracle(net[5])
    assert lay.type == "ConvTranspose2d" and lay.out_channels == 6
    assert lay.cs == pytest.approx(float(conv_similarity(w, groups=2)), rel=1e-12)
    assert lay.kernel_abs_cos == pytest.approx(abs_cos_oracle(w.flatten(1)), rel=1e-9)
    maps = layer_outputs(net, x, "5").transpose(0, 1).flatten(1)  # (C, N*positions)
    assert lay.fm_abs_cos == pytest.approx(abs_cos_oracle(maps), rel=1e-9)
    assert lay.cwnnk is not None and 0 <= lay.cwnnk["M1"] <= 1


def test_depthwise_layers_have_feature_map_measures_but_no_pair_measures():
    net = mixed_net()
    x = torch.randn(40, 2, 9, 9)
    a = analyze(net, x, **QUICK)
    lay = a.layer("4")
    assert (lay.cs, lay.cs_normalized, lay.kernel_abs_cos, lay.cwnnk, lay.channel_overlap) == (None,) * 5
    maps = layer_outputs(net, x, "4").transpose(0, 1).flatten(1)
    assert lay.fm_abs_cos == pytest.approx(abs_cos_oracle(maps), rel=1e-9)
    entry = json.loads(json.dumps(a.to_dict()))["layers"][2]
    assert entry["name"] == "4" and entry["cs"] is None and entry["cwnnk"] is None


def test_feature_map_measures_match_FeatureMapSimilarity():
    net = mixed_net()
    x = torch.randn(50, 2, 9, 9)
    a = analyze(net, x, **QUICK)
    for centered, suffix in ((False, ""), (True, "_centered")):
        fms = FeatureMapSimilarity(net, layers=["0", "2", "4"], centered=centered)
        fms.update(x)
        for name, ref in fms.compute().items():
            lay = a.layer(name).to_dict()
            assert lay[f"fm_abs_cos{suffix}"] == pytest.approx(ref["fm_abs_cos"], rel=1e-12)
            assert lay[f"fm_effective_rank{suffix}"] == pytest.approx(ref["fm_effective_rank"], rel=1e-12)


def flat_numbers(d, prefix=""):
    """Every number of a nested dict/list, by path."""
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in flat_numbers(val, f"{prefix}.{key}").items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in flat_numbers(val, f"{prefix}[{i}]").items()}
    return {prefix: d}


def test_the_result_does_not_depend_on_how_the_data_are_batched():
    net = mixed_net()
    x, y = torch.randn(45, 2, 9, 9), torch.arange(45) % 3
    ref = flat_numbers(analyze(net, x, labels=y, batch_size=64, **QUICK).to_dict())
    small = flat_numbers(analyze(net, x, labels=y, batch_size=7, **QUICK).to_dict())
    uneven = [(x[:11], y[:11]), (x[11:12], y[11:12]), (x[12:], y[12:])]  # a DataLoader-like iterable
    listed = flat_numbers(analyze(net, uneven, **QUICK).to_dict())
    for other in (small, listed):  # float32 conv outputs differ in the last bits across batch sizes
        assert other.keys() == ref.keys()
        for key, value in ref.items():
            assert other[key] == (pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value), key


def test_cwnnk_on_all_inputs_equals_layer_overlap():
    net = mixed_net()
    x, y = torch.randn(30, 2, 9, 9), torch.arange(30) % 2
    a = analyze(net, x, labels=y, n_samples=100, k=4, progress=False)
    ref = layer_overlap(net, x, layers=["0", "5"], labels=y, k=4)
    for name, r in ref.items():
        c = a.layer(name).cwnnk
        assert a.n_samples == 30 and c is not None
        assert (c["M1"], c["M1w"]) == (pytest.approx(r.jaccard_score), pytest.approx(r.weighted_score))
        assert (c["M2"], c["M3"]) == (pytest.approx(float(r.union_ratio)), pytest.approx(float(r.aggregate_ratio)))
        assert c["layer_loo_error"] == pytest.approx(float(r.layer_loo_error))
        assert torch.equal(a.layer(name).channel_overlap, r.jaccard)


def test_the_cwnnk_sample_has_n_samples_inputs_chosen_by_the_seed():
    net = mixed_net()
    x = torch.randn(60, 2, 9, 9)
    one, same, other = (analyze(net, x, seed=s, n_samples=20, k=4, progress=False) for s in (1, 1, 2))
    assert one.n_samples == 20 and one.n_inputs == 60
    assert one.layer("0").cwnnk == same.layer("0").cwnnk != other.layer("0").cwnnk
    assert one.layer("0").fm_abs_cos == other.layer("0").fm_abs_cos  # feature maps use all inputs


def test_dead_and_never_positive_channels():
    conv = nn.Conv2d(1, 3, 2)
    with torch.no_grad():
        conv.weight[0], conv.bias[0] = 0.0, 0.0  # constant 0: dead, never positive
        conv.weight[1], conv.bias[1] = 1.0, 0.0  # positive on positive inputs
        conv.weight[2], conv.bias[2] = -1.0, -0.1  # varies, always negative
    lay = analyze(nn.Sequential(conv), torch.rand(20, 1, 4, 4), **{**QUICK, "n_samples": 20}).layers[0]
    assert lay.dead_channels == [0] and lay.never_positive_channels == [0, 2]


def test_layers_follow_the_forward_order_and_the_regex():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Conv1d(4, 4, 3)  # registered first, called second
            self.early = nn.Conv1d(2, 4, 3)

        def forward(self, x):
            return self.late(self.early(x))

    net, x = Net(), torch.randn(20, 2, 16)
    assert [(lay.name, lay.depth) for lay in analyze(net, x, **QUICK).layers] == [("early", 1), ("late", 2)]
    assert [lay.name for lay in analyze(net, x, layers="^ear", **QUICK).layers] == ["early"]


def test_a_compiled_model_keeps_its_layer_names():
    net = mixed_net()
    names = [lay.name for lay in analyze(torch.compile(net), torch.randn(30, 2, 9, 9), **QUICK).layers]
    assert names == ["0", "2", "4", "5"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"data": torch.randn(30, 3, 9, 9)},
            r"layer 0 \(Conv2d\) takes inputs \(N, 2, H, W\) but the data have shape \(N, 3, 9, 9\)",
        ),
        ({"data": torch.randn(30, 2, 9)}, r"takes inputs \(N, 2, H, W\) but the data have shape \(N, 2, 9\)"),
        ({"layers": "nothing"}, "no conv layer matching 'nothing'"),
        ({"k": 30}, "k=30 NNK candidates need more than 30 inputs"),
        ({"data": []}, "data holds no inputs"),
    ],
    ids=["channels", "spatial-rank", "regex", "k", "empty"],
)
def test_unusable_arguments_raise_AnalysisError(kwargs, message):
    args = {"data": torch.randn(30, 2, 9, 9), **QUICK, **kwargs}
    with pytest.raises(AnalysisError, match=message):
        analyze(mixed_net(), args.pop("data"), **args)


# ---------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(MODEL_FILE)
    return path


def run_cli(tmp_path, *argv, out="out"):
    flags = ["--out", str(tmp_path / out), "--n-samples", "20", "-k", "4", "--no-progress", "--threads", "1"]
    return cli.main(["analyze", *map(str, argv), *flags])


def saved_model(tmp_path, seed, compiled=False):
    """A model of MODEL_FILE with seeded weights, saved to w.pt (from a torch.compile wrapper when ``compiled``)."""
    torch.manual_seed(seed)
    model = user_model()
    torch.save((torch.compile(model) if compiled else model).state_dict(), tmp_path / "w.pt")
    return model


def test_cli_on_a_user_file_with_compiled_weights_and_a_pt_file(tmp_path, user_file):
    model, x = saved_model(tmp_path, 1, compiled=True), torch.rand(25, 1, 8, 8)  # the keys carry _orig_mod.
    torch.save(x, tmp_path / "x.pt")
    argv = ["--model", f"{user_file}:build", "--weights", tmp_path / "w.pt", "--data", tmp_path / "x.pt"]
    assert run_cli(tmp_path, *argv, "--no-figures") == 0
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    expected = analyze(model, x, n_samples=20, k=4, progress=False).to_dict()
    assert result["layers"] == expected["layers"]
    assert [lay["type"] for lay in result["layers"]] == ["Conv2d", "Conv2d", "ConvTranspose2d"]


def test_cli_on_an_npy_file_writes_the_report_and_figures(tmp_path, user_file):
    x = np.random.default_rng(0).random((25, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    model = saved_model(tmp_path, 2)
    argv = ["--model", f"{user_file}:build", "--weights", tmp_path / "w.pt", "--data", tmp_path / "x.npy"]
    assert run_cli(tmp_path, *argv) == 0
    out = tmp_path / "out"
    result = json.loads((out / "analysis.json").read_text())
    expected = analyze(model, torch.from_numpy(x), n_samples=20, k=4, progress=False).to_dict()
    assert result["n_inputs"] == 25 and result["labels"] is False and result["layers"] == expected["layers"]
    report = (out / "report.md").read_text()
    assert "| 2 | `2` | Conv2d | 4 | 4 | n/a |" in report  # the depthwise layer
    assert len(result["figures"]) == 3
    for name in result["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report


def write_pngs(folder, sizes, rng):
    """Grayscale PNGs in two class subfolders; returns the pixel arrays in file order."""
    from PIL import Image

    arrays = []
    for c, cls in enumerate(("cat", "dog")):
        (folder / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            a = rng.integers(0, 256, (h, w), dtype=np.uint8)
            Image.fromarray(a, mode="L").save(folder / cls / f"{i:02d}.png")  # sorted names = this order
            arrays.append((a, c))
    return arrays


def test_cli_on_an_image_folder_with_class_subfolders(tmp_path, user_file):
    model = saved_model(tmp_path, 3)
    pngs = write_pngs(tmp_path / "images", [(8, 8)] * 12, np.random.default_rng(0))
    argv = ["--model", f"{user_file}:build", "--weights", tmp_path / "w.pt", "--data", tmp_path / "images"]
    assert run_cli(tmp_path, *argv, "--no-figures") == 0
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    x = torch.tensor(np.stack([a for a, _ in pngs]), dtype=torch.float32).unsqueeze(1) / 255
    y = torch.tensor([c for _, c in pngs])
    expected = analyze(model, x, labels=y, n_samples=20, k=4, progress=False).to_dict()
    assert result["labels"] is True and result["n_inputs"] == 24
    assert result["layers"] == expected["layers"]


def test_cli_resizes_images_of_different_sizes_only_when_asked(tmp_path, user_file, capsys):
    write_pngs(tmp_path / "images", [(8, 8), (10, 12)] * 6, np.random.default_rng(1))
    argv = ["--model", f"{user_file}:build", "--data", tmp_path / "images", "--no-figures"]
    assert run_cli(tmp_path, *argv) == 2
    assert "images differ in size" in error_line(capsys.readouterr().err)
    assert run_cli(tmp_path, *argv, "--image-size", 9, 9) == 0
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["n_inputs"] == 24


def test_cli_on_a_dataset_name_normalises_its_test_split(tmp_path, user_file):
    model = saved_model(tmp_path, 4)
    argv = ["--model", f"{user_file}:build", "--weights", tmp_path / "w.pt", "--data", "digits", "--no-figures"]
    assert run_cli(tmp_path, *argv) == 0
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    images, labels = data.load("digits", "test")
    expected = analyze(model, data.normalize(images, "digits"), labels=labels, n_samples=20, k=4, progress=False)
    assert result["layers"] == expected.to_dict()["layers"]
    assert result["labels"] is True and result["layers"][0]["cwnnk"]["layer_loo_error"] is not None


TINY_RUN = dict(dataset="synthetic", train_subset=64, test_subset=32, batch_size=32, fm_batch=32, epochs=1)


def test_cli_on_a_run_directory(tmp_path):
    from convsim.training.config import TrainConfig
    from convsim.training.loop import load_run, train

    run = tmp_path / "run"
    train(TrainConfig(**TINY_RUN, device="cpu", threads=1, verbose=False, out=str(run)))
    assert run_cli(tmp_path, "--model", run, "--data", "synthetic", "--no-figures") == 0
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    model, _, _ = load_run(run)
    images, labels = data.load("synthetic", "test")
    expected = analyze(model, data.normalize(images, "synthetic"), labels=labels, n_samples=20, k=4, progress=False)
    assert result["inputs"]["trained_on"] == "synthetic" and result["layers"] == expected.to_dict()["layers"]


@pytest.fixture
def files(tmp_path, user_file):
    """A model file, a broken one, inputs with 1 and 3 channels, fitting and misnamed weights."""
    torch.save(torch.rand(25, 3, 8, 8), tmp_path / "rgb.pt")
    torch.save(torch.rand(25, 1, 8, 8), tmp_path / "x.pt")
    (tmp_path / "broken.py").write_text("import torch\n\nLAYERS = 1 / 0\n")
    state = user_model().state_dict()
    torch.save({k.replace("2.", "9."): v for k, v in state.items()}, tmp_path / "other.pt")
    return {"model": f"{user_file}:build", "dir": tmp_path}


ERROR_CASES = {
    "missing model file": (["--model", "{dir}/missing.py:build", "--data", "{dir}/x.pt"], "missing.py does not exist"),
    "import error": (
        ["--model", "{dir}/broken.py:build", "--data", "{dir}/x.pt"],
        r"importing \S*broken.py failed \(broken.py line 3\): ZeroDivisionError: division by zero",
    ),
    "weights mismatch": (
        ["--model", "{model}", "--weights", "{dir}/other.pt", "--data", "{dir}/x.pt"],
        r"does not fit the model: 2 missing keys \(first: '2.weight'\), 2 unexpected keys \(first: '9.weight'\)",
    ),
    "channels": (
        ["--model", "{model}", "--data", "{dir}/rgb.pt"],
        r"first conv layer 0 \(Conv2d\) takes inputs \(N, 1, H, W\) but the data have shape \(N, 3, 8, 8\)",
    ),
    "missing data file": (["--model", "{model}", "--data", "{dir}/nope.npy"], r"--data: \S*nope.npy does not exist"),
    "missing weights": (
        ["--model", "{model}", "--weights", "{dir}/nope.pt", "--data", "{dir}/x.pt"],
        r"--weights: \S*nope.pt does not exist",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_cli_user_errors_exit_2_with_one_line(files, capsys, case):
    template, message = ERROR_CASES[case]
    argv = [a.format(**files) for a in template]  # progress bars on: the error still comes alone
    assert cli.main(["analyze", *argv, "--out", str(files["dir"] / "out")]) == 2
    assert re.search(message, error_line(capsys.readouterr().err))
