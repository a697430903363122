"""Reading an LFW-layout folder (DIR/<Name>/<Name>_NNNN.jpg) and its View-2 pairs file."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edge.errors import InputError

#: LFW image names: <Name>_<NNNN>.jpg
IMAGE_NAME = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.(?:jpe?g|png)$", re.IGNORECASE)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Dataset and pairs file
# ---------------------------------------------------------------------------------------------

def scan_lfw(root: str | os.PathLike, limit: int = 0) -> dict[str, list[Path]]:
    """Identities of an LFW-layout folder ``root/<Name>/<Name>_NNNN.jpg``: sorted names ->
    sorted image paths. ``limit`` > 0 keeps only the first ``limit`` identities."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: images folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: is not a folder (expected an LFW-layout folder DIR/<Name>/<Name>_NNNN.jpg)")
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    identities: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(f for f in d.iterdir()
                        if (m := IMAGE_NAME.match(f.name)) and m.group("name") == d.name and f.is_file())
        if images:
            identities[d.name] = images
    if not identities:
        raise InputError(f"{root}: no identity folders with images named <Name>/<Name>_NNNN.jpg")
    if limit:
        identities = dict(list(identities.items())[:limit])
    return identities


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: bool
    fold: int   # 0-based
    line: int   # 1-based line number in the pairs file


@dataclass
class PairsFile:
    folds: int
    per_class: int
    pairs: list[Pair]
    dropped: int = 0  # pairs left out because --limit excluded one of their identities


def _positive_int(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def parse_pairs(path: str | os.PathLike, images_dir: str | os.PathLike,
                keep: set[str] | None = None) -> PairsFile:
    """Read and check an LFW View-2 pairs file: header ``<folds> <pairs-per-class>``, then per
    fold ``pairs-per-class`` same-person lines ``name i j`` followed by as many
    different-person lines ``name1 i name2 j``. Every image must exist as
    ``images_dir/name/name_{i:04d}.jpg``. Raises InputError naming the file and line.

    ``keep``: when given, pairs naming an identity outside it are dropped (counted)."""
    path, images_dir = Path(path), Path(images_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: pairs file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a pairs file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read pairs file: {exc}") from None
    lines = [(n, ln.split()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise InputError(f"{path}: pairs file is empty")
    n0, header = lines[0]
    if len(header) != 2 or _positive_int(header[0]) is None or _positive_int(header[1]) is None:
        raise InputError(f"{path}:{n0}: header must be '<folds> <pairs-per-class>' (two positive "
                         f"integers, e.g. '10 300'), got {' '.join(header)!r}")
    folds, per_class = int(header[0]), int(header[1])
    if folds < 2:
        raise InputError(f"{path}:{n0}: the header announces {folds} fold; cross-validated thresholds "
                         "need at least 2 folds")
    body = lines[1:]
    expected = folds * 2 * per_class
    if len(body) < expected:
        raise InputError(f"{path}: header announces {folds} folds x 2 x {per_class} = {expected} pair "
                         f"lines, but the file has only {len(body)}")
    if len(body) > expected:
        raise InputError(f"{path}:{body[expected][0]}: unexpected line after the {expected} pair lines "
                         f"announced by the header ({folds} folds x 2 x {per_class})")
    pairs: list[Pair] = []
    missing: list[tuple[int, Path]] = []
    dropped = 0
    for k, (lineno, f) in enumerate(body):
        fold, within = divmod(k, 2 * per_class)
        same = within < per_class
        where = f"{path}:{lineno}"
        if same:
            if len(f) != 3 or _positive_int(f[1]) is None or _positive_int(f[2]) is None:
                raise InputError(f"{where}: expected a same-person line 'name i j' (fold {fold + 1}, "
                                 f"pair {within + 1} of {per_class}), got {' '.join(f)!r}")
            names, idx = (f[0], f[0]), (int(f[1]), int(f[2]))
        else:
            if len(f) != 4 or _positive_int(f[1]) is None or _positive_int(f[3]) is None:
                raise InputError(f"{where}: expected a different-person line 'name1 i name2 j' (fold "
                                 f"{fold + 1}, pair {within - per_class + 1} of {per_class}), got {' '.join(f)!r}")
            names, idx = (f[0], f[2]), (int(f[1]), int(f[3]))
        paths = [images_dir / n / f"{n}_{i:04d}.jpg" for n, i in zip(names, idx)]
        for p in paths:
            if not p.is_file():
                missing.append((lineno, p))
        if keep is not None and not (names[0] in keep and names[1] in keep):
            dropped += 1
            continue
        pairs.append(Pair(paths[0], paths[1], same, fold, lineno))
    if missing:
        lineno, p = missing[0]
        more = f" (and {len(missing) - 1} more missing images)" if len(missing) > 1 else ""
        raise InputError(f"{path}:{lineno}: image {p} not found{more}; is --images the folder the pairs file belongs to?")
    return PairsFile(folds, per_class, pairs, dropped)


def by_image_count(identities: dict[str, list[Path]]) -> tuple[list[list[Path]], list[list[Path]]]:
    """(identities with two or more images, identities with one), each a list of image lists in
    name order: who can be listed and probed, and who can only be a stranger."""
    multi = [imgs for imgs in identities.values() if len(imgs) >= 2]
    single = [imgs for imgs in identities.values() if len(imgs) == 1]
    return multi, single


#: identities of lfw-dev that are one person under two names (models/lfw_dev_errata.txt)
ERRATA_FILE = "lfw_dev_errata.txt"


def load_aliases(models_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Second name -> first name for every pair of LFW identities that are one person
    (:data:`ERRATA_FILE` in the models folder: ``name<TAB>name<TAB>why`` lines, ``#`` comments).
    Empty when the file is absent."""
    from edge.recognition.runtime import find_models_dir
    path = Path(find_models_dir(str(models_dir) if models_dir else None)) / ERRATA_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    aliases = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise InputError(f"{path}:{n}: expected name<TAB>name<TAB>why")
        aliases[parts[1].strip()] = parts[0].strip()
    return aliases
