"""`python -m train --config configs/cf-tiny.yaml`: pre-train, fine-tune, export a model directory."""

from __future__ import annotations

import logging
import sys
import warnings

from codefusion.errors import UserError
from codefusion.options import Parser

BASELINE = "t5-baseline"  # the architecture --baseline selects (codefusion/auto.py)
MASKED = "masked"  # and --masked


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was when ``main``
    first ran (a caller that captures stderr, such as a test, may have closed that one)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="python -m train",
        description="Train CodeFusion (or, with --baseline, the autoregressive baseline; with "
        "--masked, the masked diffusion model): stage 1 "
        "pre-training on code snippets (unconditional + code CPD), then stage 2 fine-tuning on "
        "(prompt, code) pairs starting from stage 1. Each stage exports a model directory; "
        "<out_dir>/<name>/model is the final one. A killed run resumes where it stopped. "
        "Example: python -m train --config configs/cf-tiny.yaml --set finetune.max_steps=300",
    )
    p.add_argument("--config", required=True, help="YAML run config (see configs/)")
    p.add_argument(
        "--stage",
        choices=["all", "pretrain", "finetune"],
        default="all",
        help="which stage(s) to run",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set finetune.max_steps=50 (repeatable)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="train the autoregressive baseline of the config instead (model.architecture="
        f"{BASELINE}, same sizes and protocol); the run is named <name>-ar unless --set name=...",
    )
    p.add_argument(
        "--masked",
        action="store_true",
        help=f"train the masked diffusion model of the config instead (model.architecture="
        f"{MASKED}, CodeFusion's sizes, same protocol); the run is named <name>-masked",
    )
    p.add_argument("--data", help="benchmark data folder (default: $CODEFUSION_DATA)")
    p.add_argument(
        "--fresh", action="store_true", help="ignore existing checkpoints instead of resuming"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the final model of an earlier run of the same name (refused otherwise)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="with --stage finetune: fine-tune a fresh model when there is no pre-training export",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = p.parse_args(argv)
    from train.dist import RankZeroFilter, is_rank_zero

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RankZeroFilter())  # under DDP every rank runs this: say things once
    for name in ("codefusion", "train"):  # Lightning logs through its own handler
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):  # main runs again
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # Lightning's start-up chatter (devices found, a logger advert, "max_steps reached") says
    # nothing a run's own log does not; its warnings still show.
    import lightning.pytorch  # noqa: F401  (importing it resets the level: import first)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs new torch, harmless
    warnings.filterwarnings("ignore", message=".*litlogger.*")

    from train.config import RunConfigError, load_run_config
    from train.module import NonFiniteLossError
    from train.run import STAGES, run

    try:
        overrides = list(args.overrides)
        if args.baseline and args.masked:
            raise RunConfigError("--baseline and --masked name two architectures: pick one")
        arch, suffix = (BASELINE, "-ar") if args.baseline else (MASKED, "-masked")
        twin = arch if args.baseline or args.masked else None
        cfg = load_run_config(args.config, overrides, twin=twin)
        named = any(o.split("=")[0].strip() == "name" for o in args.overrides)
        if (args.baseline or args.masked) and not named:
            cfg.name += suffix
        if args.data:
            cfg.data_dir = args.data
        stages = STAGES if args.stage == "all" else (args.stage,)
        final = run(
            cfg, stages, resume=not args.fresh, progress=not args.no_progress,
            overwrite=args.overwrite, from_scratch=args.from_scratch,
        )  # fmt: skip
    except (UserError, NonFiniteLossError) as e:  # NaN/inf loss with on_nan=stop: names the step
        print(f"error: {e}", file=sys.stderr)
        return 2
    if is_rank_zero():
        print(f"model exported to {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
