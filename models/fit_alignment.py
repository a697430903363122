"""Fit and choose the alignment points and template (dev-only: needs dlib-bin).

The embedder was trained on dlib's 5-point chips (``get_face_chip(size=150, padding=0.25)``).
For real LFW faces this script finds where each candidate landmark point (BlazeFace's six
keypoints; the face-mesh model's eye corners, nose base and mouth corners) lands inside
dlib's chip, takes the per-point median as the template, then measures on held-out
identities how close the descriptor of our chip is to the descriptor of dlib's chip for
several point sets, and keeps the set with the best figures. The result goes into the
``alignment`` section of ``models/manifest.json``.

    python models/fit_alignment.py --lfw ../shared/faces/lfw-dev [--fit 1500 --held-out 400]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.recognition.align import Aligner  # noqa: E402
from edge.recognition.detect import FaceDetector, iou_matrix  # noqa: E402
from edge.recognition.images import load_image  # noqa: E402
from edge.tools.evaluation.lfw import scan_lfw  # noqa: E402

# candidate point sets: (source, indices); detector = BlazeFace keypoints, mesh = face-mesh points
SUBSETS = {
    "detector eyes": ("detector", [0, 1]),
    "detector eyes+nose": ("detector", [0, 1, 2]),
    "detector eyes+nose+mouth": ("detector", [0, 1, 2, 3]),
    "detector all6": ("detector", [0, 1, 2, 3, 4, 5]),
    "mesh eye corners+nose base": ("mesh", [33, 133, 362, 263, 2]),
    "mesh eye corners+nose base+mouth corners": ("mesh", [33, 133, 362, 263, 2, 61, 291]),
}
MESH_ALL = sorted({i for src, idx in SUBSETS.values() if src == "mesh" for i in idx})


def dlib_parts():
    import dlib
    import face_recognition_models as frm
    return (dlib, dlib.get_frontal_face_detector(),
            dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def chip_to_image(details) -> np.ndarray:
    """3x3 matrix mapping dlib chip pixels to image pixels (dlib's rotated-rect convention)."""
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = np.cos(details.angle), np.sin(details.angle)
    def rot(x, y):
        dx, dy = x - cx, y - cy
        return (cx + c * dx - s * dy, cy + s * dx + c * dy)
    src = np.float64([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]])
    dst = np.float64([rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.right(), r.bottom())])
    a = np.hstack([src, np.ones((3, 1))])
    m = np.linalg.solve(a, dst).T
    return np.vstack([m, [0, 0, 1]])


def sample_images(lfw: Path, count: int, seed: int, exclude: set[str]) -> list[Path]:
    identities = scan_lfw(lfw)  # the evaluation's reader: same folder rules everywhere
    people = [name for name in identities if name not in exclude]
    random.Random(seed).shuffle(people)
    out = []
    for name in people:
        out.append(identities[name][0])
        if len(out) == count:
            break
    return out


def observe(paths, detector, refiner, dlib_bits, progress="fit"):
    """For each image: ({source: points in frame px}, {source: points in dlib-chip px}, dlib chip,
    detection, image), with mesh points indexed as MESH_ALL."""
    dlib, hog, sp, _ = dlib_bits
    rows = []
    t0 = time.time()
    for i, path in enumerate(paths):
        if i % 100 == 0:
            print(f"  {progress}: {i}/{len(paths)} images ({time.time() - t0:.0f}s)", file=sys.stderr)
        img = load_image(path)
        dets = hog(img, 1)
        if len(dets) == 0:
            continue
        rect = max(dets, key=lambda r: r.area())
        shape = sp(img, rect)
        details = dlib.get_face_chip_details(shape, size=150, padding=0.25)
        faces = detector.detect(img)
        if not faces:
            continue
        box = np.array([[rect.left(), rect.top(), rect.right(), rect.bottom()]], float)
        ious = iou_matrix(box, np.array([f.box for f in faces]))[0]
        if ious.max() < 0.3:
            continue
        face = faces[int(ious.argmax())]
        to_chip = np.linalg.inv(chip_to_image(details))
        mesh_pts = mesh_points(refiner, img, face)
        frame_pts = {"detector": face.keypoints.astype(np.float64), "mesh": mesh_pts}
        chip_pts = {k: np.hstack([v, np.ones((len(v), 1))]) @ to_chip[:2].T for k, v in frame_pts.items()}
        rows.append((frame_pts, chip_pts, np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25)),
                     face, img))
    return rows


def mesh_points(refiner, img, face) -> np.ndarray:
    """Face-mesh points MESH_ALL of one detection, in frame pixels."""
    pts, _ = refiner.points(img, face)
    return pts.astype(np.float64)


def select(rows, source, idx):
    """Per-row points of one candidate set: (frame points list, chip points array)."""
    col = idx if source == "detector" else [MESH_ALL.index(i) for i in idx]
    return [r[0][source][col] for r in rows], np.stack([r[1][source][col] for r in rows])


def fit(lfw: Path, n_fit: int, n_held: int, seed: int = 20261122, models_dir: Path | None = None):
    from edge.recognition.landmarks import LandmarkRefiner
    from edge.recognition.runtime import open_model
    dlib_bits = dlib_parts()
    facerec = dlib_bits[3]
    detector = FaceDetector(open_model("blazeface_full_range", models_dir, threads=2), score_threshold=0.5)
    refiner = LandmarkRefiner(open_model("face_landmark", models_dir, threads=2), MESH_ALL)
    fit_paths = sample_images(lfw, n_fit, seed, set())
    fit_people = {p.parent.name for p in fit_paths}
    held_paths = sample_images(lfw, n_held, seed + 1, fit_people)
    rows = observe(fit_paths, detector, refiner, dlib_bits)
    held = observe(held_paths, detector, refiner, dlib_bits, "held-out")
    ref = [np.array(facerec.compute_face_descriptor(r[2])) for r in held]
    results, templates = {}, {}
    for name, (source, idx) in SUBSETS.items():
        _, chip_pts = select(rows, source, idx)
        template = np.median(chip_pts, axis=0)
        templates[name] = template
        scatter = np.median(np.linalg.norm(chip_pts - template, axis=2), axis=0)
        aligner = Aligner(template, idx, source)
        held_pts, _ = select(held, source, idx)
        cos = []
        for pts, (_f, _c, _chip, face, img), r in zip(held_pts, held, ref):
            d = np.array(facerec.compute_face_descriptor(aligner.chip(img, face, pts)))
            cos.append(float(d @ r / np.linalg.norm(d) / np.linalg.norm(r)))
        cos = np.array(cos)
        results[name] = {"source": source, "points": idx,
                         "median_scatter_chip_px": [round(float(v), 2) for v in scatter],
                         "cosine_to_dlib_chip_median": float(np.median(cos)),
                         "cosine_to_dlib_chip_p05": float(np.percentile(cos, 5)),
                         "cosine_to_dlib_chip_min": float(cos.min())}
        print(f"  {name:42s} descriptor cosine to dlib's own chip: median {np.median(cos):.4f} "
              f"p05 {np.percentile(cos, 5):.4f} min {cos.min():.4f}", file=sys.stderr)
    best = max(results, key=lambda k: (results[k]["cosine_to_dlib_chip_p05"], results[k]["cosine_to_dlib_chip_median"]))
    source, idx = SUBSETS[best]
    return {
        "method": "least-squares similarity transform from landmark points to a template fitted as the "
                  "per-point median position inside dlib 5-point chips (size 150, padding 0.25)",
        "chip_size": 150,
        "source": source,
        "points": idx,
        "landmark_model": "face_landmark" if source == "mesh" else None,
        "template": [[round(float(v), 3) for v in row] for row in templates[best]],
        "chosen": best,
        "selection": "highest 5th-percentile cosine to dlib's own chip descriptor on held-out identities",
        "fit_faces": len(rows),
        "held_out_faces": len(held),
        "variants": results,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "faces" / "lfw-dev")
    ap.add_argument("--fit", type=int, default=1500)
    ap.add_argument("--held-out", type=int, default=400)
    ap.add_argument("--manifest", type=Path, default=ROOT / "models" / "manifest.json")
    args = ap.parse_args(argv)
    section = fit(args.lfw, args.fit, args.held_out)
    manifest = json.loads(args.manifest.read_text())
    manifest["alignment"] = section
    args.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps(section, indent=1))


if __name__ == "__main__":
    main()
