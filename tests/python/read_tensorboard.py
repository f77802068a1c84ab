"""Reads a run directory's TensorBoard events with TensorBoard's own EventAccumulator and
prints {"files": [...], "scalars": {tag: [[step, value], ...]}} as JSON.

Usage: read_tensorboard.py RUN_DIR
"""
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator

run_dir = sys.argv[1]
acc = event_accumulator.EventAccumulator(
    run_dir, size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=True
)
acc.Reload()
scalars = {
    tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
}
files = sorted(f for f in os.listdir(run_dir) if "tfevents" in f)
print(json.dumps({"files": files, "scalars": scalars}))
