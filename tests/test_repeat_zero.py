"""`x 0` repeats a statement zero times, so a block parameter can switch a layer on or off."""

from __future__ import annotations

import numpy as np

import cnndsl

SWITCH = """
block unit(c, se=1) {
  conv 3x3 pad1 -> c; relu
  conv 1x1 -> c x se
}
network switch
input 3x8x8
unit(8)
unit(8, se=0)
relu x 0
"""


def test_zero_repetitions_leave_the_statement_out():
    net = cnndsl.parse(SWITCH)
    names = [node.name for node in net.ir.leaves()]
    assert names == ["unit1.conv1", "unit1.relu1", "unit1.conv2", "unit2.conv1", "unit2.relu1"]
    # (3*9 + 1) * 8 + (8 + 1) * 8 for the first call, (8*9 + 1) * 8 for the second
    assert net.analyze().params == 224 + 72 + 584


def test_a_network_of_nothing_is_the_identity_on_every_backend():
    net = cnndsl.parse("network nothing\ninput 2x3x3\nrelu x 0\n")
    assert net.analyze().output == (2, 3, 3) and net.analyze().params == 0
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(net.to_numpy().forward(x), x)
