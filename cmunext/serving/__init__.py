"""Build-time serving tools: ONNX export (export), the runtime and precision choice (precision), int8 with
ONNX Runtime (quantize), BentoML packaging (package), the bento store (store), launching a bento (serve) and the
benchmarks (bench, bench_inference). What a bento runs is the torch-free package `cmunext_serving`.
"""
