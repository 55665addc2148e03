"""Full compile-resource table of the GPU kernels (no GPU needed): every shipped Triton
specialisation and every CUDA kernel, for sm_80 and sm_90, with registers, shared memory,
stack and spills. Writes bench/results/compile-table.json and .md; exit 1 on any spill.

    python bench/compile_table.py [--jobs 2]

CI compiles a subset of this grid on every run (tests/test_triton_compile.py,
tests/test_cuda_compile.py).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from cbda.compile_report import main

    out = os.path.join(HERE, "results", "compile-table")
    raise SystemExit(main(["--full", "--json", out + ".json", "--md", out + ".md"] + sys.argv[1:]))
