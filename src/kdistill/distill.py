"""The distill command: the seed's loop, top to bottom, with Accelerate underneath.

    for epoch in epochs:
        for batch in data:
            with no_grad: teacher_logits = teacher(batch)       # frozen, eval mode
            student_logits = student(batch)
            loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)
            loss.backward(); optimizer.step()                    # only the student learns

With --unlabeled-data the batches also hold rows without labels, which get T^2 * KL alone.
--alpha 0 is the cross-entropy-only baseline: no teacher is loaded, and no unlabelled row used.

`distill` reads as that loop; the parts it composes live by stage: the step and the epoch in
`training/loop.py`, batches in `training/loaders.py`, device and precision in
`training/runtime.py`, checkpoints and resuming in `training/resume.py`, the teacher-strength
guard in `teachers/guards.py`.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import DistillConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_json
from kdistill.teachers.guards import chance_accuracy, check_teacher_strength
from kdistill.training.calibration import calibrate_run_models, logits_as_trained
from kdistill.training.checkpoint import CHECKPOINTS, save_model
from kdistill.training.intermediate import bind_intermediate, setup_intermediate_losses
from kdistill.training.loaders import (
    digest_rows,
    load_transfer_set,
    make_run_loaders,
    with_no_label_recipe,
)
from kdistill.training.loop import (
    apply_gradient_checkpointing,
    prepare_training,
    train_one_epoch,
)
from kdistill.training.no_labels import teacher_validation, with_texts_only
from kdistill.training.records import (
    done_summary,
    evaluate_student,
    failure_recorded,
    new_history,
    record_epoch,
    resolved_config,
    save_training_curves,
    tracker_scalars,
    write_epoch,
)
from kdistill.training.resume import RunCheckpoints, open_run_dir, resume_training
from kdistill.training.round_targets import RelabelledTargets, relabelled_targets
from kdistill.training.runs import discard_unstarted, finish_run_dir, run_name
from kdistill.training.runtime import (
    RunSetup,
    pick_teacher_dtype,
    setup_run,
    start_tracking,
)
from kdistill.training.samplers import sampler_state
from kdistill.training.targets import evaluate_teacher, make_teacher_targets, resolve_temperatures
from kdistill.training.transfer_text import TransferText, add_transfer_text, record_transfer_text

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from kdistill.students.vocab import VocabTrim
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.loop import EpochProgress, Training

logger = logging.getLogger(__name__)


def distill(config: DistillConfig) -> Path:
    """The distill command. Returns the completed run directory.

    A run that fails before its first epoch (bad input found late, a full disk) leaves no run
    directory behind; one that fails while training keeps its `.partial` folder."""
    if config.rounds > 1:  # self-training: one distill run per round
        from kdistill.self_training import run_rounds

        return run_rounds(config, distill_run)
    if config.round_targets != "soft":
        raise KdistillError(
            f"--round-targets {config.round_targets} shapes the targets of self-training's "
            "relabelled rounds; pass --rounds 2 or more (or drop it)"
        )
    return distill_run(config)


def distill_run(config: DistillConfig) -> Path:
    """One distill run (a self-training round is one: --round-targets applies to its targets)."""
    created: list[Path] = []
    try:
        return _distill(config, created)
    except BaseException:
        for partial in created:
            discard_unstarted(partial)
        raise


def _distill(config: DistillConfig, created: list[Path]) -> Path:
    """data, teacher, student, loaders, teacher check; then per epoch: train, evaluate, save."""
    from accelerate.utils import set_seed

    config, run, unlabeled, teacher, t_dtype, selection, given, made = load_data_and_teacher(config)
    accelerator = run.accelerator
    student, s_tok, vocab, n_student, checkpointing = load_trainable_student(config, run, unlabeled)
    loaders = make_run_loaders(config, run, s_tok, teacher, unlabeled)
    kept_ids = vocab.kept_ids if vocab is not None else None
    intermediate = setup_intermediate_losses(config, student, teacher, loaders[2], kept_ids)
    t = prepare_training(
        config, accelerator, student, teacher, *loaders, checkpointing, intermediate
    )
    final_dir, partial_dir, checkpoint = start_run_dir(
        config, run, created, lambda: resolved_config(config, run, t, n_student, teacher, t_dtype)
    )

    # ---- how good is the teacher? Distilling from a teacher at chance only adds noise.
    teacher_metrics, history = check_teacher(config, run, teacher, t, t_dtype)
    history.update(selection)
    record_dir = partial_dir if checkpoint is None else None  # a resume has it recorded
    t_cal, temperature = resolve_temperatures(config, run, teacher, t, record_dir, history)
    keep = intermediate is not None
    args = (t.train_tok, t_dtype, history, t_cal, keep, given)
    teacher_targets = make_teacher_targets(config, run, teacher, *args)
    bind_intermediate(intermediate, config, t.student, teacher, teacher_targets, t_cal)
    record_transfer_text(made, teacher_targets, t.train_tok, run.data.label_names, record_dir)

    # Reseed: what ran before (teacher evaluation or cache pass) must not shift dropout and
    # shuffling, so the same seed trains the same student with or without a cache.
    set_seed(config.seed)
    checkpoints, first_epoch, progress, saved = start_checkpoints(
        config, accelerator, t, partial_dir, checkpoint, history
    )
    state, teacher_accuracy = checkpoints.state, (teacher_metrics or {}).get("accuracy")
    # A failure is written into history.json, so `kdistill runs` shows the run as crashed even
    # when the process goes on (a sweep, a notebook).
    with failure_recorded(history, partial_dir / "history.json", accelerator), checkpoints.stop:
        for epoch in range(first_epoch, config.epochs + 1):
            # As the epoch starts (a resume replays the sampler from here).
            lr = saved["learning_rate"] if progress else t.scheduler.get_last_lr()[0]
            sampler, desc = sampler_state(t.train_loader), f"epoch {epoch}/{config.epochs}"
            after_step = functools.partial(checkpoints.after_step, epoch, sampler, lr)
            step = (t.optimizer, t.scheduler, accelerator, temperature, config.alpha)
            stats = train_one_epoch(
                t.student,
                teacher_targets,
                t.train_loader,
                *step,
                desc,
                progress,
                after_step,
                intermediate,
            )
            progress = None
            metrics = evaluate_student(t.student, t.val_loader, accelerator, run.data.num_labels)
            wall_time = time.perf_counter() - checkpoints.run_start
            if record_epoch(state, epoch, stats, metrics, lr, wall_time):  # a new best
                save_model(partial_dir / "best_model", t.student, s_tok, accelerator)
            scalars = tracker_scalars(stats, metrics, lr, teacher_accuracy)
            write_epoch(history, state, accelerator, partial_dir / "history.json", epoch, scalars)
            checkpoints.after_epoch(epoch, epoch == config.epochs, t.train_loader, t.scheduler)
        save_model(partial_dir / "final_model", t.student, s_tok, accelerator)
    summary = done_summary(state, teacher, teacher_accuracy, n_student)
    finish_run(config, run, history, checkpoints, final_dir, summary)
    return final_dir


def load_data_and_teacher(
    config: DistillConfig,
) -> tuple[
    DistillConfig,
    RunSetup,
    Dataset | None,
    Teacher | None,
    str,
    dict[str, Any],
    RelabelledTargets | None,
    TransferText | None,
]:
    """(config, run, transfer set, teacher, its dtype, how the epoch is chosen, --round-targets'
    targets, the texts made for it): the data with the no-label recipe where it applies, and the
    frozen teacher. --augment and --generate texts join the transfer set. With no labelled
    validation row, a held-out slice of the transfer set labelled by the teacher stands in for
    it. Weighted or filtered round targets are computed here, before the loaders: a filter drops
    transfer rows."""
    config = with_texts_only(config)  # --label-names: --dataset is the transfer set
    run = setup_run(config)  # device, precision, a fresh Accelerator, the seed, the data
    config = with_no_label_recipe(config, len(run.train))
    unlabeled = load_transfer_set(config, run)
    teacher, t_dtype = load_frozen_teacher(config, run)
    unlabeled, made = add_transfer_text(config, run, teacher, unlabeled)
    run, unlabeled, selection = teacher_validation(config, run, teacher, unlabeled, t_dtype)
    unlabeled, given = relabelled_targets(config, run, teacher, unlabeled, t_dtype)
    return config, run, unlabeled, teacher, t_dtype, selection, given, made


def check_teacher(
    config: DistillConfig, run: RunSetup, teacher: Teacher | None, t: Training, t_dtype: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The teacher's validation metrics (None without a teacher) and the run's new history;
    a teacher near chance stops the run unless --allow-weak-teacher. The evaluation's time is
    the teacher's measured rate, so the run's time estimate is logged here."""
    start = time.perf_counter()
    teacher_metrics = evaluate_teacher(config, run, teacher, t.val_loader, t.val_tok, t_dtype)
    teacher_eval_s = time.perf_counter() - start if teacher is not None else None
    chance = chance_accuracy(list(run.val["label"]), run.data.num_labels)
    if teacher_metrics is not None:
        check_teacher_strength(teacher_metrics["accuracy"], chance, config.allow_weak_teacher)
    history = new_history(teacher_metrics, chance)
    announce_run_time(config, run, t, teacher_eval_s, history)
    return teacher_metrics, history


def announce_run_time(
    config: DistillConfig,
    run: RunSetup,
    t: Training,
    teacher_eval_s: float | None,
    history: dict[str, Any],
) -> None:
    """Log (and record in history.json) how long the run will take on this device, measured
    from the teacher's validation pass and a few student passes, before the teacher pass and
    the epochs start: a run of hours should say so at once."""
    from kdistill.training.estimate import estimate_run_time, log_estimate

    estimate = estimate_run_time(config, run.accelerator, t, teacher_eval_s, len(run.val))
    if run.accelerator.is_main_process:
        log_estimate(estimate, run.accelerator.device.type)
    history["time_estimate"] = estimate.record()


def start_checkpoints(
    config: DistillConfig,
    accelerator: Accelerator,
    t: Training,
    partial_dir: Path,
    checkpoint: Path | None,
    history: dict[str, Any],
) -> tuple[RunCheckpoints, int, EpochProgress | None, dict[str, Any]]:
    """The run's checkpoints, and where the loop starts: (checkpoints, first epoch, progress
    within it, the saved state). A resume restores weights, optimizer, scheduler, RNG and the
    loop's position from `checkpoint`, after checking it is this run."""
    key, digest = history["teacher_cache"].get("key"), digest_rows(t.train_tok)
    checkpoints = RunCheckpoints(
        accelerator, partial_dir, t.student, digest, key, config.save_steps
    )
    if checkpoint is None:
        return checkpoints, 1, None, {}
    return (checkpoints, *resume_training(checkpoints, checkpoint, history, t.train_loader))


def start_run_dir(
    config: DistillConfig,
    run: RunSetup,
    created: list[Path],
    run_config: Callable[[], dict[str, Any]],
) -> tuple[Path, Path, Path | None]:
    """(final, partial, checkpoint): the run directory, `.partial` until complete, with
    config.json written first so that a crash is explained; or with --resume the unfinished
    one and its latest checkpoint. Then the tracker, writing into it."""
    accelerator = run.accelerator
    name = run_name(run.data.name, config.temperature, config.alpha)
    final_dir, partial_dir, checkpoint = open_run_dir(config, name, accelerator)
    if accelerator.is_main_process and checkpoint is None:
        created.append(partial_dir)
        atomic_write_json(partial_dir / "config.json", run_config())
        logger.info("run directory: %s (renamed on completion)", final_dir)
    start_tracking(accelerator, config.report_to, partial_dir, final_dir.name, config.to_dict())
    return final_dir, partial_dir, checkpoint


# --------------------------------------------------------------------------- data, teacher, student


def load_frozen_teacher(config: DistillConfig, run: RunSetup) -> tuple[Teacher | None, str]:
    """The teacher, frozen in eval mode, and its dtype's name. alpha 0 is pure supervised
    training (the cross-entropy-only baseline): no row learns from the teacher, so it is
    neither loaded nor run (None), and a weak one cannot stop the run."""
    from kdistill.teachers.classifier import load_teacher

    t_dtype, t_dtype_name = pick_teacher_dtype(config.teacher_dtype, run.precision)
    if config.alpha <= 0:
        logger.info(
            "--alpha 0: cross-entropy only; the teacher %s is not loaded", config.teacher_model
        )
        return None, t_dtype_name
    teacher = load_teacher(
        config,
        config.teacher_model,
        run.data.label_names,
        t_dtype,
        run.train,
        config.max_length,
        config.seed,
    )
    logits_as_trained(teacher)  # a head finetune-teacher calibrated: its logits as trained
    return teacher, t_dtype_name


def load_trainable_student(
    config: DistillConfig, run: RunSetup, unlabeled: Dataset | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, VocabTrim | None, int, bool]:
    """The student with a fresh head for these classes: (model, tokenizer, its vocabulary cut
    (--trim-vocab) or None, parameter count, whether gradient checkpointing is on), compiled
    with --compile. The cut keeps the tokens of the training, transfer and validation text."""
    from kdistill.students.load import count_parameters, load_student
    from kdistill.students.vocab import trim_for_run

    student, s_tok = load_student(
        config.student_model,
        run.data.label_names,
        config.seed,
        config.student_tokenizer,
        config.student_layers,
        config.student_num_layers,
    )
    seen = list(run.train["text"]) + (list(unlabeled["text"]) if unlabeled is not None else [])
    s_tok, vocab = trim_for_run(student, s_tok, config, seen, list(run.val["text"]))
    n_student = count_parameters(student)
    if config.calibrate_student == "auto":
        from kdistill.training.calibration import classification_head

        classification_head(student)  # a head it cannot find is refused now, not after training
    checkpointing = apply_gradient_checkpointing(student, config.gradient_checkpointing, run.device)
    if config.student_lora:
        from kdistill.students.lora import add_lora, lora_targets

        targets = lora_targets(student, None, "--student-lora")
        student = add_lora(student, config.student_lora, 2.0 * config.student_lora, 0.05, targets)
    if config.compile:
        student = torch.compile(student)
    return student, s_tok, vocab, n_student, checkpointing


# --------------------------------------------------------------------------- the end


def finish_run(
    config: DistillConfig,
    run: RunSetup,
    history: dict[str, Any],
    checkpoints: RunCheckpoints,
    final_dir: Path,
    summary: str,
) -> None:
    """Complete the run: the models calibrated (--calibrate-student), final history, curves and
    model cards, the trackers closed, the checkpoints dropped (the models are saved, and the
    optimizer state is dead weight: 16 bytes per student parameter), the `.partial` folder
    renamed, then the upload."""
    partial_dir, accelerator = checkpoints.run_dir, run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        calibrate_run_models(
            partial_dir,
            config.calibrate_student,
            list(run.val["text"]),
            list(run.val["label"]),
            config.max_length,
            config.batch_size,
            accelerator.device,
        )
        history["total_time_s"] = time.perf_counter() - checkpoints.run_start
        history["completed"] = datetime.now().isoformat(timespec="seconds")
        atomic_write_json(partial_dir / "history.json", history)
        save_training_curves(history, partial_dir / "training_curves.png")
        from kdistill.shipping.model_card import write_run_cards

        write_run_cards(partial_dir, config.push_to_hub)  # README.md in each model folder
    accelerator.end_training()  # closes the trackers' files before the folder is renamed
    if not accelerator.is_main_process:
        return
    shutil.rmtree(partial_dir / CHECKPOINTS, ignore_errors=True)
    finish_run_dir(partial_dir, final_dir)
    logger.info("%s; %s", summary, final_dir)
    if config.push_to_hub:  # after the rename: a failed upload leaves a complete run
        from kdistill.shipping.publish import push_folder

        push_folder(final_dir / "best_model", config.push_to_hub, not config.hub_public)
