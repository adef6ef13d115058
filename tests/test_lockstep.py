"""Lockstep sweeps: the stacked loss and clipping against their single-run versions, and every
point of a lockstep sweep against a `kdistill distill` run of that point alone."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from kdistill.cli import main
from kdistill.training.lockstep import clip_per_point, stacked_kd_loss
from kdistill.training.losses import kd_loss

TOL = 1e-5
# Weights, under the default schedule's held peak: a parameter whose true gradient is 0 (a key
# bias, which softmax ignores) gets float noise that AdamW normalises into steps, which differ
# between stacked and single maths by about 2e-5 after 2 epochs at 3e-3 (measured 1.6e-5).
WEIGHT_TOL = 5e-5


@pytest.mark.parametrize("labels", [[0, 2, 1, 3, 0], [0, -100, 1, -100, 2], [-100] * 5])
def test_stacked_loss_is_kd_loss_point_by_point(labels):
    torch.manual_seed(0)
    temps, alphas = [1.0, 2.0, 4.0, 3.0, 2.5], [0.0, 0.5, 1.0, 0.7, 0.3]
    student = (3 * torch.randn(len(temps), 5, 4)).requires_grad_()
    teacher = 3 * torch.randn(5, 4)
    y = torch.tensor(labels)
    parts = stacked_kd_loss(student, teacher, y, torch.tensor(temps), torch.tensor(alphas))
    parts.loss.sum().backward()
    for k, (t, a) in enumerate(zip(temps, alphas, strict=True)):
        if all(v < 0 for v in labels) and a < 1.0:
            continue  # distill refuses alpha < 1 without labelled rows
        one = student.detach()[k].clone().requires_grad_()
        ref = kd_loss(one, teacher, y, t, a)
        ref.loss.backward()
        for name in ("loss", "kl", "ce", "labeled_loss", "unlabeled_loss"):
            got, want = getattr(parts, name)[k], getattr(ref, name)
            assert torch.allclose(got, want, atol=TOL), (name, k, got, want)
        assert torch.allclose(student.grad[k], one.grad, atol=TOL)
        assert (parts.num_labeled, parts.num_unlabeled) == (ref.num_labeled, ref.num_unlabeled)


def test_each_point_is_clipped_over_its_own_slice():
    torch.manual_seed(0)
    shapes = [(6, 3), (3,), (2, 2, 2)]
    scales = torch.tensor([0.01, 1.0, 50.0])  # below, near and far above max_norm 1
    stacked = [torch.zeros(3, *s, requires_grad=True) for s in shapes]
    for p in stacked:
        p.grad = torch.randn(p.shape) * scales.view(-1, *[1] * (p.ndim - 1))
    singles = [[torch.zeros(s, requires_grad=True) for s in shapes] for _ in range(3)]
    for k, params in enumerate(singles):
        for p, s in zip(params, stacked, strict=True):
            p.grad = s.grad[k].clone()
    norms = clip_per_point(stacked, 1.0)
    for k, params in enumerate(singles):
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        assert torch.allclose(norms[k], norm, rtol=1e-6)
        for p, s in zip(params, stacked, strict=True):
            assert torch.allclose(s.grad[k], p.grad, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- whole runs


def student_without_dropout(source: Path, dest: Path) -> Path:
    """The tiny BERT student's architecture with dropout off: a folder with only config.json
    and the tokenizer starts from random weights, seeded as every run is."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    dest.mkdir()
    config.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    return dest


def common_args(teacher: Path, student: Path) -> list[str]:
    return [
        "--dataset",
        "toy",
        "--teacher-model",
        str(teacher),
        "--student-model",
        str(student),
        "--max-train-samples",
        "40",
        "--max-val-samples",
        "24",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--learning-rate",
        "3e-3",
        # fp32: under bf16 the stacked matmuls and attention sum in another order than a
        # single model's, and one-ulp differences grow through training as any perturbation
        # does (test_the_stacked_forward_rounds_as_a_single_one holds what bf16 keeps equal).
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
    ]  # the default schedule, constant_with_warmup


def run_files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def assert_same_run(lock: Path, alone: Path) -> None:
    """The lockstep point's run folder against its run alone: the same files, losses and
    accuracies (within 1e-5), best epoch and final weights (within 5e-5)."""
    from safetensors.torch import load_file

    assert run_files(lock) == run_files(alone)
    h_lock = json.loads((lock / "history.json").read_text())
    h_alone = json.loads((alone / "history.json").read_text())
    assert h_lock["best"] == h_alone["best"]
    assert h_lock["teacher"] == h_alone["teacher"]
    for e_lock, e_alone in zip(h_lock["epochs"], h_alone["epochs"], strict=True):
        for key in (
            "train_loss",
            "train_kl",
            "train_ce",
            "val_loss",
            "val_accuracy",
            "val_macro_f1",
            "learning_rate",
            "train_samples",
        ):
            assert e_lock[key] == pytest.approx(e_alone[key], abs=TOL), key
    for which in ("final_model", "best_model"):
        w_lock = load_file(lock / which / "model.safetensors")
        w_alone = load_file(alone / which / "model.safetensors")
        assert w_lock.keys() == w_alone.keys()
        for name, tensor in w_alone.items():
            assert torch.allclose(w_lock[name], tensor, atol=WEIGHT_TOL), (which, name)
    c_lock = json.loads((lock / "config.json").read_text())
    c_alone = json.loads((alone / "config.json").read_text())
    assert set(c_lock) == set(c_alone)
    # where the runs were written, and when: the rest of the resolved configuration is the same
    # (the sweep resolves --teacher-cache auto to disk, so later runs reuse the logits)
    differs = {"started", "process", "command", "output_dir", "teacher_cache", "calibration"}
    assert {k: v for k, v in c_lock.items() if k not in differs | {"resolved"}} == {
        k: v for k, v in c_alone.items() if k not in differs | {"resolved"}
    }
    resolved = {k: v for k, v in c_lock["resolved"].items() if k != "lockstep"}
    assert resolved == c_alone["resolved"]
    # --calibrate-student auto: the same T folded into each model's head, to float noise.
    assert c_lock["calibration"]["mode"] == c_alone["calibration"]["mode"] == "auto"
    for which in ("final_model", "best_model"):
        fit_lock, fit_alone = c_lock["calibration"][which], c_alone["calibration"][which]
        assert fit_lock["applied"] == fit_alone["applied"]
        assert fit_lock["temperature"] == pytest.approx(fit_alone["temperature"], rel=1e-3)


def alone_runs(workdir: Path, args: list[str], record: dict) -> dict[tuple, Path]:
    """Each (T, alpha, seed) of the sweep trained alone by `kdistill distill`."""
    runs = {}
    for entry in record["runs"]:
        out = workdir / "alone" / f"{entry['temperature']}_{entry['alpha']}_{entry['seed']}"
        argv = [
            "distill",
            *args,
            "--temperature",
            str(entry["temperature"]),
            "--alpha",
            str(entry["alpha"]),
            "--seed",
            str(entry["seed"]),
            "--output-dir",
            str(out),
            "--no-label-recipe",  # a sweep takes its flags as given, and records it so
            "off",
        ]
        assert main(argv) == 0
        (run,) = out.iterdir()
        runs[entry["temperature"], entry["alpha"], entry["seed"]] = run
    return runs


def run_sweep(capsys, args: list[str]) -> tuple[Path, dict]:
    assert main(["sweep", *args]) == 0
    sweep_dir = Path(capsys.readouterr().out.strip().splitlines()[-1]).resolve()
    return sweep_dir, json.loads((sweep_dir / "sweep.json").read_text())


def test_lockstep_points_equal_their_runs_alone_without_dropout(workdir, tiny_models, capsys):
    """Dropout off, two seeds as two cohorts of one stack: every (T, alpha, seed) student's
    losses, accuracies and weights are those of `kdistill distill` of it alone."""
    student = student_without_dropout(tiny_models["bert_student"], workdir / "student")
    args = common_args(tiny_models["bert_teacher"], student)
    sweep_dir, record = run_sweep(
        capsys,
        [*args, "--temperature", "2", "--alpha", "0,0.7", "--seeds", "1,2", "--lockstep", "on"],
    )
    assert record["lockstep"]["groups"][0]["students"] == 4 and record["lockstep"]["reason"] is None
    assert [(r["seed"], r["status"]) for r in record["runs"]] == [(1, "completed")] * 2 + [
        (2, "completed")
    ] * 2
    assert record["peak_rss_mb"] > 100
    # each point's seeds summarised; the best point named by its mean
    assert [(p["alpha"], p["seeds"]) for p in record["points"]] == [(0.0, [1, 2]), (0.7, [1, 2])]
    means = [p["val_accuracy_mean"] for p in record["points"]]
    assert record["best"]["val_accuracy_mean"] == max(means)
    assert "clear_lead" in record["best"]
    assert (sweep_dir / "sweep_heatmap.png").stat().st_size > 5000
    alone = alone_runs(workdir, args, record)
    for entry in record["runs"]:
        key = (entry["temperature"], entry["alpha"], entry["seed"])
        assert_same_run(Path(entry["run_dir"]), alone[key])
        # a random-init student: its vocabulary cut to the data (--trim-vocab auto), in lockstep
        # as alone (assert_same_run compared the configs and weights)
        vocab = json.loads((alone[key] / "config.json").read_text())["student"]["vocabulary"]
        assert vocab["kept"] < vocab["source_size"]
    # the seeds trained different students
    a1, a2 = (json.loads((alone[2.0, 0.7, s] / "history.json").read_text()) for s in (1, 2))
    assert a1["epochs"][0]["train_loss"] != a2["epochs"][0]["train_loss"]


def test_lockstep_draws_the_single_runs_dropout(workdir, tiny_models, capsys):
    """Dropout on: vmap's randomness="same" gives each point the masks its run alone draws."""
    args = common_args(tiny_models["bert_teacher"], tiny_models["bert_student"])
    _, record = run_sweep(
        capsys, [*args, "--temperature", "2,3", "--alpha", "0.5", "--lockstep", "on"]
    )
    alone = alone_runs(workdir, args, record)
    for entry in record["runs"]:
        assert_same_run(Path(entry["run_dir"]), alone[entry["temperature"], entry["alpha"], 42])


def test_unsupported_options_fall_back_to_turns_with_one_warning(
    workdir, tiny_models, capsys, caplog
):
    args = common_args(tiny_models["bert_teacher"], tiny_models["bert_student"])
    extra = ["--temperature", "2,3", "--alpha", "0.5", "--gradient-accumulation-steps", "2"]
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        _, record = run_sweep(capsys, [*args, *extra])
    warnings = [r.getMessage() for r in caplog.records if "lockstep off" in r.getMessage()]
    assert len(warnings) == 1 and "--gradient-accumulation-steps" in warnings[0]
    assert record["lockstep"]["group_size"] is None
    assert "--gradient-accumulation-steps" in record["lockstep"]["reason"]
    assert [r["status"] for r in record["runs"]] == ["completed", "completed"]
    # --lockstep on refuses instead, in one line, leaving nothing
    assert main(["sweep", *args, *extra, "--lockstep", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lockstep on" in err and "--gradient-accumulation-steps" in err
    assert len(err.splitlines()) == 1


def test_a_grid_too_big_for_memory_falls_back(workdir, tiny_models, capsys, caplog, monkeypatch):
    import kdistill.training.lockstep

    monkeypatch.setattr(kdistill.training.lockstep, "available_bytes", lambda device: 1000)
    args = common_args(tiny_models["bert_teacher"], tiny_models["bert_student"])
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        _, record = run_sweep(
            capsys, [*args, "--epochs", "1", "--temperature", "2,3", "--alpha", "0.5"]
        )
    assert "not even 2 fit" in record["lockstep"]["reason"]
    assert any("lockstep off" in r.getMessage() for r in caplog.records)
    assert len(record["runs"]) == 2 and record["lockstep"]["groups"] == []


def test_distill_seeds_groups_one_run_per_seed(workdir, tiny_models, capsys):
    args = common_args(tiny_models["bert_teacher"], tiny_models["bert_student"])
    assert main(["distill", *args, "--epochs", "1", "--seeds", "1,2,3"]) == 0
    group = Path(capsys.readouterr().out.strip().splitlines()[-1]).resolve()
    assert group.parent == workdir / "outputs" / "student_soft_distill"
    assert group.name.startswith("toy_T3.0_A0.7_seeds_")
    summary = json.loads((group / "seeds.json").read_text())
    assert summary["kind"] == "seeds" and summary["seeds"] == [1, 2, 3]
    (point,) = summary["points"]
    accs = [r["best_val_accuracy"] for r in summary["runs"]]
    assert point["seeds"] == [1, 2, 3] and len({r["run_dir"] for r in summary["runs"]}) == 3
    assert point["val_accuracy_mean"] == pytest.approx(sum(accs) / 3)
    assert point["val_accuracy_std"] == pytest.approx(torch.tensor(accs).std().item(), abs=1e-9)
    for r in summary["runs"]:
        config = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        assert config["seed"] == r["seed"] and config["seeds"] is None
        # every seed's models are calibrated as a single run's are
        assert config["calibration"]["mode"] == "auto"
        assert {"best_model", "final_model"} <= set(config["calibration"])


@pytest.mark.parametrize("value", ["1,x", "1,1", ","])
def test_bad_seeds_are_one_line(workdir, tiny_models, capsys, value):
    args = common_args(tiny_models["bert_teacher"], tiny_models["bert_student"])
    assert main(["distill", *args, "--seeds", value]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seeds" in err and len(err.splitlines()) == 1


def test_the_best_mean_is_a_clear_lead_only_beyond_one_spread():
    from kdistill.training.seed_stats import best_by_mean

    def point(t, mean, std):
        return {"temperature": t, "alpha": 0.5, "val_accuracy_mean": mean, "val_accuracy_std": std}

    close = best_by_mean([point(2, 0.80, 0.02), point(3, 0.81, 0.01), point(4, 0.5, 0.0)])
    assert close["temperature"] == 3 and close["lead"] == pytest.approx(0.01)
    assert close["spread"] == 0.02 and close["clear_lead"] is False
    clear = best_by_mean([point(2, 0.70, 0.02), point(3, 0.81, 0.01)])
    assert clear["clear_lead"] is True
    assert best_by_mean([point(2, None, None)]) is None


def test_options_lockstep_cannot_carry_are_named_not_dropped():
    """Lockstep builds its own optimiser: a head learning rate it would ignore sends the sweep
    to runs in turn instead of silently training every point at the body's rate."""
    from kdistill.config import SweepConfig
    from kdistill.training.lockstep import unsupported_reason

    base = dict(dataset="d", student_model="s", teacher_model="t", temperature="2,3")
    assert unsupported_reason(SweepConfig(**base)) is None
    scaled = SweepConfig(**base, head_learning_rate_scale=10.0)
    assert unsupported_reason(scaled) == "--head-learning-rate-scale"


def test_alpha_0_points_drop_the_unlabelled_rows_as_their_runs_alone(workdir, tiny_models, capsys):
    """With --unlabeled-data, distill --alpha 0 trains on the labelled rows alone. Its lockstep
    point must too: the same batches and steps, and a config.json `compare` takes as a fair
    cross-entropy baseline (no unlabelled rows). The alpha 0.7 points keep the unlabelled rows."""
    from conftest import make_texts

    unlabeled = workdir / "unlabeled.csv"
    unlabeled.write_text("text\n" + "\n".join(t for t, _ in make_texts(8, seed=7)) + "\n")
    args = [
        *common_args(tiny_models["bert_teacher"], tiny_models["bert_student"]),
        "--unlabeled-data",
        str(unlabeled),
    ]
    _, record = run_sweep(
        capsys, [*args, "--temperature", "2,3", "--alpha", "0,0.7", "--lockstep", "on"]
    )
    assert [g["students"] for g in record["lockstep"]["groups"]] == [2, 2]
    alone = alone_runs(workdir, args, record)
    for entry in record["runs"]:
        lock = Path(entry["run_dir"])
        assert_same_run(lock, alone[entry["temperature"], entry["alpha"], 42])
        config = json.loads((lock / "config.json").read_text())
        epochs = json.loads((lock / "history.json").read_text())["epochs"]
        unlabelled_seen = sum(e["train_unlabeled_samples"] for e in epochs)
        if entry["alpha"] == 0.0:
            assert config["data"]["unlabeled_rows"] == 0 and unlabelled_seen == 0
            assert config["resolved"]["total_optimizer_steps"] == 2 * 5  # 40 rows / 8, 2 epochs
        else:
            assert config["data"]["unlabeled_rows"] == 32 and unlabelled_seen == 2 * 32
    from kdistill.evaluation.gain import baseline_problems

    zero = next(e for e in record["runs"] if e["alpha"] == 0.0)
    run_config = json.loads((Path(zero["run_dir"]) / "config.json").read_text())
    assert baseline_problems({"run_config": run_config}) == []


def test_the_stacked_forward_rounds_as_a_single_one_under_bf16(tiny_models):
    """Under bf16 autocast a single student's Linear layers return bf16, each output rounded
    once. Inside vmap, autocast adds the bias in fp32 and returns fp32 (pytorch#192617), which
    kept the stack's activations in fp32 where the runs alone round them: another, more
    precise run. Now every Linear of the stack returns what the single one returns; what is
    left is the order of the sums in the batched matmuls and attention."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from kdistill.training.lockstep import StackedStudents

    torch.manual_seed(0)
    single = AutoModelForSequenceClassification.from_pretrained(
        tiny_models["bert_student"], num_labels=4
    ).eval()
    copies = [copy.deepcopy(single) for _ in range(3)]
    with torch.no_grad():  # three different students
        for k, model in enumerate(copies):
            for p in model.parameters():
                p.add_(0.01 * k * torch.randn_like(p))
    stack = StackedStudents(copies)
    stack.eval()
    ids = torch.randint(5, single.config.vocab_size, (6, 12))
    batch = {"student_input_ids": ids, "student_attention_mask": torch.ones_like(ids)}

    def linear_dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
        seen: dict[str, torch.dtype] = {}

        def record(name: str) -> Any:
            def hook(_module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
                seen[name] = out.dtype

            return hook

        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(record(name))
        return seen

    stacked_dtypes, single_dtypes = linear_dtypes(stack.base), linear_dtypes(copies[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stacked = stack.eval_logits(batch, 0, 3).float()  # (batch, 3, num_labels)
        with torch.no_grad():
            alone = copies[1](input_ids=ids, attention_mask=batch["student_attention_mask"])
    assert len(single_dtypes) == 14  # 2 layers x 6 Linear, the pooler and the classifier
    assert stacked_dtypes == single_dtypes
    assert set(single_dtypes.values()) == {torch.bfloat16}
    with torch.no_grad():
        fp32 = copies[1](input_ids=ids, attention_mask=batch["student_attention_mask"]).logits
    rounding = (alone.logits.float() - fp32).abs().max()
    assert rounding > 0  # bf16 does round here
    # What is left is the order of sums: of the size of one bf16 rounding, not more.
    assert (stacked[:, 1] - alone.logits.float()).abs().max() <= 2 * rounding
