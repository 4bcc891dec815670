"""Where refine's memory is at stage boundaries: tracemalloc snapshots (numpy reports its
buffers) of the largest live blocks with their allocation sites, traced peak per interval,
and RSS. usage (PYTHONPATH at a checkout): memprof.py ROWS NAME; writes /tmp/mem29/NAME.json.
The run: 5 folds x 2 rounds, --max-epochs 1, one worker, --memory at 90% of the in-memory
estimate (streaming), as benchmarks/scale.py runs it. Snapshots after train, calibrate, decide
and refined_table, and whenever traced memory passes its last peak by 5% (the "peak" entry)."""
import json, sys, threading, time, tracemalloc
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

def rss():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            d[line.split(":")[0]] = int(line.split()[1]) // 1024
    return d

LOG = []
def big(snapshot, limit=2**20, top=25):
    stats = [t for t in snapshot.traces if t.size >= limit]
    stats.sort(key=lambda t: -t.size)
    out = []
    for t in stats[:top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in t.traceback if "tracemalloc" not in f.filename and "memprof" not in f.filename]
        out.append((round(t.size / 2**20, 1), " < ".join(frames[::-1][:5])))
    total_big = sum(t.size for t in stats)
    return out, round(total_big / 2**20, 1)

def mark(name, snap=True):
    cur, peak = tracemalloc.get_traced_memory()
    entry = {"at": name, "t": round(time.perf_counter() - T0, 1), "traced_mb": round(cur / 2**20, 1),
             "peak_since_last_mb": round(peak / 2**20, 1), **rss()}
    if snap:
        entry["big"], entry["big_total_mb"] = big(tracemalloc.take_snapshot())
    LOG.append(entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "big"}), flush=True)
    tracemalloc.reset_peak()

def wrap(obj, attr, label=None):
    f = getattr(obj, attr)
    label = label or f"{getattr(obj, '__name__', obj)}.{attr}"
    def w(*a, **k):
        r = f(*a, **k)
        mark("after " + label, snap=attr in ("train", "calibrate", "decide", "refined_table"))
        return r
    setattr(obj, attr, w)

PEAK = {"mb": 0.0, "entry": None}
def sampler(stop):
    while not stop.wait(0.05):
        cur, _ = tracemalloc.get_traced_memory()
        if cur > PEAK["mb"] * 1.05 * 2**20:
            s = tracemalloc.take_snapshot()
            cur2 = tracemalloc.get_traced_memory()[0]
            PEAK["mb"] = cur2 / 2**20
            PEAK["entry"] = {"t": round(time.perf_counter() - T0, 1), "traced_mb": round(cur2 / 2**20, 1),
                             **rss(), "big": big(s)}

if __name__ == "__main__":
    import numpy as np
    from scale import write_data
    import refine
    from refine import pipeline, rounds as R
    from refine.learn import budget
    rows, prefix = int(sys.argv[1]), sys.argv[2]
    data = Path(f"/tmp/mem29/emb_{rows}.parquet")
    write_data(data, rows, 64, 10)
    memory = int(0.9 * budget.plan(rows, 64, 10, 5, memory=1 << 50).in_memory_bytes)
    tracemalloc.start(8)
    T0 = time.perf_counter()
    for attr in ("train", "calibrate", "detect", "decide", "weigh_votes", "record"):
        wrap(R.Rounds, attr, "Rounds." + attr)
    for attr in ("_read", "_encode_planned", "_encode_to_disk", "summarise_run", "refined_table", "student_model"):
        wrap(pipeline, attr)
    wrap(pipeline, "write_parquet")
    stop = threading.Event()
    th = threading.Thread(target=sampler, args=(stop,), daemon=True); th.start()
    mark("start")
    refine.run(str(data), out=f"/tmp/mem29/run-{prefix}", overwrite=True, label="label", ignore=("id",),
               folds=5, rounds=2, workers=1, memory=memory, max_epochs=1, report=False)
    mark("end")
    stop.set(); th.join()
    Path(f"/tmp/mem29/{prefix}.json").write_text(json.dumps({"log": LOG, "peak": PEAK["entry"]}, indent=1))
    print("PEAK", json.dumps(PEAK["entry"], indent=1))
