"""Public-domain demo and test images bundled with the package (see ATTRIBUTION.md)."""

from pathlib import Path

ROOT = Path(__file__).parent


def path(name: str) -> Path:
    """The bundled image ``name``; raises FileNotFoundError for anything not bundled."""
    p = ROOT / name
    if not p.is_file():
        raise FileNotFoundError(f"{name} is not a bundled demo image")
    return p


def names() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if p.suffix in (".png", ".jpg"))
