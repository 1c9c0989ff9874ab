"""Write a labelled synthetic set in the SIIM-ACR layout.

    OUTDIR/dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    OUTDIR/train-rle.csv        ImageId, EncodedPixels   (one row per image)
    OUTDIR/synth-cases.csv      what the generator drew for each image (not part of SIIM-ACR)

``train-rle.csv`` is written as the original Kaggle file is: the header ``ImageId,
EncodedPixels`` and every value after a space (`` -1`` for an image without pneumothorax, the
mask's RLE otherwise, column-major with offsets relative to the end of the previous run; see
`pneumotriage_models.rle`). ImageId is the SOP Instance UID. A synthetic pneumothorax is one
region, so each image has exactly one row.

Case ``i`` of the set is ``synth.make_case(seed, i)``: the same ``(n, seed, size)`` writes the
same bytes.

Command line::

    python -m pneumotriage_models.generate OUTDIR N --seed S [--size PX] [--jobs J]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .dicomio import case_uids, write_dicom
from .rle import encode
from .synth import make_case

__all__ = ["GeneratedImage", "generate", "main"]


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    image_id: str  # SOP Instance UID
    path: Path
    rows: int
    columns: int
    positive: bool
    side: str | None
    kind: str | None
    mask_area: int
    rle: str
    modality: str
    photometric: str
    bits_stored: int
    view: str


def _one(args: tuple[str, int, int, int | tuple[int, int] | None]) -> GeneratedImage:
    outdir, seed, index, size = args
    case = make_case(seed, index, size=size)
    uids = case_uids(seed, index)
    path = (
        Path(outdir)
        / "dicom-images-train"
        / uids["study"]
        / uids["series"]
        / f"{uids['instance']}.dcm"
    )
    write_dicom(case, path, seed=seed, index=index)
    return GeneratedImage(
        index=index,
        image_id=str(uids["instance"]),
        path=path,
        rows=case.rows,
        columns=case.columns,
        positive=case.positive,
        side=case.side,
        kind=case.kind,
        mask_area=case.mask_area,
        rle=encode(case.mask),
        modality=case.modality,
        photometric=case.photometric,
        bits_stored=case.bits_stored,
        view=case.view,
    )


def generate(
    outdir: str | os.PathLike,
    n: int,
    seed: int,
    *,
    size: int | tuple[int, int] | None = None,
    jobs: int = 1,
    start: int = 0,
) -> list[GeneratedImage]:
    """Write cases ``start .. start+n-1`` of set ``seed`` under ``outdir`` (SIIM-ACR layout).

    ``size`` overrides the drawn image size (an int for square images, or ``(rows, columns)``);
    ``jobs`` > 1 draws cases in that many processes (the output does not depend on it).
    Returns one record per image, in index order.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    work = [(str(outdir), int(seed), start + i, size) for i in range(n)]
    if jobs > 1 and n > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            records = list(pool.imap(_one, work, chunksize=4))
    else:
        records = [_one(w) for w in work]

    with open(outdir / "train-rle.csv", "w", newline="") as f:
        f.write("ImageId, EncodedPixels\n")
        f.writelines(f"{r.image_id}, {r.rle}\n" for r in records)
    with open(outdir / "synth-cases.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            [
                "ImageId",
                "index",
                "seed",
                "positive",
                "side",
                "kind",
                "mask_area",
                "rows",
                "columns",
                "modality",
                "photometric",
                "bits_stored",
                "view",
                "path",
            ]
        )
        for r in records:
            w.writerow(
                [
                    r.image_id,
                    r.index,
                    seed,
                    int(r.positive),
                    r.side or "",
                    r.kind or "",
                    r.mask_area,
                    r.rows,
                    r.columns,
                    r.modality,
                    r.photometric,
                    r.bits_stored,
                    r.view,
                    r.path.relative_to(outdir).as_posix(),
                ]
            )
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pneumotriage_models.generate",
        description="Write a synthetic chest radiograph set in the SIIM-ACR layout "
        "(dicom-images-train/ and train-rle.csv). Demo: synthetic data, not for clinical use.",
    )
    p.add_argument("outdir", type=Path)
    p.add_argument("n", type=int, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="square image size in pixels (default: drawn, 768..1400)",
    )
    p.add_argument("--start", type=int, default=0, help="index of the first case")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    a = p.parse_args(argv)
    records = generate(a.outdir, a.n, a.seed, size=a.size, jobs=a.jobs, start=a.start)
    pos = sum(r.positive for r in records)
    print(f"wrote {len(records)} images ({pos} with pneumothorax) to {a.outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
