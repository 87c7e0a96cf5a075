"""Benchmark chapter 1's data pipeline: throughput, MinHash speed, and peak memory vs corpus size.

    python chapters/ch01_data/benchmark_pipeline.py            # 1x and 4x the corpus
    python chapters/ch01_data/benchmark_pipeline.py --scales 1 2 4 8

Prints (no assertions; timings depend on the machine and on what else runs on it):
- the whole pipeline's throughput in documents/s and MB/s on the embedded corpus, wall and CPU;
- from-scratch NumPy MinHash vs datasketch.MinHash on the same shingles of the clean corpus;
- peak memory of the pipeline on N x the corpus (the stream repeated N times, each copy under
  new origins), each run in a fresh process: the Python heap peak (tracemalloc) and the
  process's peak resident size. A streaming pipeline's peak stays flat as N grows.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from chapters.ch01_data.data_pipeline import (
    NearDuplicateSettings,
    build_clean_corpus,
    datasketch_minhash,
    ensure_clean_corpus,
    iter_split,
    minhash_signature,
    word_shingles,
)
from chapters.corpus_sources import RawDocument, iter_embedded_corpus


def repeated_corpus(scale: int) -> Iterator[RawDocument]:
    """The embedded corpus `scale` times; in copy k > 0, "stdlib:json/x.py" becomes
    "stdlib:copy{k}/json/x.py" (a new origin with the same folders, so path filters still apply)."""
    for copy in range(scale):
        for document in iter_embedded_corpus():
            source, path = document.origin.split(":", 1)
            origin = document.origin if copy == 0 else f"{source}:copy{copy}/{path}"
            yield RawDocument(origin, document.data)


def run_pipeline(scale: int, trace_memory: bool) -> dict:
    """Build the clean corpus of `scale` x the embedded corpus into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="ch01-benchmark-"))
    try:
        if trace_memory:
            tracemalloc.start()
        wall, cpu = time.perf_counter(), time.process_time()
        manifest = build_clean_corpus(repeated_corpus(scale), folder / "corpus")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        heap_peak = tracemalloc.get_traced_memory()[1] if trace_memory else None
        if trace_memory:
            tracemalloc.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "scale": scale,
        "documents_in": manifest["documents_in"],
        "bytes_in": manifest["bytes_in"],
        "documents_out": manifest["documents_out"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "heap_peak_bytes": heap_peak,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }


def throughput() -> None:
    result = run_pipeline(1, trace_memory=False)
    megabytes = result["bytes_in"] / 1e6
    print("Whole pipeline on the embedded corpus (decode -> filters -> dedup -> split -> shards)")
    print(
        f"  {result['documents_in']} documents, {megabytes:.1f} MB in, "
        f"{result['documents_out']} documents out"
    )
    for clock in ("wall", "cpu"):
        seconds = result[f"{clock}_seconds"]
        print(
            f"  {clock:>4}: {seconds:6.2f} s = {result['documents_in'] / seconds:7.0f} docs/s, "
            f"{megabytes / seconds:5.1f} MB/s"
        )


def minhash_speed() -> None:
    settings = NearDuplicateSettings()
    corpus = ensure_clean_corpus()
    shingle_sets = [
        word_shingles(document.text, settings.shingle_size)
        for split in ("train", "validation")
        for document in iter_split(split, corpus)
    ]
    total = sum(len(shingles) for shingles in shingle_sets)
    timings = {}
    for name, sketch in [
        ("from scratch (NumPy)", lambda s: minhash_signature(s, settings.num_perm, settings.seed)),
        ("datasketch.MinHash", lambda s: datasketch_minhash(s, settings.num_perm, settings.seed)),
    ]:
        started = time.process_time()
        for shingles in shingle_sets:
            sketch(shingles)
        timings[name] = time.process_time() - started
    print(
        f"\nMinHash ({settings.num_perm} permutations) of the clean corpus: "
        f"{len(shingle_sets)} documents, {total:,} shingles (CPU time)"
    )
    for name, seconds in timings.items():
        print(f"  {name:>22}: {seconds:6.2f} s = {total / seconds / 1e3:7.0f}k shingles/s")
    ratio = timings["from scratch (NumPy)"] / timings["datasketch.MinHash"]
    print(f"  ratio from scratch / datasketch: {ratio:.2f} (below 1: ours is faster)")


def memory(scales: list[int]) -> None:
    print("\nPeak memory vs corpus size (each run in a fresh process, tracemalloc on)")
    print(
        f"  {'scale':>5} {'docs in':>8} {'MB in':>7} {'docs out':>8} {'heap peak':>10} {'max RSS':>9}"
    )
    for scale in scales:
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(scale)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(
            f"  {scale:>4}x {result['documents_in']:8} {result['bytes_in'] / 1e6:7.1f} "
            f"{result['documents_out']:8} {result['heap_peak_bytes'] / 1e6:8.1f} MB "
            f"{result['max_rss_bytes'] / 1e6:6.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(run_pipeline(arguments.child, trace_memory=True)))
        return
    throughput()
    minhash_speed()
    memory(arguments.scales)


if __name__ == "__main__":
    main()
