#!/usr/bin/env python3
"""The baseline for scripts/forecast-mape: a seasonal-naive forecast (each held-back hour gets
the value of the same hour on the last day before the cut), on the same hourly means and the
same held-back last 20 %. Prints the median MAPE and WAPE over the corpus's streams.
  scripts/forecast-naive.py [CORPUS]   (default ../shared/data/anomaly-dev)"""
import csv, importlib.util, os, statistics, sys

corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../../shared/data/anomaly-dev")
spec = importlib.util.spec_from_file_location("score", os.path.join(corpus, "score.py"))
score = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score)
mapes, wapes = [], []
data = os.path.join(corpus, "data")
for cat in sorted(os.listdir(data)):
    for name in sorted(os.listdir(os.path.join(data, cat))):
        hours = {}
        with open(os.path.join(data, cat, name)) as f:
            for row in csv.DictReader(f):
                h = int(score.parse_ts(row["timestamp"]).timestamp()) // 3600
                hours.setdefault(h, []).append(float(row["value"]))
        values = sorted((h, sum(v) / len(v)) for h, v in hours.items())
        cut = round(len(values) * 0.8)
        seen = dict(values[:cut])
        last = values[cut - 1][0]
        err = total = 0.0
        pct = []
        for h, v in values[cut:]:
            forecast = seen.get(h - 24 * ((h - last + 23) // 24), values[cut - 1][1])
            err += abs(forecast - v)
            total += abs(v)
            if v != 0:
                pct.append(abs(forecast - v) / abs(v))
        wapes.append(100 * err / total if total else 0.0)
        mapes.append(100 * sum(pct) / len(pct) if pct else 0.0)
print(f"seasonal naive over {len(wapes)} streams: median MAPE {statistics.median(mapes):.1f} %, median WAPE {statistics.median(wapes):.1f} %, WAPE <= 20 % on {sum(w <= 20 for w in wapes)}")
