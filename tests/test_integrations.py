"""Optional integrations, tested when their tool is installed: the torchmetrics metric, the Lightning example.

The oracle of ``FeatureMapSimilarityMetric`` is :class:`convsim.measure.FeatureMapSimilarity` on
the same data (itself tested against loops in ``tests/test_measure.py``); the union of two ranks'
data is simulated by ``merge_state`` and by a ``compute()`` synchronised through a stand-in gather.
"""

import csv
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from convsim.measure import FeatureMapSimilarity

torchmetrics = pytest.importorskip("torchmetrics", reason="the torchmetrics extra is not installed")
from convsim import integrations  # noqa: E402
from convsim.integrations.torchmetrics import FeatureMapSimilarityMetric  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_cs.py"


def nets():
    """Random shapes: plain, grouped and padded/strided 2-D convs, and a Conv1d net; inputs to match."""
    torch.manual_seed(0)
    yield (
        nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, groups=2, padding=1), nn.Conv2d(8, 5, 2, 2)),
        lambda n: torch.randn(n, 3, 9, 9),
    )
    yield nn.Sequential(nn.Conv1d(2, 7, 5), nn.Tanh(), nn.Conv1d(7, 3, 3)), lambda n: torch.randn(n, 2, 17)


def batches(make, sizes=(3, 1, 5)):
    return [make(n) for n in sizes]


def flat(result):
    """{layer: {key: v}} -> {(layer, key): v}, for pytest.approx."""
    return {(layer, key): v for layer, values in result.items() for key, v in values.items()}


def plain(model, xs, **kw):
    m = FeatureMapSimilarity(model, **kw)
    for x in xs:
        m.update(x)
    return m.compute()


@pytest.mark.parametrize("kw", [{}, {"centered": True}, {"activation": torch.relu, "threshold": 0.2}])
@pytest.mark.parametrize("case", range(2))
def test_metric_equals_feature_map_similarity_over_several_updates(case, kw):
    model, make = list(nets())[case]
    xs = batches(make)
    metric = FeatureMapSimilarityMetric(model, **kw)
    for x in xs:
        metric.update(x)
    assert metric.compute() == plain(model, xs, **kw)


def test_metric_measures_the_chosen_layers_only():
    model, make = next(nets())
    xs = batches(make)
    metric = FeatureMapSimilarityMetric(model, layers=["2"])
    for x in xs:
        metric.update(x)
    assert metric.compute() == plain(model, xs, layers=["2"])


def test_forward_gives_the_batchs_values_and_keeps_accumulating():
    model, make = next(nets())
    xs = batches(make)
    metric = FeatureMapSimilarityMetric(model)
    metric.update(xs[0])
    assert metric(xs[1]) == plain(model, xs[1:2])
    metric.update(xs[2])
    assert flat(metric.compute()) == pytest.approx(flat(plain(model, xs)), rel=1e-12)


def test_reset_forgets_everything_seen():
    model, make = next(nets())
    metric = FeatureMapSimilarityMetric(model)
    for x in batches(make):
        metric.update(x)
    metric.reset()
    assert all(not state.any() for state in metric.metric_state.values())
    fresh = batches(make, sizes=(4, 2))
    for x in fresh:
        metric.update(x)
    assert metric.compute() == plain(model, fresh)


def test_every_state_is_a_sum_reduced_by_sum():
    model, _ = next(nets())
    metric = FeatureMapSimilarityMetric(model)
    assert len(metric._reductions) == 3 * len(metric.layers) == 9
    assert all(fn is torchmetrics.utilities.data.dim_zero_sum for fn in metric._reductions.values())


def test_merged_states_give_the_metric_of_the_union():
    """Two 'ranks' each see half of the data; merging their states (sum) measures all of it."""
    model, make = next(nets())
    xs = batches(make, sizes=(3, 4, 2, 5))
    a, b = FeatureMapSimilarityMetric(model), FeatureMapSimilarityMetric(model)
    for x in xs[:2]:
        a.update(x)
    for x in xs[2:]:
        b.update(x)
    a.merge_state(b)
    assert flat(a.compute()) == pytest.approx(flat(plain(model, xs)), rel=1e-12)


def test_synchronised_compute_sums_the_ranks_and_keeps_the_local_state():
    """compute() under (simulated) DDP: torchmetrics gathers every state and reduces it with sum."""
    model, make = next(nets())
    xs = batches(make, sizes=(3, 4, 2, 5))
    other = FeatureMapSimilarityMetric(model, centered=True)
    for x in xs[2:]:
        other.update(x)
    gathered = iter(other.metric_state.values())

    def gather(tensor, group=None):  # this rank's state, then the other rank's, in state order
        return [tensor, next(gathered)]

    metric = FeatureMapSimilarityMetric(
        model, centered=True, dist_sync_fn=gather, distributed_available_fn=lambda: True
    )  # centred: the Gram, the sums and the count all enter (cosines alone would not see a scaled Gram)
    for x in xs[:2]:
        metric.update(x)
    assert flat(metric.compute()) == pytest.approx(flat(plain(model, xs, centered=True)), rel=1e-12)
    assert int(metric.count_0) == sum(len(x) for x in xs[:2]) * 7 * 7  # unsynced again after compute


def test_the_model_is_not_part_of_the_metric():
    model, _ = next(nets())
    metric = FeatureMapSimilarityMetric(model)
    assert list(metric.parameters()) == [] and list(metric.children()) == []
    assert sorted(metric.state_dict()) == []  # torchmetrics keeps states out of state_dict by default


def test_update_leaves_the_models_modes_and_gradients_alone():
    model, make = next(nets())
    model.train()
    metric = FeatureMapSimilarityMetric(model)
    metric.update(make(2))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_bad_layers_are_refused_as_by_feature_map_similarity():
    model, _ = next(nets())
    with pytest.raises(ValueError, match="not convs"):
        FeatureMapSimilarityMetric(model, layers=["1"])
    with pytest.raises(KeyError, match="no module named"):
        FeatureMapSimilarityMetric(model, layers=["nope"])


def test_a_layer_never_called_cannot_be_computed():
    model, _ = next(nets())
    metric = FeatureMapSimilarityMetric(model)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="never called"):
        metric.compute()


def test_without_torchmetrics_building_the_metric_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(integrations, "torchmetrics", integrations.torchmetrics)  # restored afterwards
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # `import torchmetrics` now raises ImportError
    monkeypatch.delitem(sys.modules, "convsim.integrations.torchmetrics")
    module = importlib.import_module("convsim.integrations.torchmetrics")  # importing still works
    model, _ = next(nets())
    with pytest.raises(ImportError, match=r"pip install convsim\[torchmetrics\]"):
        module.FeatureMapSimilarityMetric(model)


# ---------------------------------------------------------------- the Lightning example


@pytest.mark.slow
def test_lightning_example_trains_one_epoch_on_synthetic_data_logging_per_layer_cs(tmp_path, monkeypatch):
    """One epoch of examples/lightning_cs.py: every conv layer's CS is logged, and beta times their sum
    is the CS term of the loss logged at the same step."""
    pytest.importorskip("lightning", reason="the lightning extra is not installed")
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("lightning_cs", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--synthetic", "--epochs", "1", "--out", str(tmp_path), "--accelerator", "cpu", "--beta", "0.01"]
    metrics = example.main(argv)
    layers = [f"cs/features.{i}" for i in (0, 3, 6)]
    assert set(layers) <= set(metrics) and "val_acc" in metrics
    with open(next(tmp_path.glob("lightning_logs/version_*/metrics.csv")), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train_cs"]]
    assert rows and {r["epoch"] for r in rows} == {"0"}
    for r in rows:
        assert float(r["train_cs"]) == pytest.approx(0.01 * sum(float(r[k]) for k in layers), rel=1e-5)
