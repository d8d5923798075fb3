"""How a Prefect stage task runs its stage: in this process, or data-parallel under torchrun.

nproc == 1: the stage runs in the task's own process, with the StageContext built here.
nproc > 1:  `python -m torch.distributed.run --standalone --nproc_per_node N -m pipeline.stages.run_one ...`
            as a subprocess; each rank builds its own StageContext (checkpointer included) and the
            task then reads the folder rank 0 wrote. The subprocess is a fresh interpreter (exec,
            not fork), so no CUDA state is inherited from the flow's process.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.artifacts.stage_folder import read_metrics
from pipeline.config import RunConfig
from pipeline.errors import UlmfitError
from pipeline.stages.context import StageResult

ERROR_PREFIX = "ulmfit: error: "


def launch(stage: str, cfg: RunConfig, upstream: str | None, out_dir: str, cache_key: str) -> StageResult:
    """Run one stage into `out_dir`, resuming from its epoch checkpoints if a previous try left some;
    its result is what the stage returned (in process) or what rank 0 wrote (under torchrun)."""
    if cfg.nproc == 1:
        from pipeline.stages.context import make_context
        from pipeline.stages.registry import run_stage

        return run_stage(make_context(stage, cfg, out_dir, upstream, cache_key, resumable=True))
    with tempfile.TemporaryDirectory(prefix="ulmfit-launch-") as tmp:
        cfg_path = Path(tmp) / "config.json"  # the process boundary: the workers validate it again
        cfg_path.write_text(cfg.model_dump_json())
        _torchrun(torchrun_command(stage, cfg.nproc, cfg_path, upstream, out_dir, cache_key))
    return StageResult(stage, out_dir, read_metrics(Path(out_dir)))


def torchrun_command(stage: str, nproc: int, cfg_path: Path, upstream: str | None, out_dir: str,
                     cache_key: str) -> list[str]:
    # torch.distributed.run is what the `torchrun` script runs; via sys.executable it is this venv's.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pipeline.stages.run_one", stage, "--config", str(cfg_path), "--out", out_dir, "--cache-key", cache_key]
    return cmd + (["--upstream", upstream] if upstream else [])


def _torchrun(cmd: list[str]) -> None:
    """Run torchrun, echo its output line by line (Prefect logs prints) and raise on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    user_error = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        try:
            for line in proc.stdout:
                print(line.rstrip())
                tail.append(line)
                if ERROR_PREFIX in line and user_error is None:
                    user_error = line.split(ERROR_PREFIX, 1)[1].strip()
        except BaseException:  # Ctrl-C, SIGTERM: torchrun stops its workers on SIGTERM; none may outlive us
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode == 0:
        return
    if user_error:  # a rank rejected the input: same one-line error as in-process
        raise UlmfitError(user_error)
    raise RuntimeError(f"torchrun exited with status {proc.returncode}:\n{''.join(tail)}")
