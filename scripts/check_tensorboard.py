#!/usr/bin/env python3
"""Reads a run's RUN_DIR/tb/ with TensorBoard's own EventAccumulator and checks that every scalar
equals the run's metrics.jsonl (as float32, after TensorBoard's purge on a resumed run), then
prints the hparams plugin records. Run in a venv with `pip install tensorboard`:
check_tensorboard.py RUN_DIR [RUN_DIR ...]; exits 1 on a mismatch."""
import json, struct, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

bad = 0
for run in sys.argv[1:]:
    acc = EventAccumulator(run + "/tb", size_guidance={"scalars": 0})
    acc.Reload()
    rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
    tags = acc.Tags()["scalars"]
    for tag in tags:
        split, key = tag.split("/", 1)
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(r["step"], struct.unpack("f", struct.pack("f", r[key]))[0]) for r in rows if r["split"] == split and key in r]
        if got != want:
            bad += 1
            print(run, "MISMATCH", tag, got[:5], want[:5])
    print(run, len(tags), "scalar tags,", sum(len(acc.Scalars(t)) for t in tags), "values")
    for tag, content in acc.PluginTagToContent("hparams").items():
        d = plugin_data_pb2.HParamsPluginData.FromString(content)
        print(" ", tag, d.WhichOneof("data"), len(d.session_start_info.hparams) or d.session_end_info.status)
print("all scalars equal metrics.jsonl" if bad == 0 else f"{bad} tags differ")
sys.exit(1 if bad else 0)
