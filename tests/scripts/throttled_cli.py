"""`cli.py` with every training step slowed down, so a test can kill it mid-epoch.

    TFSEMISEG_STEP_DELAY=0.1 python throttled_cli.py run --config ... --data ... --method ...
    TFSEMISEG_EXPORT_DELAY=30 python throttled_cli.py export RUN --to DEST

Identical to `python cli.py ...` except that `Trainer` sleeps TFSEMISEG_STEP_DELAY
seconds (default 0.1) after each training step: a tiny model takes a few milliseconds a
step, too fast to kill reliably between two checkpoints of one epoch. With
TFSEMISEG_EXPORT_DELAY, `export` sleeps that long after writing the SavedModel into its
temporary folder, before the folder is moved into place.
"""

from __future__ import annotations

import os
import sys
import time

from tfsemiseg import cli
from tfsemiseg.training import engine

DELAY = float(os.environ.get("TFSEMISEG_STEP_DELAY", "0.1"))
_make_train_step = engine.Trainer._make_train_step


def _slow_make_train_step(self):
    step = _make_train_step(self)

    def slow_step(iterator):
        out = step(iterator)
        time.sleep(DELAY)
        return out

    return slow_step


engine.Trainer._make_train_step = _slow_make_train_step

EXPORT_DELAY = float(os.environ.get("TFSEMISEG_EXPORT_DELAY", "0"))
if EXPORT_DELAY:
    import keras

    # keras.export.ExportArchive() makes an instance of the backend's class (TFExportArchive)
    _archive_class = type(keras.export.ExportArchive())
    _write_out = _archive_class.write_out

    def _slow_write_out(self, *args, **kwargs):
        out = _write_out(self, *args, **kwargs)
        time.sleep(EXPORT_DELAY)
        return out

    _archive_class.write_out = _slow_write_out

if __name__ == "__main__":
    sys.exit(cli.cli())
