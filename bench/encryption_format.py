"""Throughput of the proxy-AES streaming encryptor/decryptor beside a plain-copy baseline.

Every row streams the same plaintext in pieces the way a storage wrapper would; the baseline does
only what any passthrough stage does (one copy of each piece), so the ratio says what the
encryption costs per byte on this machine, before HTTP and disk are added. Numbers, not a test:
nothing is asserted.

    .venv/bin/python bench/encryption_format.py [--mib 256] [--piece-kib 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from deltaglider_proxy.storage.encryption_format import (
    ChunkedDecryptor,
    ChunkedEncryptor,
    decrypt_single_shot,
    encrypt_single_shot,
)

MIB = 1 << 20
KEY = bytes(range(32))


def split(data: bytes, piece: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[pos : pos + piece] for pos in range(0, len(data), piece)]


def copy_all(pieces: list[memoryview]) -> int:
    return sum(len(p.tobytes()) for p in pieces)


def encrypt_all(pieces: list[memoryview], size: int) -> int:
    encryptor = ChunkedEncryptor(KEY, size)
    written = sum(len(wire) for p in pieces for wire in encryptor.update(p))
    return written + sum(map(len, encryptor.finish()))


def decrypt_all(pieces: list[memoryview], size: int) -> int:
    decryptor = ChunkedDecryptor(KEY, size)
    produced = sum(len(plain) for p in pieces for plain in decryptor.update(p))
    decryptor.finish()
    return produced


def best_seconds(action: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="plaintext size in MiB")
    parser.add_argument("--piece-kib", type=int, default=1024, help="size of the pieces fed in")
    args = parser.parse_args()
    size, piece = args.mib * MIB, args.piece_kib * 1024

    plaintext = os.urandom(size)
    wire = b"".join(ChunkedEncryptor(KEY, size).update(plaintext))  # finish() adds nothing here
    plain_pieces, wire_pieces = split(plaintext, piece), split(wire, piece)
    half = size // 2
    halves = [split(plaintext[:half], piece), split(plaintext[half:], piece)]

    def encrypt_two_threads() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda part: encrypt_all(part, half), halves))

    blob = encrypt_single_shot(KEY, plaintext)
    rows = [
        ("copy baseline (1 copy per piece)", lambda: copy_all(plain_pieces)),
        ("chunked encrypt", lambda: encrypt_all(plain_pieces, size)),
        ("chunked decrypt", lambda: decrypt_all(wire_pieces, size)),
        ("chunked encrypt, 2 threads", encrypt_two_threads),
        ("single-shot encrypt (whole buffer)", lambda: encrypt_single_shot(KEY, plaintext)),
        ("single-shot decrypt (whole buffer)", lambda: decrypt_single_shot(KEY, blob)),
    ]
    print(f"{args.mib} MiB plaintext, {args.piece_kib} KiB pieces, best of 3, MB/s = 10^6 bytes/s")
    baseline = 0.0
    for name, action in rows:
        rate = size / best_seconds(action) / 1e6
        baseline = baseline or rate
        print(f"  {name:36s} {rate:9.0f} MB/s   {rate / baseline:5.2f}x baseline")


if __name__ == "__main__":
    main()
