"""Study (issue 8): jittered enrolment templates, measured and not adopted.

Enrolment happens at headquarters, so it may cost anything: each listed person's one photo is
embedded under 45 small geometric jitters of its alignment (rotation -5/0/+5 degrees, scale
0.95/1/1.05, shifts of 3 px in four directions) and the descriptors fused (the idea behind
dlib's num_jitters). The open-set K = 1 protocol of ``edge-lfr eval lfw`` is then scored, base
and improved (cross-fitted), with and without the jittered gallery, and with subsets of the jitters.

    PYTHONPATH=. python scripts/study_enrolment_jitter.py [EMBEDDINGS_CACHE]

EMBEDDINGS_CACHE: an ``edge-lfr eval lfw --embeddings-cache`` file of the default configuration
(default /tmp/lfw-dev-float-emb.npz). Run from the repository root with ../shared beside it.
Result (docs/accuracy.md): FNIR @ FPIR 0.01 unchanged (0.221 -> 0.219-0.227).
"""
import math
import sys
import time
from pathlib import Path
import cv2
import numpy as np
from edge.tools.evaluation import command as E
from edge.recognition.api import Recognizer
from edge.config import load_config
from edge.recognition.images import load_image
from edge.recognition.fusion import fuse_embeddings

lfw = Path('../shared/faces/lfw-dev')
ids = E.scan_lfw(lfw)
pairs = E.parse_pairs(lfw / 'pairs.txt', lfw)
cfg = load_config(None)
rec = Recognizer(cfg)
paths = [p for ps in ids.values() for p in ps]
seen=set(paths)
for pr in pairs.pairs:
    for p in (pr.a, pr.b):
        if p not in seen: seen.add(p); paths.append(p)
cache = sys.argv[1] if len(sys.argv) > 1 else '/tmp/lfw-dev-float-emb.npz'
table = E.load_table(cache, paths, E._table_meta(rec, cfg))
if table is None:
    sys.exit(f"{cache}: not an embeddings cache of these images and this configuration (run edge-lfr eval lfw --embeddings-cache)")
fold_of = E.identity_folds(ids, pairs)
names = E.sample_watchlist(ids, 'all', 0)
models, why = E.fit_crossfit_models(table, ids, fold_of)
imp = E.EvalScorer('improved', models)

def jit_variants(spec):
    out=[]
    for th in spec['rot']:
        for s in spec['scale']:
            for dx,dy in spec['shift']:
                out.append((th,s,dx,dy))
    return out

def chip_jitter(img, pts, th, s, dx, dy):
    """The aligned chip with an extra similarity (rotation th degrees, scale s, shift dx, dy px) about its centre."""
    m = rec.aligner.transform(pts)  # 2x3 frame->chip
    c = rec.aligner.size/2
    a = math.radians(th)
    R = np.array([[s*math.cos(a), -s*math.sin(a), 0],[s*math.sin(a), s*math.cos(a), 0],[0,0,1]])
    T1 = np.array([[1,0,c+dx],[0,1,c+dy],[0,0,1]]); T0=np.array([[1,0,-c],[0,1,-c],[0,0,1]])
    M3 = np.vstack([m,[0,0,1]])
    J = (T1@R@T0@M3)[:2]
    return cv2.warpAffine(img, J, (rec.aligner.size, rec.aligner.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

# gallery rows as identification() picks them
ok = table.ok
gal = []
for n in names:
    rows=[table.index[p] for p in ids[n]]
    us=[r for r in rows if ok[r]]
    if us: gal.append(us[0])
spec = {'rot':[-5,0,5], 'scale':[0.95,1.0,1.05], 'shift':[(0,0),(-3,0),(3,0),(0,-3),(0,3)]}
var = jit_variants(spec)
print(len(gal), 'gallery rows', len(var), 'variants', flush=True)
t0=time.time()
J = {}
for i,r in enumerate(gal):
    img = load_image(table.paths[r])
    faces = rec.faces(img, embed=False)
    f = faces[E.nearest_centre([x.detection.box for x in faces], img.shape[1], img.shape[0])]
    pts = rec.alignment_points(img, f.detection)
    chips = np.stack([chip_jitter(img, pts, *v) for v in var])
    J[r] = rec.embedder.embed(chips)
    if i%100==0: print(i, time.time()-t0, flush=True)
def run(sel):
    t2 = E.EmbeddingTable(table.paths, table.embeddings.copy(), table.reasons, table.seconds, weights=table.weights)
    for r in gal:
        t2.embeddings[r] = fuse_embeddings(J[r][sel])
    b = E.identification(t2, ids, names, lfw)
    i = E.identification(t2, ids, names, lfw, scorer=imp, fold_of=fold_of)
    return b, i
b0 = E.identification(table, ids, names, lfw); i0 = E.identification(table, ids, names, lfw, scorer=imp, fold_of=fold_of)
def show(tag,b,i):
    print(tag, 'base', {k: round(v,4) for k,v in b['fnir_at_fpir'].items()}, 'improved', {k: round(v,4) for k,v in i['fnir_at_fpir'].items()}, 'rank1', round(i['rank1'],4), flush=True)
show('no jitter', b0, i0)
allsel = np.arange(len(var))
show('all jitter', *run(allsel))
rot0 = np.array([k for k,v in enumerate(var) if v[0]==0])
show('no rot', *run(rot0))
sc1 = np.array([k for k,v in enumerate(var) if v[1]==1.0])
show('no scale', *run(sc1))
sh0 = np.array([k for k,v in enumerate(var) if v[2]==0 and v[3]==0])
show('no shift', *run(sh0))
