"""Run the two training stages of a config and export a model directory after each.

<out_dir>/<name>/pretrain/{checkpoints/, logs/, model/}
<out_dir>/<name>/finetune/{checkpoints/, logs/, model/}    (starts from pretrain/model)
<out_dir>/<name>/model -> the last stage's export, what `codefusion generate` loads

Under DDP every rank runs all of this; rank zero writes and the others wait (train/dist.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml

from codefusion.auto import generator_class, load_generator
from codefusion.config import ConfigError
from codefusion.generator import TRAINING_FILE, Generator
from codefusion.tokenizer import CodeTokenizer, tokenizer_corpus, train_bpe
from train.config import RunConfig, RunConfigError, StageConfig, architecture
from train.data import CodeFusionDataModule
from train.dist import barrier, is_rank_zero, wait_until
from train.module import TrainingModule
from train.objectives import DIAGNOSTICS, build_objective
from train.progress import StepProgressBar
from train.resume import AtomicCheckpointIO, CheckpointLoadError

log = logging.getLogger(__name__)
STAGES = ("pretrain", "finetune")


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def ensure_tokenizer(cfg: RunConfig) -> CodeTokenizer:
    """Load the configured tokenizer, training and saving it first if the folder is empty.

    On several processes rank zero trains it and the others wait for it to appear: it is
    written to a temporary folder and renamed into place, so it appears whole."""
    path = Path(cfg.tokenizer.path)

    def load() -> CodeTokenizer:
        tok = CodeTokenizer.from_pretrained(path)
        if tok.scheme is not None and tok.scheme != cfg.tokenizer.scheme:
            raise RunConfigError(
                f"{path} holds a {tok.scheme} tokenizer but tokenizer.scheme is "
                f"{cfg.tokenizer.scheme}: set tokenizer.path to another folder or delete it"
            )
        return tok

    if _has_tokenizer(path):
        return load()
    if not is_rank_zero():
        wait_until(lambda: _has_tokenizer(path), f"the tokenizer {path}")
        return load()
    corpus = tokenizer_corpus(cfg.data_dir, cfg.python_corpus, cfg.tokenizer.languages)
    tok = CodeTokenizer(train_bpe(corpus, cfg.tokenizer.vocab_size, scheme=cfg.tokenizer.scheme))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tok.save_pretrained(tmp)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        try:
            os.replace(tmp, path)
        except OSError:
            raise RunConfigError(
                f"{path} holds files but no tokenizer: empty it or set another tokenizer.path"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "trained a %d-token BPE on %s -> %s", len(tok), "+".join(cfg.tokenizer.languages), path
    )
    return tok


def compile_model(model: torch.nn.Module, backend: str = "inductor") -> list[torch.nn.Module]:
    """``torch.compile`` every transformer block of ``model`` in place (regional compilation);
    returns the compiled blocks.

    Blocks, not whole modules: the blocks of a stack share their code, so dynamo compiles each
    kind once and reuses it for every layer (nn modules are inlined, their weights are inputs),
    where compiling E, N and D whole traced every layer. The smoke's compiled two-stage training
    check took 143 s instead of 352 s with inductor on the 2-core CPU, still with no graph
    compiled after the warm-up. The few ops between blocks stay eager. ``nn.Module.compile``
    keeps each module itself: weight names are unchanged, so exports load strictly."""
    from transformers.models.t5.modeling_t5 import T5Block

    from codefusion.model import Block

    # A new stage's modules are new objects: the previous stage's compiled entries would only
    # count toward dynamo's recompile limit and push later ones to eager.
    torch._dynamo.reset()
    blocks = [m for m in model.modules() if isinstance(m, Block | T5Block)]
    for block in blocks:
        block.compile(backend=backend)
    return blocks


def build_generator(cfg: RunConfig, tok: CodeTokenizer) -> Generator:
    """A fresh generator of the run config's model section: its ``architecture``, at the size
    of its ``preset`` (a CodeFusion preset; the baseline's of the same size), with the section's
    other keys as overrides (``encoder_path`` too: a pre-trained E for CodeFusion)."""
    overrides = dict(cfg.model)
    arch = architecture(overrides.pop("architecture", None))
    name = overrides.pop("preset", "paper")
    if cfg.encoder_path is not None:
        overrides["encoder_path"] = cfg.encoder_path
    try:
        return generator_class(arch).from_preset(name, tok, **overrides)
    except ConfigError as e:
        raise RunConfigError(f"model ({arch}): {e}") from None


def _precision(cfg: RunConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def trainer_for(
    cfg: RunConfig,
    st: StageConfig,
    stage_dir: Path,
    progress: bool = True,
    extra_callbacks: list | None = None,
    checkpoints: bool = True,
    max_time: float | None = None,
) -> L.Trainer:
    """The stage's Trainer. ``checkpoints=False``: no checkpoint is ever written (a budgeted
    run keeps nothing but the export: writing weights and AdamW states costs seconds);
    ``max_time``: Lightning stops the fit after that many seconds of training."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    callbacks: list = []
    if checkpoints:
        callbacks.append(
            ModelCheckpoint(
                dirpath=stage_dir / "checkpoints",
                filename="step{step}",
                auto_insert_metric_name=False,
                every_n_train_steps=st.ckpt_every,
                save_last=True,
                save_top_k=1,
            )
        )
    callbacks += [
        LearningRateMonitor(logging_interval="step"),
        *(extra_callbacks or []),  # before the EMA: they see the averaged weights at validation
    ]
    if st.ema_decay:
        from train.ema import EMA

        callbacks.append(EMA(st.ema_decay))
    if progress:
        # Steps of the stage, refreshed (and the loss read from the device) every log_every
        # steps, when the module logs it; Lightning's default (Rich) bar reads its metrics at
        # every step (train/progress.py).
        callbacks.append(StepProgressBar(stage_dir.name, refresh_rate=st.log_every))
    loggers: list = [CSVLogger(stage_dir, name="logs")]
    try:
        import tensorboard  # noqa: F401  (optional dependency)
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(stage_dir, name="tb"))
    except ImportError:
        pass
    return L.Trainer(
        max_steps=st.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        # Our sampler shards the epoch by rank itself (train/resume.py); Lightning's wrapper
        # would reshuffle its order and lose the position in the epoch on resume.
        use_distributed_sampler=False,
        precision=_precision(cfg),
        gradient_clip_val=st.grad_clip,
        val_check_interval=st.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=st.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=st.log_every,
        default_root_dir=stage_dir,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=progress,
        enable_checkpointing=checkpoints,
        max_time=None if max_time is None else {"seconds": max(1.0, max_time)},
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],  # atomic writes, weights_only loads (train/resume.py)
    )


def run_stage(
    cfg: RunConfig,
    stage: str,
    init_from: Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: list | None = None,
    checkpoints: bool = True,
    max_time: float | None = None,
) -> Path:
    """Train one stage; returns the exported model directory. ``callbacks`` join the
    Trainer's (bench/budget.py's planner); ``checkpoints`` and ``max_time``: see
    :func:`trainer_for`."""
    st: StageConfig | None = getattr(cfg, stage)
    if st is None:
        raise RunConfigError(f"the config has no {stage} section")
    stage_dir = cfg.run_dir / stage
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tok = ensure_tokenizer(cfg)
    arch = architecture(cfg.model.get("architecture"))
    if init_from is not None:
        gen = load_generator(init_from)
        if not isinstance(gen, generator_class(arch)):
            raise RunConfigError(f"{init_from} is not a model of architecture {arch}")
        model = gen.model.train()
        if model.config.vocab_size != len(tok):
            raise RunConfigError(
                f"{init_from} was trained with another tokenizer than {cfg.tokenizer.path}"
            )
    else:
        model = build_generator(cfg, tok).model.train()
    if cfg.compile:
        compile_model(model, cfg.compile_backend)
    mc = model.config
    dm = CodeFusionDataModule(
        stage,
        cfg.language,
        tok,
        mc.max_prompt_len,
        mc.code_len,
        st.batch_size,
        uncond_ratio=st.uncond_ratio,
        mask_rate=st.mask_rate,
        prompt_dropout=st.prompt_dropout if stage == "finetune" else 0.0,
        val_fraction=st.val_fraction,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
        python_corpus=cfg.python_corpus,
        num_workers=st.num_workers,
        bucket_prompts=cfg.compile,  # fixed shapes: each compiled once
        distill_from=st.distill_from if stage == "finetune" else None,
    )
    objective = build_objective(arch, model, st)
    module = TrainingModule(
        model, objective, diagnostics=DIAGNOSTICS[arch], **st.pick(TrainingModule.STAGE_KEYS)
    )
    last = stage_dir / "checkpoints" / "last.ckpt"
    # Every rank decides alone and all decide alike: nothing writes a checkpoint of this stage
    # before every rank has joined the fit (rank zero waits for the others in DDP's setup).
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        log.info("resuming %s from %s", stage, last)
    best_dir = stage_dir / "best"
    if ckpt_path is None and best_dir.exists() and is_rank_zero():
        shutil.rmtree(best_dir)  # a fresh stage: a kept model of an earlier run is stale
    check = None
    if stage == "finetune" and st.val_generate > 0:
        dm.setup()
        check = generation_check(cfg, st, dm, tok, generator_class(arch), best_dir)
    extra = list(callbacks or []) + ([check] if check is not None else [])
    trainer = trainer_for(cfg, st, stage_dir, progress, extra, checkpoints, max_time)
    try:
        with warnings.catch_warnings():  # our DataModule restores the position in the epoch
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except CheckpointLoadError as e:
        raise RunConfigError(f"cannot resume: {e}; delete it or pass --fresh") from None
    export = stage_dir / "model"
    if trainer.is_global_zero:
        chosen = module.model.eval()
        sel = check.best() if check is not None and st.export == "best" else None
        if sel is not None:
            log.info(
                "%s exports step %d (held-out val/top5 %.1f)", stage, sel["step"], sel["val/top5"]
            )
            chosen = load_generator(best_dir).model
        generator_class(arch)(chosen, tok).save_pretrained(export)
        # How it was trained, for what generation may ask of it (guidance: prompt_dropout).
        trained = {"run": cfg.name, "stage": stage, "steps": trainer.global_step}
        trained["prompt_dropout"] = st.prompt_dropout if stage == "finetune" else 0.0
        (export / TRAINING_FILE).write_text(json.dumps(trained, indent=2) + "\n")
        if sel is not None:
            (export / "selection.json").write_text(json.dumps(sel) + "\n")
    # Every rank starts the next stage from this export: none reads it before it is complete.
    trainer.strategy.barrier("export")
    return export


def generation_check(
    cfg: RunConfig,
    st: StageConfig,
    dm,
    tok: CodeTokenizer,
    generator: type[Generator],
    best_dir: Path | None = None,
):
    """Held-out generation at each validation (train/validation.py): ``val_generate_draws``
    draws per item, and ``val_generate_steps`` sampling steps for a generator that takes
    steps (the diffusion model; the baseline decodes token by token). With ``export: best``
    the best validation's model is kept in ``best_dir``."""
    from train.validation import GenerationCheck

    options = {"steps": st.val_generate_steps} if generator.takes("steps") else {}
    return GenerationCheck(
        dm.val_examples[: st.val_generate],
        cfg.language,
        tok,
        generator,
        k=min(5, st.val_generate_draws),  # top-k of fewer draws than 5: top-(draws)
        seed=cfg.seed,
        best_dir=best_dir if st.export == "best" else None,
        num_draws=st.val_generate_draws,
        **options,
    )


def check_inputs(cfg: RunConfig, stages: tuple[str, ...], from_scratch: bool) -> None:
    """Everything a run reads, checked before its first step: the data of each stage (a
    malformed benchmark file must not surface after a whole pre-training), the tokenizer folder,
    a local encoder, and for fine-tuning alone the pre-training export it starts from."""
    from codefusion.data import load_benchmark, resolve_data_dir
    from codefusion.languages import language

    run = [s for s in stages if getattr(cfg, s) is not None]
    if not run:
        raise RunConfigError(
            "nothing to run: the config has neither a pretrain nor a finetune section"
        )
    lang = language(cfg.language)
    if "finetune" in run:
        load_benchmark(cfg.language, "train", cfg.data_dir)
    if "pretrain" in run:
        if lang.snippet_file is not None:
            snippets = (
                resolve_data_dir(cfg.data_dir, cfg.language) / "pretraining" / lang.snippet_file
            )
            if not snippets.is_file():
                raise RunConfigError(f"{snippets}: file not found (pre-training snippets)")
        elif cfg.python_corpus is not None and not Path(cfg.python_corpus).is_file():
            raise RunConfigError(f"python_corpus {cfg.python_corpus}: file not found")
    path = Path(cfg.tokenizer.path)
    if path.exists() and not path.is_dir():
        raise RunConfigError(f"tokenizer.path {path} is a file, not a folder")
    if cfg.encoder_path is not None and not Path(cfg.encoder_path).is_dir():
        raise RunConfigError(f"encoder_path {cfg.encoder_path} does not exist")
    pre = cfg.run_dir / "pretrain" / "model"
    if run == ["finetune"] and "pretrain" not in stages and not pre.is_dir() and not from_scratch:
        raise RunConfigError(
            f"{pre} does not exist: fine-tuning starts from the pre-training export; run "
            "--stage pretrain first, or pass --from-scratch to fine-tune a fresh model on purpose"
        )


def run(
    cfg: RunConfig,
    stages: tuple[str, ...] = STAGES,
    resume: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    from_scratch: bool = False,
) -> Path:
    """Run the requested stages in order; fine-tuning starts from the pre-training export.

    A run that would replace the final model of an earlier run (``<run>/model`` exists and
    there is no checkpoint of this run to resume from, or ``resume`` is off) is refused unless
    ``overwrite``: nothing is overwritten silently."""
    check_inputs(cfg, stages, from_scratch)
    final = cfg.run_dir / "model"
    resumable = any((cfg.run_dir / s / "checkpoints" / "last.ckpt").is_file() for s in stages)
    if final.exists() and not overwrite and not (resume and resumable):
        raise RunConfigError(
            f"{final} holds the model of an earlier run: pass --overwrite to replace it, or set "
            "another name (--set name=...)"
        )
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        (cfg.run_dir / "run_config.yaml").write_text(
            yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
        )
    export: Path | None = None
    for stage in stages:
        if getattr(cfg, stage) is None:
            continue
        init = export
        if stage == "finetune" and init is None and (cfg.run_dir / "pretrain" / "model").is_dir():
            init = cfg.run_dir / "pretrain" / "model"
        export = run_stage(cfg, stage, init_from=init, resume=resume, progress=progress)
    assert export is not None  # check_inputs: some stage runs
    if is_rank_zero():
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(export, final)
    barrier()  # no rank reports the final model before it is there
    return final
