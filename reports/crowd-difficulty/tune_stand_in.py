# Dev tuning of the music-like-crowd stand-in, on the votes alone (reports/crowd-difficulty.md):
#   python reports/crowd-difficulty/tune_stand_in.py SOURCE_PARAMS_JSON CROWD_JSON SEEDS
import json
import sys

import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, "benchmarks")
from crowd import crowd_kit, downstream

from refine.bench.recipes import Recipe, build_dataset
from refine.judge.annotators import majority_vote

params = json.loads(sys.argv[1])
noise = json.loads(sys.argv[2])
for seed in [int(x) for x in sys.argv[3].split(",")]:
    r = Recipe.from_dict(
        dict(
            name="t",
            description="",
            source={"kind": "make_classification", "params": params},
            noise={"model": "crowd", **noise},
            seed=seed,
        )
    )
    b = build_dataset(r)
    tr = b.train
    votes = np.array(tr.column("votes").to_pylist())
    gold = tr.column("label_true").to_numpy()
    feats = [c for c in tr.column_names if c.startswith("f")]
    k = 10
    mv = majority_vote(votes, k, seed)
    ck = crowd_kit(votes)
    g = downstream(
        tr.select(feats), gold, (b.test.select(feats), b.test.column("label").to_numpy()), seed
    )
    per = np.bincount(np.nonzero(votes >= 0)[1], minlength=votes.shape[1])
    acc = json.loads(tr.schema.metadata[b"refine.crowd"])["accuracy"]
    print(
        seed,
        len(gold),
        f"gold-LR {g:.3f} mv {(mv == gold).mean():.3f} ds {(ck['ck-ds'] == gold).mean():.3f} glad {(ck['ck-glad'] == gold).mean():.3f} vote-acc {(votes[votes >= 0] == np.repeat(gold, (votes >= 0).sum(1))).mean():.3f} max/min load {per.max()}/{per.min()}",
        flush=True,
    )
