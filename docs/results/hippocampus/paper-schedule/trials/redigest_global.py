"""Let a trial reuse the grid's fold-0 global stage when its overrides change only model
settings the global stage never builds (the local head), by recording the trial config's
digest in the copied stage.json (the grid's digest kept as "reused_from_digest").

    (cd CODE && python redigest_global.py STAGE_JSON CONFIG [--set KEY=VALUE ...])

Run from the frozen code tree (it imports that code's digest). Refuses when the grid's
config does not reproduce the recorded digest, or when any other setting differs.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
try:  # the frozen tree's cli.py (before 0b815bb) or tfsemiseg/cli.py (from 0b815bb on)
    from cli import load_with_overrides  # noqa: E402
except ImportError:
    from tfsemiseg.cli import load_with_overrides  # noqa: E402
from tfsemiseg.training.methods import StagePlan, _stage_digest  # noqa: E402

UNUSED_BY_GLOBAL = ("model.local_head_dims", "data.cache_dir", "train.local_", "train.finetune_")

stage_json, config, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
sets = tuple(a for a in args if a != "--set")
info = json.loads(stage_json.read_text())
plan = StagePlan("global")
grid = _stage_digest(load_with_overrides(config, ()), plan)
if grid not in (info["config_digest"], info.get("reused_from_digest")):
    sys.exit(f"{stage_json}: recorded digest {info['config_digest']} is not the grid config's {grid}")
trial = _stage_digest(load_with_overrides(config, sets), plan)
if trial != info["config_digest"]:
    touched = sorted({s.split("=", 1)[0] for s in sets})
    other = [k for k in touched if not k.startswith(UNUSED_BY_GLOBAL)]
    if other:
        sys.exit(f"overrides {other} change the global stage; it cannot be reused")
    info.setdefault("reused_from_digest", grid)
    info["config_digest"] = trial
    tmp = stage_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(stage_json)
    print(f"{stage_json}: the grid's global stage reused, digest {grid} -> {trial} (overrides {touched})")
