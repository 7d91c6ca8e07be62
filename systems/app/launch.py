"""The `distill3d` command: a Hydra app that trains, tests (turntable) and exports (DESIGN.md §5).

    distill3d                                   # the offline demo (oracle prior + NeRF)
    distill3d experiment=dreamfusion-sd prompt="a hamburger"
    distill3d resume=outputs/demo/a_snowman@20260101-120000 trainer.max_steps=2000
    distill3d mode=test resume=<run dir>        # re-render the turntable
    distill3d -m prompt="a snowman,a donut"     # Hydra multirun sweep

Bad input (unknown key or experiment, impossible value, missing file or weights) ends with one line on
stderr naming the problem and the fix, exit code 2, and nothing written. A sweep (-m) runs every job: a failed
job is reported (and recorded in its run's summary.json) and the next one starts; the sweep then exits 1
naming the failed jobs. An interrupted job (Ctrl+C, SIGTERM) stops the whole sweep.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from distill3d.errors import ConfigError, InputFileError, UserError
from systems.app.overrides import apply_overrides, precheck

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
log = logging.getLogger("distill3d")


def fail(message: str, code: int = 2) -> None:
    print(f"distill3d: error: {message}", file=sys.stderr)
    sys.exit(code)


def is_user_error(error: BaseException) -> bool:
    """Bad input (reported in one line) vs a bug (traceback): every user error subclasses UserError."""
    return isinstance(error, UserError)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:]
    if not CONFIG_DIR.is_dir():
        fail(
            f"configs not found at {CONFIG_DIR}: install distill3d from its source tree with `pip install -e .`"
        )
    try:
        precheck(CONFIG_DIR, argv)
    except ConfigError as e:
        fail(str(e))
    sys.argv[1:] = argv
    _app()
    if FAILED_JOBS:
        listed = "; ".join(
            f"job {n} ({' '.join(x.lstrip('+') for x in o) or 'defaults'}): {m}" for n, o, m in FAILED_JOBS
        )
        fail(f"{len(FAILED_JOBS)} of {JOBS_RUN[0]} sweep jobs failed: {listed}", code=1)


FAILED_JOBS: list[tuple[int, list[str], str]] = []  # (job number, its overrides, the error) in a sweep
JOBS_RUN = [0]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    JOBS_RUN[0] += 1
    try:
        code = execute(cfg, overrides)
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as e:
        message = one_line(e)
        if not sweep:
            if not is_user_error(e):
                raise
            fail(message)
        if not is_user_error(e):
            log.exception("sweep job %s failed", hydra_cfg.job.num)
        print(f"distill3d: error: sweep job {hydra_cfg.job.num}: {message}", file=sys.stderr)
        FAILED_JOBS.append((hydra_cfg.job.num, overrides, message))
        return
    if code:
        sys.exit(code)  # an interrupt (128 + signal): in a sweep too, the user wants it all to stop


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def resolved_config(cfg: DictConfig, task_overrides: list[str]) -> dict[str, Any]:
    """The run's full config. With resume=, the resumed run's config.yaml plus this command's overrides."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    if not raw.get("resume"):
        return raw
    from systems.app.run_dir import resolve_checkpoint

    run_dir, _ = resolve_checkpoint(raw["resume"], "resume", need_final=raw.get("mode", "train") != "train")
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise InputFileError(f"resume={raw['resume']}: {saved_path} is missing; it is not a distill3d run")
    saved = OmegaConf.load(saved_path)
    keep = ("resume", "mode", "weights", "run_dir", "experiment")
    apply_overrides(saved, [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") not in keep])
    merged = OmegaConf.to_container(saved, resolve=True)
    merged.update(resume=raw["resume"], mode=raw["mode"], weights=None, run_dir=None)
    return merged


def execute(cfg: DictConfig, task_overrides: list[str]) -> int:
    from systems.app.validation import validate_run

    start = time.perf_counter()
    validated = validate_run(resolved_config(cfg, task_overrides))
    from systems.app.runner import Runner  # Lightning, loggers, ...: only once the input is known to be good

    return Runner(validated).run(start)


if __name__ == "__main__":
    main()
