"""``faceveil demo``: a sample dataset from the bundled public-domain photos, anonymized locally."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from faceveil.anon_core import demo_data
from faceveil.anon_core.imageio import decode_image

log = logging.getLogger(__name__)

# Person-like file names: the demo shows that none of them reaches the output.
NAMES = ("jane_doe", "john_smith", "maria_garcia", "wei_zhang", "olga_petrova")
SOURCES = ("obama.jpg", "biden.jpg", "two_people.jpg", "obama2.jpg", "astronaut.png")


def _load(name: str, side: int) -> np.ndarray:
    img = Image.open(demo_data.path(name)).convert("RGB")
    scale = side / max(img.size)
    return np.asarray(img.resize((round(img.width * scale), round(img.height * scale))))


def jpeg_with_gps(pixels: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes carrying EXIF with a camera model, a description and GPS coordinates."""
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 3000"
    exif[0x010E] = "holiday photo of john_smith"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def sample_images(count: int, seed: int = 0, side: int = 360) -> list[tuple[str, bytes]]:
    """``count`` (file name, bytes): random crops and mirror images of the bundled photos, as
    JPEGs with GPS EXIF (one in seven as PNG), named like people."""
    rng = np.random.default_rng(seed)
    sources = [_load(n, side) for n in SOURCES]
    out = []
    for i in range(count):
        img = sources[i % len(sources)]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        h, w = img.shape[:2]
        dy, dx = rng.integers(0, max(1, h // 10)), rng.integers(0, max(1, w // 10))
        img = np.ascontiguousarray(img[dy : h - dy // 2, dx : w - dx // 2])
        name = f"{NAMES[i % len(NAMES)]}_{i:04d}"
        if i % 7 == 3:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            out.append((f"{name}.png", buf.getvalue()))
        else:
            out.append((f"{name}.jpg", jpeg_with_gps(img)))
    return out


def before_after(originals: list[bytes], anonymized: list[bytes], path: Path) -> None:
    """A PNG with originals on the top row and their anonymized versions below."""
    tiles = []
    for row in (originals, anonymized):
        imgs = [Image.fromarray(decode_image(b).rgb) for b in row]
        imgs = [i.resize((round(i.width * 240 / i.height), 240)) for i in imgs]
        tiles.append(np.hstack([np.asarray(i) for i in imgs]))
    Image.fromarray(np.vstack(tiles)).save(path)


def _pairs(out: Path, secret: bytes, limit: int) -> tuple[list[bytes], list[bytes]]:
    """Up to ``limit`` different-looking samples with faces: original bytes (read from the input
    photos, in listing order, matched by sample id) and anonymized bytes (from the output
    shard)."""
    from faceveil.jobs.shard import list_sources
    from faceveil.jobs.shardio import iter_samples
    from faceveil.manifests.jobsecret import sample_id

    with open(out / "anon" / "data" / "shard-000000.tar", "rb") as f:
        anonymized = {s.sample_id: s for s in iter_samples(f)}
    originals, results = [], []
    for source in list_sources(str(out / "photos")):
        done = anonymized.get(sample_id(secret, source.uri))
        if done is None or b'"faces":[]' in done.members["json"]:
            continue
        originals.append(Path(source.path).read_bytes())
        results.append(next(v for k, v in done.members.items() if k != "json"))
    picks: list[int] = []
    colours = [decode_image(o).rgb.reshape(-1, 3).mean(axis=0) for o in originals]
    for i, colour in enumerate(colours):  # greedy: each pick looks unlike the ones before
        if all(np.abs(colour - colours[j]).max() > 12 for j in picks):
            picks.append(i)
        if len(picks) == limit:
            break
    return [originals[i] for i in picks], [results[i] for i in picks]


def run_demo(args: argparse.Namespace) -> list[str]:
    """Write sample photos under ``args.out``/photos, anonymize them, save a before/after PNG;
    returns the lines to show the user."""
    from faceveil.jobs.keyfile import load_key_file, new_key_file
    from faceveil.jobs.run import run_job
    from faceveil.jobs.run_cli import add_run_command, job_config

    out = Path(args.out).resolve()
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name, data in sample_images(args.count):
        (photos / name).write_bytes(data)
    secret = out / "demo-secret.key"
    if not secret.exists():
        new_key_file(secret)
    parser = argparse.ArgumentParser(prog="faceveil")
    parser.set_defaults(log_format="text")
    add_run_command(parser.add_subparsers(dest="command", required=True))
    run_args = parser.parse_args(
        ["run", str(photos), str(out / "anon"), "--method", args.method,
         "--secret-file", str(secret), "--shard-size", "50", "--resume", *_escrow_args(out)]
    )  # fmt: skip
    summary = run_job(job_config(run_args))
    originals, anonymized = _pairs(out, load_key_file(secret), 4)
    picture = out / "before_after.png"
    before_after(originals, anonymized, picture)
    keys = out / "custodians"
    return [
        summary.line(),
        f"input photos:     {photos}",
        f"anonymized data:  {out / 'anon' / 'data'}",
        f"before/after:     {picture}",
        f"escrow:           any 2 of {keys}/{{alice,bob,carol}}.key restore the originals",
        "                  (faceveil restore ...; see the README section 'Keys and escrow')",
    ]


DEMO_CUSTODIANS = ("alice", "bob", "carol")


def _escrow_args(out: Path) -> list[str]:
    """Three demo custodians (2 of 3 restore), sharing a demo passphrase file (never do that
    for real: each custodian keeps their own key and passphrase on their own machine)."""
    import secrets

    from faceveil.manifests.custodian import keygen
    from faceveil.manifests.files import write_private_file

    folder = out / "custodians"
    passphrase = folder / "demo-passphrase.txt"
    if not passphrase.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_private_file(passphrase, (secrets.token_urlsafe(18) + "\n").encode())
    for name in DEMO_CUSTODIANS:
        if not (folder / f"{name}.pub").exists():
            keygen(name, folder, passphrase.read_text().strip())
    pubs = [str(folder / f"{name}.pub") for name in DEMO_CUSTODIANS]
    return ["--custodians", *pubs, "--threshold", "2"]
