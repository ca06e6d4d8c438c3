"""python3 -m benchmarks.gpu: see benchmarks/gpu/bench.py."""

import sys

from benchmarks.gpu.bench import main

sys.exit(main())
