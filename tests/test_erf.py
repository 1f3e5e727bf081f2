"""The effective receptive field (`cnndsl analyze --erf`, `cnndsl.analysis.erf`) against figures
found another way: the closed form of a stack of uniform 3x3 convolutions, the model's own backward
from its output, and the theoretical field it must stay inside on every example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cnndsl
from cnndsl.analysis.erf import centred_extent, effective_fields
from cnndsl.errors import CnnDslError
from cnndsl.weights import init_weights, save_weights

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# One BLAS thread, here and in the commands run: on the shared 2-core machine spinning threads made
# these small products 4 times slower; no figure depends on the thread count.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


def box_power(n: int) -> list[int]:
    """[1, 1, 1] convolved with itself n times, in exact integers."""
    out = [1]
    for _ in range(n):
        out = [sum(out[i - k] for k in range(3) if 0 <= i - k < len(out)) for i in range(len(out) + 2)]
    return out


def width_holding(coefficients: list[int], share: tuple[int, int] = (9, 10)) -> int:
    """The side of the smallest centred window holding share[0]/share[1] of the sum, exactly."""
    total, centre = sum(coefficients), len(coefficients) // 2
    for r in range(centre + 1):
        if share[1] * sum(coefficients[centre - r:centre + r + 1]) >= share[0] * total:
            return 2 * r + 1
    raise AssertionError("unreachable")


def uniform_stack(n: int, margin: int = 3) -> tuple[cnndsl.Net, dict]:
    side = 2 * n + 1 + 2 * margin
    net = cnndsl.parse(f"network stack\ninput 1x{side}x{side}\n" + "conv 3x3 pad1 -> 1 nobias\n" * n)
    return net, {spec.name: np.full(spec.shape, 0.5, np.float32) for spec in net.tensor_specs()}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 9])
def test_uniform_stack_matches_the_closed_form(n):
    net, weights = uniform_stack(n)
    fields = effective_fields(net, samples=2, weights=weights)
    assert list(fields) == [f"conv{k}" for k in range(1, n + 1)]
    for k in range(1, n + 1):
        field = fields[f"conv{k}"]
        coefficients = box_power(k)
        expected = width_holding(coefficients)
        assert field.size == (expected, expected), (k, field.size, coefficients)
        # the gradient is the k-fold box (times 0.5^k, the same for every input): its support is
        # exactly the theoretical field, its shape the outer product of the coefficients
        rf = net.report.layer(f"conv{k}").rf
        support = np.nonzero(field.gradient)
        assert (np.ptp(support[0]) + 1, np.ptp(support[1]) + 1) == rf == (2 * k + 1, 2 * k + 1)
        window = field.gradient[support[0].min():support[0].max() + 1, support[1].min():support[1].max() + 1]
        exact = np.outer(coefficients, coefficients) * 0.5 ** k  # k weights of 0.5 on every path
        np.testing.assert_allclose(window, exact, rtol=1e-6)
        centre = (net.report.input[1] - 1) // 2
        assert field.centre == (centre, centre) and field.unit == (centre, centre)
    # and it grows as the square root of the depth, the field linearly
    assert fields[f"conv{n}"].size[0] < net.report.layer(f"conv{n}").rf[0] or n < 3


def test_centred_extent_definition():
    assert centred_extent(np.array([0, 1, 8, 1, 0.0]), 2) == 3  # the centre alone holds 80%
    assert centred_extent(np.array([0, 1, 18, 1, 0.0]), 2) == 1  # 18/20 = 90% at the centre alone
    assert centred_extent(np.array([0, 1, 8, 1, 0.0]), 2, mass=0.8) == 1
    assert centred_extent(np.array([0, 1, 7, 1, 0.0]), 2) == 3
    # a centre between two positions: the interval holds them both, side 2
    assert centred_extent(np.array([0, 5, 5, 0.0]), 1.5) == 2
    # the interval may reach past the map: centred on 0, holding position 2 means -2..2, side 5
    assert centred_extent(np.array([1, 0, 9.0]), 0) == 5
    assert centred_extent(np.zeros(4), 1) == 0


def test_a_deep_random_net_has_a_field_far_smaller_than_its_theoretical_one():
    depth = 12
    net = cnndsl.parse("network deep\ninput 3x41x41\n" + "conv 3x3 pad1 -> 8; relu\n" * depth)
    fields = effective_fields(net, samples=4)
    last = fields[f"relu{depth}"]
    rf = net.report.layer(f"relu{depth}").rf[0]
    assert rf == 2 * depth + 1
    assert max(last.size) <= 0.6 * rf, (last.size, rf)
    assert last.samples == 4 and last.gradient.shape == (41, 41)


def plain_gradient(net: cnndsl.Net, weights: dict, x: np.ndarray, unit: tuple[int, int]) -> np.ndarray:
    """The model's own backward, from its output: the gradient of the output's channels at `unit`."""
    model = net.to_numpy(weights)
    out = model.forward(x, train=False)
    dy = np.zeros_like(out)
    dy[:, :, unit[0], unit[1]] = 1
    return np.abs(model.backward(dy)).sum(axis=1).mean(axis=0)


STRUCTURES = {
    "identity residual": "conv 3x3 pad1 -> 4; residual { conv 3x3 pad1 -> 4; relu; conv 3x3 pad1 -> 4 }",
    "projected residual": "conv 3x3 pad1 -> 4; residual { conv 3x3/2 pad1 -> 8; relu } shortcut { conv 1x1/2 -> 8 }",
    "concat crop": "conv 3x3 pad1 -> 4; concat crop { branch {} branch { conv 3x3 -> 4; relu; conv 3x3 -> 4 } }",
    "add": "conv 3x3 pad1 -> 4; add { branch { conv 3x3 pad1 -> 4 } branch { pool max 3x3/1 pad1 } }",
    "input residual": "residual { conv 3x3 pad1 -> 3; relu }",
}


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_structure_rows_match_the_models_own_backward(name):
    """A residual, concat or add row is the sum of its parts: its gradient, put together from
    injections into its body and shortcut (or branches), equals the model's backward from it when
    it is the output; and a layer before it, probed inside the full network, equals the same layer
    as the output of the network cut after it."""
    program = f"network t\ninput 3x17x17\n{STRUCTURES[name]}\n"
    net = cnndsl.parse(program)
    weights = init_weights(net, seed=3)
    fields = effective_fields(net, samples=3, seed=5, weights=weights)
    structure = [row for row in net.report.layers if row.op in ("residual", "concat", "add")][-1]
    x = np.random.default_rng(5).standard_normal((3, 3, 17, 17)).astype(np.float32)
    field = fields[structure.name]
    np.testing.assert_allclose(field.gradient, plain_gradient(net, weights, x, field.unit), rtol=1e-5, atol=1e-7)
    first = net.report.layers[0]
    if first.op == "conv":  # cut after the first conv: the same weights by name
        cut = cnndsl.parse(f"network t\ninput 3x17x17\n{STRUCTURES[name].split(';')[0]}\n")
        cut_weights = {k: v for k, v in weights.items() if k.startswith(first.name + ".")}
        inner = fields[first.name]
        np.testing.assert_allclose(inner.gradient, plain_gradient(cut, cut_weights, x, inner.unit), rtol=1e-5,
                                   atol=1e-7)


def smallest_input(path: Path) -> cnndsl.Net:
    net = cnndsl.load(path)
    if len(net.ir.input_shape) != 3:
        return net
    for side in (16, 24, 32, 48, 64, 96, 128, 188):  # 188: the original U-Net's smallest
        try:
            return cnndsl.load(path, (net.ir.input_shape[0], side, side))
        except CnnDslError:
            continue
    return net


# Over 8 s at one thread on the loaded machine (load average 9 on 2 cores): densenet121 65 s, fcn_resnet50 30,
# resnet101 25, efficientnet_b0 23, convnext_tiny 21, shufflenet 10, mobilenet_v2 9, mobilenet_v3_small 8, and
# unet at 188x188 (its concat crops are also in unet_small and unet_shapes, which are fast). The rest: 0.1-5.4 s.
HEAVY = {"densenet121.cnn", "fcn_resnet50.cnn", "resnet101.cnn", "efficientnet_b0.cnn", "convnext_tiny.cnn",
         "shufflenet_v2_x1_0.cnn", "mobilenet_v2.cnn", "mobilenet_v3_small.cnn", "unet.cnn"}


@pytest.mark.parametrize("name", [pytest.param(p.name, marks=pytest.mark.slow) if p.name in HEAVY else p.name
                                  for p in sorted(EXAMPLES.glob("*.cnn"))])
def test_effective_field_stays_inside_the_theoretical_one(name):
    """erf <= rf on every spatial layer of every example (at its smallest valid input, one sample)."""
    net = smallest_input(EXAMPLES / name)
    fields = effective_fields(net, samples=1)
    spatial = [row for row in net.report.layers if len(row.output) == 3]
    assert set(fields) == {row.name for row in spatial}
    for row in spatial:
        size = fields[row.name].size
        assert all(0 < e <= r for e, r in zip(size, row.rf, strict=True)), (row.name, size, row.rf)


def test_cli_erf_table_and_json(tmp_path):
    net, weights = uniform_stack(4)
    program = tmp_path / "stack.cnn"
    program.write_text(net.source.text)
    path = tmp_path / "ones.safetensors"
    save_weights(weights, path)
    run = [sys.executable, "-m", "cnndsl.cli", "analyze", "--erf", "--weights", str(path), "--samples", "2"]
    data = json.loads(subprocess.run([*run, "--json", str(program)], capture_output=True, text=True, check=True,
                                     cwd=ROOT, env=ONE_THREAD).stdout)
    assert [layer["erf"] for layer in data["layers"]] == [[width_holding(box_power(k))] * 2 for k in range(1, 5)]
    table = subprocess.run([*run, "--width", "100", str(program)], capture_output=True, text=True, check=True,
                           cwd=ROOT, env=ONE_THREAD).stdout
    assert table.splitlines()[1].split()[-4:] == ["RF", "ERF", "jump", "offset"]
    conv4 = next(line for line in table.splitlines() if line.startswith("conv4"))
    assert conv4.split()[-4:-2] == ["9", str(width_holding(box_power(4)))]


def test_cli_erf_depth_shows_block_calls():
    proc = subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", "--erf", "--samples", "1", "--depth", "0",
                           "--input", "3x32x32", "--width", "0", str(EXAMPLES / "cifar_tiny.cnn")],
                          capture_output=True, text=True, cwd=ROOT, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    res = next(line for line in proc.stdout.splitlines() if line.startswith("res2 "))
    rf, erf = res.split()[-4:-2]
    assert 0 < int(erf) <= int(rf)


def test_the_probe_leaves_nothing_behind():
    """The probe's wrappers refer to their layers; it unwraps them, so a model and its activations go
    with their last reference even where the collector is off (`cnndsl analyze` turns it off)."""
    import gc

    from cnndsl.analysis import erf

    net = cnndsl.load(EXAMPLES / "cifar_tiny.cnn")
    gc.collect()
    gc.disable()
    try:
        effective_fields(net, samples=2)
        assert not [o for o in gc.get_objects() if isinstance(o, erf._Probe)]
    finally:
        gc.enable()


def test_bad_samples_is_a_user_error():
    net, _ = uniform_stack(1)
    with pytest.raises(CnnDslError, match="--samples must be 1 or more"):
        effective_fields(net, samples=0)
    proc = subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", "--erf", "--samples", "0",
                           str(EXAMPLES / "lenet5.cnn")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_vector_network_has_no_effective_field():
    net = cnndsl.parse("network mlp\ninput 20\nfc 10; relu\nfc 2\n")
    assert effective_fields(net, samples=1) == {}


def test_one_sample_over_the_limit_is_refused_before_allocating(monkeypatch):
    """Batches split the samples, never one sample: a network whose single sample's activations are
    terabytes is a user error naming --input, at once (it was a MemoryError, or minutes of CPU)."""
    import time

    from cnndsl.analysis import erf

    huge = cnndsl.parse("network big\ninput 1x4x4\nconv 3x3 pad1 -> 2\nupsample 100000x\nconv 1x1 -> 1\n")
    started = time.process_time()
    with pytest.raises(CnnDslError, match="one sample's activations") as caught:
        effective_fields(huge, samples=1)
    assert "--input" in caught.value.hint and time.process_time() - started < 5
    net, _ = uniform_stack(1)
    monkeypatch.setattr(erf, "SAMPLE_LIMIT", net.report.activation_bytes)  # exactly at the limit: measured
    assert effective_fields(net, samples=1)
    monkeypatch.setattr(erf, "SAMPLE_LIMIT", net.report.activation_bytes - 1)
    with pytest.raises(CnnDslError, match="one sample's activations"):
        effective_fields(net, samples=1)



def test_cli_refuses_an_effective_field_too_large(tmp_path):
    path = tmp_path / "z19.cnn"
    path.write_text("network z19\ninput 1x4x4\nconv 3x3 pad1 -> 2\nupsample 100000x\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "cnndsl.cli", "analyze", "--erf", "--samples", "1", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "one sample's activations" in proc.stderr and "fix:" in proc.stderr, proc.stderr
