# Dev: held-out scores and gold accuracy of each candidate, given a prior from a quick refine run on the majority.
# Needs an experiment applied (git apply reports/crowd-difficulty/{glad,confusions}-experiment.diff).
import sys

import pyarrow as pa

sys.path.insert(0, "benchmarks")
from crowd import recipe_crowd

import refine
from refine.judge.annotators import choose_prior, fit_annotators, majority_vote, tempered

name, seed = sys.argv[1], int(sys.argv[2])
s = recipe_crowd(name, seed)
v, g, k = s["votes"], s["gold"], s["k"]
mv = majority_vote(v, k, seed)
res = refine.run(
    s["table"].append_column("label_mv", pa.array(mv)), label="label_mv", seed=seed, report=False
)
prior = res.proba
c = choose_prior(v, prior, seed)
for name_, sc in c.scores.items():
    if name_ == "majority":
        acc = (mv == g).mean()
    else:
        t = float(name_.split()[-1])
        d = name_.startswith("difficulty")
        acc = (fit_annotators(v, tempered(prior, t), difficulty=d).posterior.argmax(1) == g).mean()
    print(f"{name_:16s} {sc:.4f} acc {acc:.3f}")
for S in (2.0, 5.0, 20.0):
    for t in (0.0, 0.5, 1.0):
        acc = (fit_annotators(v, tempered(prior, t), confusions=S).posterior.argmax(1) == g).mean()
        print(f"confusions S={S} t={t} acc {acc:.3f}")
