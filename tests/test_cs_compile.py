"""torch.compile: a step that adds the CS regulariser traces as one graph and gives the eager loss and gradients.

Most tests use the ``aot_eager`` backend: dynamo's full-graph capture and AOTAutograd's traced
forward and backward (through the operators' fake implementations and autograd formula), without
generating C++; one slow test runs the default inductor backend.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convsim import similarity
from convsim.similarity import ConvSimilarity

VARIANTS = [(p, c) for p in ("all", "adjacent") for c in ("per_channel", "cross")]


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, groups=2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 6, 6, generator=gen), torch.tensor([0, 1, 2, 1])


def loss_and_grads(fn, params, *args) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = fn(*args)
    return loss.detach(), list(torch.autograd.grad(loss, list(params)))


class GraphRecorder:
    """A backend that keeps every graph dynamo hands it and compiles it with ``aot_eager``."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def cs_calls(self) -> int:
        return sum(node.target is torch.ops.convsim.parseval_cs.default for g in self.graphs for node in g.graph.nodes)


def assert_matches_eager(compiled_result, eager_result, rtol=1e-6, atol=1e-6):
    loss, grads = compiled_result
    want_loss, want_grads = eager_result
    torch.testing.assert_close(loss, want_loss, rtol=rtol, atol=atol)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_task_loss_plus_cs_compiles_as_one_graph_with_the_eager_loss_and_gradients(pairs, channels):
    torch._dynamo.reset()
    net = tiny_net()
    reg = ConvSimilarity(net, beta=0.05, pairs=pairs, channels=channels)

    def step(x, y):
        return nn.functional.cross_entropy(net(x), y) + reg()

    backend = GraphRecorder()
    compiled = torch.compile(step, fullgraph=True, backend=backend)  # fullgraph: a graph break raises
    result = loss_and_grads(compiled, net.parameters(), *batch())
    assert len(backend.graphs) == 1
    assert backend.cs_calls() == len(reg.layers)
    assert_matches_eager(result, loss_and_grads(step, net.parameters(), *batch()))


def test_compiled_step_under_bf16_autocast_keeps_cs_in_float32():
    torch._dynamo.reset()
    net = tiny_net(seed=2)
    reg = ConvSimilarity(net, beta=0.05)

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)
            penalty = reg()
        return nn.functional.cross_entropy(logits.float(), y) + penalty, penalty

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, y = batch()
    (loss, penalty), (want_loss, want_penalty) = compiled(x, y), step(x, y)
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, want_penalty, rtol=1e-6, atol=0)
    first = lambda *args: compiled(*args)[0]  # noqa: E731
    eager_first = lambda *args: step(*args)[0]  # noqa: E731
    assert_matches_eager(
        loss_and_grads(first, net.parameters(), x, y),
        loss_and_grads(eager_first, net.parameters(), x, y),
        rtol=2e-2,
        atol=2e-2,
    )
    torch.testing.assert_close(loss, want_loss, rtol=2e-2, atol=2e-2)


def test_compiled_regulariser_gradient_is_exactly_the_eager_one():
    # No bf16 in the way: the CS gradient alone, compiled and eager, on the same float32 weights.
    torch._dynamo.reset()
    net = tiny_net(seed=3)
    reg = ConvSimilarity(net, beta=0.3)
    weights = [net[0].weight, net[2].weight]
    compiled = torch.compile(lambda: reg(), fullgraph=True, backend="aot_eager")
    assert_matches_eager(loss_and_grads(compiled, weights), loss_and_grads(reg, weights), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_operators_pass_torch_library_opcheck(pairs, channels, channels_last):
    # Schema, fake (meta) implementation against the real one, autograd registration, AOT dispatch.
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    if channels_last:
        w = w.to(memory_format=torch.channels_last)
    torch.library.opcheck(similarity._parseval_cs, (w.requires_grad_(), pairs, channels, 2))
    _, state = similarity._parseval_cs(w.detach(), pairs, channels, 2)
    grad = torch.tensor(1.5, dtype=torch.float64)
    torch.library.opcheck(similarity._parseval_cs_grad, (grad, w.detach(), state, pairs, channels, 2))


@pytest.mark.slow
def test_inductor_compiled_step_matches_eager():
    # The default backend generates and builds C++ for the rest of the step (tens of seconds on 2 cores).
    torch._dynamo.reset()
    net = tiny_net(seed=5)
    reg = ConvSimilarity(net, beta=0.05)

    def step(x, y):
        return nn.functional.cross_entropy(net(x), y) + reg()

    compiled = torch.compile(step, fullgraph=True)
    assert_matches_eager(
        loss_and_grads(compiled, net.parameters(), *batch()),
        loss_and_grads(step, net.parameters(), *batch()),
        atol=1e-5,
    )
