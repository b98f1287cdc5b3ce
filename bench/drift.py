"""Drift's own costs, on one core (torch, BLAS and OpenMP limited to one thread):

    python bench/drift.py [--rows 100000]

1. Evaluating a full window: `--rows` reference and `--rows` current requests (descriptors and
   the newest embeddings the windows keep), compared input and output side, as the monitor does.
2. Embedding throughput: requests per second the drift worker describes and embeds (prompt of
   ~40 words, answer of ~120), in batches of 64.

Prints a table; writes bench/results/drift.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORDS = ("the model answers questions about code data history science travel food music and the weather "
         "with short clear sentences that explain each step and give an example where it helps").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def evaluation_seconds(rows: int, repeats: int = 3) -> dict:
    from shipyard.monitor.descriptors import describe
    from shipyard.monitor.drift import DeploymentDrift
    from shipyard.monitor.settings import DriftConfig

    rng = random.Random(0)
    settings = DriftConfig(deployments=["d"], reference_size=rows, current_size=rows)
    state = DeploymentDrift(settings)
    templates = [describe(_text(rng, 40), _text(rng, 120), 60, 150, "stop", -1.0) for _ in range(200)]
    vectors = np.random.default_rng(0).standard_normal((settings.embedding_rows, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i in range(2 * rows):
        row = dict(templates[i % 200], prompt_tokens=float(rng.randint(5, 500)),
                   output_tokens=float(rng.randint(5, 800)), mean_logprob=rng.gauss(-1.0, 0.3))
        vector = vectors[i % len(vectors)]
        state.add(row, vector, vector, None)
    timings = []
    for seed in range(repeats):
        started = time.perf_counter()
        report = state.evaluate(seed)
        timings.append(time.perf_counter() - started)
    return {"rows_per_window": rows, "embeddings_per_window": settings.embedding_rows,
            "seconds": statistics.median(timings), "tests": sorted({f["test"] for side in ("input", "output")
                                                                    for f in report[side]["features"]})}


def embedding_rate(requests: int = 256) -> float:
    import torch

    torch.set_num_threads(1)
    from shipyard.embeddings import Embedder
    from shipyard.monitor.drift import DriftMonitor, Observed
    from shipyard.monitor.settings import DriftConfig

    embedder = Embedder(num_threads=1)
    monitor = DriftMonitor(DriftConfig(deployments=["d"], reference_size=100_000), embedder_factory=lambda: embedder)
    rng = random.Random(1)
    batch = [Observed("d", _text(rng, 40), _text(rng, 120), 60, 150, "stop", -1.0) for _ in range(64)]
    monitor.ingest(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(requests // 64):
        monitor.ingest(batch)
    return (requests // 64) * 64 / (time.perf_counter() - started)


def run(rows: int) -> dict:
    return {"evaluation": evaluation_seconds(rows), "embedding_requests_per_s": embedding_rate()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    results = run(args.rows)
    evaluation = results["evaluation"]
    print(f"\ndrift evaluation, {evaluation['rows_per_window']:,} + {evaluation['rows_per_window']:,} requests "
          f"(tests: {', '.join(evaluation['tests'])}, domain classifier): {evaluation['seconds']:.2f} s on one core "
          f"(target ≤ 5 s)")
    print(f"drift embedding (prompt + answer, MiniLM, one thread): {results['embedding_requests_per_s']:.1f} requests/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'drift.json'}")


if __name__ == "__main__":
    main()
