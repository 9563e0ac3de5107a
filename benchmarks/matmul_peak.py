"""This CPU's dense matmul throughput in fp32 and bf16: the peaks a training run's FLOP/s is read against.

    python -m benchmarks.matmul_peak --threads 2

Square `n x n` matmuls (2 n^3 FLOPs each), best of `--repeats` timed after a warm-up: the best, not
the mean, because the machine may be shared and the peak is what the hardware can do.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lorasp_core.precision import cpu_has_fast_bf16


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks and caches its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    figures = {
        "threads": args.threads,
        "n": args.n,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16_detected": cpu_has_fast_bf16(),
        "fp32_gflops": round(matmul_gflops(torch.float32, args.n, args.repeats), 1),
        "bf16_gflops": round(matmul_gflops(torch.bfloat16, args.n, args.repeats), 1),
    }
    figures["bf16_over_fp32"] = round(figures["bf16_gflops"] / figures["fp32_gflops"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
