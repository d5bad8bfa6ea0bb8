#!/usr/bin/env python3
"""PIL's decode + resize throughput on the JPEGs written by `decode` (the reference for RESULTS.md).

Times, on one process and on a pool of one process per core: Image.open().convert('RGB') alone,
then with .resize((224, 224), BICUBIC) and BILINEAR; best of several rounds over every file.

    python3 bench/pil_decode.py [DIR] [ROUNDS]
"""
import glob
import multiprocessing
import os
import sys
import tempfile
import time

import PIL
from PIL import Image

SIZE = (224, 224)


def decode(path):
    with Image.open(path) as im:
        return im.convert("RGB").size


def bicubic(path):
    with Image.open(path) as im:
        return im.convert("RGB").resize(SIZE, Image.BICUBIC).size


def bilinear(path):
    with Image.open(path) as im:
        return im.convert("RGB").resize(SIZE, Image.BILINEAR).size


def best(rounds, files, run):
    run(files)  # warm-up: file cache, worker start
    fastest = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(files)
        fastest = min(fastest, time.perf_counter() - start)
    return len(files) / fastest


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "losa-bench-jpegs")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    if not files:
        sys.exit(f"no JPEGs in {folder}: run the `decode` benchmark first")
    cores = os.cpu_count()
    print(f"PIL {PIL.__version__}, {len(files)} files in {folder}, {cores} processes, best of {rounds} rounds")
    print("\n| operation | 1 process (images/s) | all cores (images/s) |\n| --- | ---: | ---: |")
    # How far losa's resize (written by `decode`) is from PIL's, on the first file.
    for name, filt in [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)]:
        ours_path = os.path.join(folder, f"resized-{name}.png")
        if os.path.exists(ours_path):
            with Image.open(files[0]) as im:
                pil = im.convert("RGB").resize(SIZE, filt).tobytes()
            with Image.open(ours_path) as im:
                ours = im.convert("RGB").tobytes()
            diffs = [abs(a - b) for a, b in zip(pil, ours)]
            print(f"{name}: losa vs PIL on {os.path.basename(files[0])}: mean |difference| "
                  f"{sum(diffs) / len(diffs):.3f} grey levels, max {max(diffs)}")
    with multiprocessing.Pool(cores) as pool:
        for name, work in [("decode", decode), ("decode + bicubic resize 224", bicubic),
                           ("decode + bilinear resize 224", bilinear)]:
            single = best(rounds, files, lambda fs: [work(f) for f in fs])
            parallel = best(rounds, files, lambda fs: pool.map(work, fs, chunksize=4))
            print(f"| {name} | {single:.0f} | {parallel:.0f} |")


if __name__ == "__main__":
    main()
