"""LeNet-5 from the language sketch: the figures the sketch promises."""

from pathlib import Path

import cnndsl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_lenet5_parameters_and_receptive_fields():
    report = cnndsl.load(EXAMPLES / "lenet5.cnn").analyze()
    assert report.params == 61_706
    assert report.output == (10,)
    conv2, pool2 = report.layer("conv2"), report.layer("pool2")
    assert (conv2.rf, conv2.jump) == ((14, 14), (2, 2))
    assert (pool2.rf, pool2.jump) == ((16, 16), (4, 4))


def test_lenet5_first_conv_explains_its_parameter_count():
    report = cnndsl.load(EXAMPLES / "lenet5.cnn").analyze()
    assert "params: (1*5*5 + 1) * 6 = 156" in report.explain("conv1")
