"""Where the tests get the real SIIM-ACR ``train-rle.csv``.

No SIIM-ACR images can be installed here, but its mask file can: PyPI's ``torchxrayvision``
wheel ships it as ``torchxrayvision/data/siim-pneumothorax-train-rle.csv.gz`` (12,954 rows for
12,047 images, the stage-2 training labels). The wheel is only downloaded (``pip download
--no-deps``) and opened as a zip: torchxrayvision itself, and the PyTorch it depends on, are
never installed.

Lookup order:
1. ``$SIIM_RLE_CSV``: a ``train-rle.csv`` or ``.csv.gz`` (the original Kaggle file works too);
2. the cache, ``$XDG_CACHE_HOME/pneumotriage`` or ``~/.cache/pneumotriage``;
3. download the wheel with ``python -m pip download`` and extract the file into the cache.

If none works, the tests that need it are skipped, or fail when
``PNEUMOTRIAGE_REQUIRE_SIIM_CSV=1`` (CI sets it so the round trip cannot silently vanish).
Run ``python tests/siim_csv.py`` to fetch the file ahead of time; it prints its path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "torchxrayvision==1.5.7"
MEMBER = "torchxrayvision/data/siim-pneumothorax-train-rle.csv.gz"
FILENAME = "siim-pneumothorax-train-rle.csv.gz"
# sha256 of the decompressed CSV in torchxrayvision 1.5.7 (the .gz bytes may vary if recompressed).
CSV_SHA256 = "4a2d2a463511c0205f46768bbce1ef0172ac02415b84d7bfc430d70c58b55b4f"
ROWS = 12_954
IMAGES = 12_047
HEIGHT = WIDTH = 1024


class Unavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "pneumotriage"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The CSV's bytes, gunzipped if it is gzip-compressed."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def is_pinned(path: str | os.PathLike) -> bool:
    """True if ``path`` holds exactly the torchxrayvision 1.5.7 file."""
    return hashlib.sha256(read_bytes(path)).hexdigest() == CSV_SHA256


def _download(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pneumotriage-txrv-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", WHEEL_SPEC,
            "--no-deps", "--only-binary=:all:", "--retries", "1", "--timeout", "30",
            "-q", "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"`{' '.join(cmd)}` failed: {exc}") from exc
        if proc.returncode != 0:
            raise Unavailable(
                f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
            )
        wheels = sorted(Path(tmp).glob("torchxrayvision-*.whl"))
        if not wheels:
            raise Unavailable(f"pip download left no torchxrayvision wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as z:
            try:
                gz = z.read(MEMBER)
            except KeyError as exc:
                raise Unavailable(f"{wheels[0].name} has no {MEMBER}") from exc
        got = hashlib.sha256(gzip.decompress(gz)).hexdigest()
        if got != CSV_SHA256:
            raise Unavailable(f"{MEMBER} in {wheels[0].name} has sha256 {got}, not {CSV_SHA256}")
        part = dest.with_name(dest.name + f".part{os.getpid()}")
        part.write_bytes(gz)
        os.replace(part, dest)


def find_csv(download: bool = True) -> Path:
    """The path of the SIIM-ACR RLE CSV; raises ``Unavailable`` with the reason if none."""
    env = os.environ.get("SIIM_RLE_CSV")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise Unavailable(f"SIIM_RLE_CSV={env} is not a file")
        return p
    cached = cache_dir() / FILENAME
    if cached.is_file():
        if is_pinned(cached):
            return cached
        cached.unlink()  # corrupt or partial: fetch again
    if not download:
        raise Unavailable(f"{cached} not found and downloading is off")
    _download(cached)
    return cached


def require_csv() -> Path:
    """``find_csv`` for a test: skips (or fails with PNEUMOTRIAGE_REQUIRE_SIIM_CSV=1)."""
    import pytest

    try:
        return find_csv()
    except Unavailable as exc:
        msg = f"SIIM-ACR train-rle.csv unavailable: {exc}"
        if os.environ.get("PNEUMOTRIAGE_REQUIRE_SIIM_CSV", "") not in ("", "0"):
            pytest.fail(msg)
        pytest.skip(msg)


if __name__ == "__main__":
    try:
        print(find_csv())
    except Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
