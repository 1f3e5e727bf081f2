"""`cnndsl import` of ResNet-152 vs reading the same ONNX file with onnx alone, in one run.

The model is benchmarks/resnet152.cnn compiled to ONNX (seeded weights, 230 MB) with node names,
doc strings and metadata stripped, written to a temporary file. Timed in-process, median of
`--runs`, one thread:

- `cnndsl.import_onnx(path)`: read, recognise, decompose, fold, print, parse the program back,
  name the weights (the program and its safetensors tensors, in memory);
- the baseline, what a user does to get the graph with shapes: `onnx.load` and
  `onnx.shape_inference.infer_shapes` (the shapes cnndsl's import needs), and `onnx.load` alone.

    python benchmarks/import_onnx.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnx  # noqa: E402

import cnndsl  # noqa: E402
from cnndsl.backends import onnx_builder  # noqa: E402

HERE = Path(__file__).resolve().parent
PARAMS = 60_192_808  # torchvision resnet152


def median_time(work, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    net = cnndsl.load(HERE / "resnet152.cnn")
    model = onnx_builder.build(net)
    for node in model.graph.node:
        node.name, node.doc_string = "", ""
    del model.metadata_props[:]
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resnet152.onnx"
        onnx.save(model, path)
        size = path.stat().st_size
        del model
        result = cnndsl.import_onnx(path)
        back = cnndsl.parse(result.text)
        assert back.report.params == PARAMS, back.report.params
        lines = len([line for line in result.text.splitlines() if line.strip()])
        ours = median_time(lambda: cnndsl.import_onnx(path), args.runs)
        with_shapes = median_time(lambda: onnx.shape_inference.infer_shapes(onnx.load(path)), args.runs)
        load_only = median_time(lambda: onnx.load(path), args.runs)
    print(f"ResNet-152 ONNX, {size / 1e6:.0f} MB; imported as {lines} non-blank lines, "
          f"{back.report.params:,} parameters")
    print(f"cnndsl.import_onnx                    {ours:7.3f} s")
    print(f"onnx.load + shape_inference           {with_shapes:7.3f} s   ratio {ours / with_shapes:.2f}")
    print(f"onnx.load alone                       {load_only:7.3f} s   ratio {ours / load_only:.2f}")


if __name__ == "__main__":
    main()
