"""ONNX backend benchmark: ResNet-50 written in cnndsl (examples/resnet50.cnn).

1. Export time: `onnx_builder.serialize(net, weights)` (what `cnndsl compile --target onnx`
   writes) and `onnx_builder.build(net, weights).SerializeToString()`, vs `torch.onnx.export` of the
   torch backend's module with the same weights (TorchScript exporter, opset 17, dynamic batch),
   all to bytes in memory.
2. Inference latency: onnxruntime on our model vs torch eager (`inference_mode`) at batch 1 and 32,
   the same number of threads for both.

    python benchmarks/onnx_backend.py [--repeat N] [--threads T] [--quick]

Targets: export at least 10x faster, onnxruntime latency no worse than torch eager.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESNET50 = ROOT / "examples" / "resnet50.cnn"


def timed(fn, repeat: int, warmup: int = 1) -> tuple[float, float, object]:
    """(median seconds, first-call seconds, last result) of `repeat` calls after `warmup` ones."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), first, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch and onnxruntime")
    parser.add_argument("--quick", action="store_true", help="batch 32 only twice, export only twice")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch

    import cnndsl
    from cnndsl.backends import onnx_builder

    torch.set_num_threads(args.threads)
    repeat = 2 if args.quick else args.repeat
    net = cnndsl.load(RESNET50)
    report = net.analyze()
    weights = net.init_weights(0)
    module = net.to_torch(weights).eval()
    print(f"{net.name}: {report.params:,} parameters, {report.macs / 1e9:.2f} GMACs at "
          f"{'x'.join(map(str, net.ir.input_shape))}; torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{args.threads} thread(s)")

    # -- export ------------------------------------------------------------------------------------------
    def ours() -> bytes:  # the compile path: encode the model with the weights joined in (onnx_builder.serialize)
        return onnx_builder.serialize(net, weights)

    def ours_proto() -> bytes:  # the ModelProto path: net.to_onnx(weights).SerializeToString()
        return onnx_builder.build(net, weights).SerializeToString()

    def theirs() -> bytes:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(module, (torch.zeros(1, *net.ir.input_shape),), buffer, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        return buffer.getvalue()

    def seeded() -> bytes:  # `cnndsl compile --target onnx` after parsing: seeded init + serialize
        return onnx_builder.serialize(net, None, seed=0)

    ours_s, ours_first, model_bytes = timed(ours, repeat)
    proto_s, _, proto_bytes = timed(ours_proto, repeat)
    assert onnx.load_model_from_string(model_bytes) == onnx.load_model_from_string(proto_bytes)
    seeded_s, _, _ = timed(seeded, repeat)
    theirs_s, theirs_first, torch_bytes = timed(theirs, repeat)
    print(f"\nexport (median of {repeat}, to bytes in memory)")
    print(f"  cnndsl onnx_builder.serialize          {ours_s * 1e3:8.1f} ms  (first call {ours_first * 1e3:.1f} ms, "
          f"{len(model_bytes) / 2**20:.1f} MiB)")
    print(f"  cnndsl build().SerializeToString()     {proto_s * 1e3:8.1f} ms")
    print(f"  cnndsl serialize with seeded init      {seeded_s * 1e3:8.1f} ms")
    print(f"  torch.onnx.export (TorchScript)        {theirs_s * 1e3:8.1f} ms  (first call "
          f"{theirs_first * 1e3:.1f} ms, {len(torch_bytes) / 2**20:.1f} MiB)")
    export_ratio = theirs_s / ours_s
    print(f"  ratio torch / cnndsl serialize         {export_ratio:8.1f}x   (target >= 10x)")
    print(f"  ratio torch / cnndsl build+Serialize   {theirs_s / proto_s:8.1f}x")

    # -- latency -----------------------------------------------------------------------------------------
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # BN's num_batches_tracked initializers are unused by the graph
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    print("\nlatency (median)")
    ratios = {}
    worst = 0.0
    for batch in (1, 32):
        x = np.random.default_rng(batch).standard_normal((batch, *net.ir.input_shape)).astype(np.float32)
        runs = repeat if batch > 1 else max(repeat * 4, 10)
        xt = torch.from_numpy(x)

        def run_ort(x=x):
            return session.run(None, {"input": x})[0]

        def run_torch(xt=xt):
            with torch.inference_mode():
                return module(xt).numpy()

        ort_s, _, ort_out = timed(run_ort, runs, warmup=2)
        torch_s, _, torch_out = timed(run_torch, runs, warmup=2)
        error = float(np.max(np.abs(ort_out - torch_out)) / np.max(np.abs(torch_out)))
        worst = max(worst, error)
        ratios[batch] = ort_s / torch_s
        print(f"  batch {batch:>2}: onnxruntime {ort_s * 1e3:8.1f} ms   torch eager {torch_s * 1e3:8.1f} ms   "
              f"ratio ort/torch {ratios[batch]:.2f}   (max |diff| / max |out| {error:.1e})")

    print("\nsummary")
    print(f"  export: cnndsl {export_ratio:.1f}x faster than torch.onnx.export "
          f"({'met' if export_ratio >= 10 else 'MISSED'} >= 10x)")
    for batch, ratio in ratios.items():
        print(f"  latency batch {batch}: onnxruntime / torch eager = {ratio:.2f} "
              f"({'met' if ratio <= 1 else 'MISSED'} <= 1)")
    if worst > 1e-3:
        print(f"  WARNING: onnxruntime and torch disagree by {worst:.1e} (relative)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
