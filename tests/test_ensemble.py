"""Teacher ensembles: the combining rule analytically, and through the real CLI with tiny models
(members cached one by one, each reported by eval-teacher and distill)."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.cli import main
from kdistill.errors import KdistillError
from kdistill.teachers.ensemble import agreement_weights, combine, parse_weights


def test_combine_is_a_normalised_weighted_geometric_mean():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4) * 3, torch.randn(5, 4)
    # Identical members, equal weights: that member's distribution exactly.
    torch.testing.assert_close(combine([a, a], [1.0, 1.0]), a.log_softmax(-1))
    torch.testing.assert_close(combine([a, a, a], [0.2, 5.0, 1.0]), a.log_softmax(-1))
    # Weights are normalised: scaling them all changes nothing.
    torch.testing.assert_close(combine([a, b], [2.0, 1.0]), combine([a, b], [6.0, 3.0]))
    # A weight of 0 removes the member.
    torch.testing.assert_close(combine([a, b], [1.0, 0.0]), a.log_softmax(-1))
    # By hand: p ∝ p_a^(2/3) * p_b^(1/3), and the result sums to 1.
    pa, pb = a.softmax(-1), b.softmax(-1)
    by_hand = pa ** (2 / 3) * pb ** (1 / 3)
    by_hand = by_hand / by_hand.sum(-1, keepdim=True)
    out = combine([a, b], [2.0, 1.0])
    torch.testing.assert_close(out.exp(), by_hand)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(5))
    # Logits shifted per row (a calibrated prompt teacher's scores) mean the same distribution.
    torch.testing.assert_close(combine([a + 7.0, b - 2.0], [1.0, 1.0]), combine([a, b], [1, 1]))


def test_weights_are_checked():
    assert parse_weights(None, 3) == [1.0, 1.0, 1.0]
    assert parse_weights("2, 1", 2) == [2.0, 1.0]
    for bad in ("1", "1,x", "-1,2", "0,0"):
        with pytest.raises(KdistillError, match="--teacher-weights"):
            parse_weights(bad, 2)


def test_agreement_weights_give_a_dissenting_member_less_say():
    """No label read: two members that agree with each other outweigh one that does not."""
    torch.manual_seed(0)
    truth = torch.randint(0, 4, (200,))
    sure = torch.nn.functional.one_hot(truth, 4).float() * 4  # (200, 4): confident and right
    noisy = sure + torch.randn(200, 4)  # mostly the same answers
    dissenter = torch.randn(200, 4) * 4  # its own answers
    w = agreement_weights([sure, noisy, dissenter])
    assert sum(w) == pytest.approx(1.0)
    assert w[2] < min(w[0], w[1]) and w[2] < 0.25
    # Two members: each one's consensus is the other, so the weights are equal.
    assert agreement_weights([sure, dissenter]) == pytest.approx([0.5, 0.5])
    # Members that all agree share the weight equally.
    assert agreement_weights([sure, sure, sure]) == pytest.approx([1 / 3] * 3)


def test_agreement_weights_are_fitted_and_recorded(capsys, tmp_path, workdir, tiny_models):
    """--teacher-weights agreement: eval-teacher's settings, cache record and member rows show
    the weights fitted on the rows it scored; distill refuses it without the teacher cache."""
    models = [str(tiny_models["bert_student"])] * 2 + [str(tiny_models["qwen_lm"])]
    report = eval_teacher(tmp_path, models, "--teacher-weights", "agreement")
    settings, record = report["settings"], report["teacher_cache"]
    assert settings["weight_rule"] == "agreement"
    assert settings["weights_fitted_on"] == report["rows"]
    assert record["weight_rule"] == "agreement" and record["weights"] == settings["weights"]
    assert sum(settings["weights"]) == pytest.approx(1.0)
    # The two identical encoders agree with each other at least as well as with the LLM.
    assert settings["weights"][0] == settings["weights"][1] >= settings["weights"][2]
    assert [m["weight"] for m in report["members"][:3]] == settings["weights"]
    argv = ["distill", "--dataset", "toy", "--teacher-model", ",".join(models)]
    argv += ["--teacher-weights", "agreement", "--teacher-cache", "off"]
    argv += ["--student-model", str(tiny_models["bert_student"]), "--allow-weak-teacher"]
    assert main([*argv, "--output-dir", str(tmp_path / "runs")]) == 2
    assert "drop --teacher-cache off" in capsys.readouterr().err


def eval_teacher(tmp_path, models: list[str], *extra: str, name: str = "r") -> dict:
    out = tmp_path / f"{name}.json"
    argv = ["eval-teacher", "--dataset", "toy", "--mixed-precision", "no"]
    for m in models:
        argv += ["--teacher-model", m]
    assert main([*argv, *extra, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_eval_teacher_reports_members_and_caches_each(
    capsys, tmp_path, workdir, tiny_models, trained_teacher
):
    """A classifier plus a prompt teacher: eval-teacher reports both and the ensemble; with
    --teacher-cache disk each member is saved under its own key, so a single member, or the
    same members under other weights, run no teacher again."""
    a, b = str(trained_teacher), str(tiny_models["qwen_lm"])
    cache = ["--teacher-cache", "disk", "--teacher-cache-dir", str(tmp_path / "tc")]
    both = eval_teacher(tmp_path, [a, b], *cache, "--teacher-weights", "3,1")
    assert "ensemble member" in capsys.readouterr().out
    assert both["mode"] == "ensemble"
    members = both["members"]
    assert [m["member"] for m in members][-1] == "ensemble"
    assert [m["weight"] for m in members] == [3.0, 1.0, 4.0]
    assert members[-1]["accuracy"] == pytest.approx(both["accuracy"])
    records = both["teacher_cache"]["members"]
    assert len({r["key"] for r in records}) == 2 and not any(r["hit"] for r in records)
    assert len(list((tmp_path / "tc").glob("*.safetensors"))) == 2

    alone = eval_teacher(tmp_path, [a], *cache, name="alone")
    assert alone["teacher_cache"]["hit"] is True
    assert alone["accuracy"] == pytest.approx(members[0]["accuracy"])
    # Comma list = repeated flag; other weights reuse both members' logits.
    again = eval_teacher(tmp_path, [f"{a},{b}"], *cache, name="again")
    assert again["teacher_cache"]["hit"] is True
    assert [m["weight"] for m in again["members"]] == [1.0, 1.0, 2.0]


def test_eval_teacher_measures_speed_only_over_passes_that_ran(
    capsys, tmp_path, workdir, tiny_models
):
    """Logits read from the disk cache time the disk: eval-teacher says "cached" rather than a
    rows/s, and for a partly cached ensemble gives the rows/s of the members that ran."""
    a, b = str(tiny_models["bert_teacher"]), str(tiny_models["qwen_teacher"])
    cache = ["--teacher-cache", "disk", "--teacher-cache-dir", str(tmp_path / "tc")]
    first = eval_teacher(tmp_path, [a], *cache, name="first")
    out = capsys.readouterr().out
    assert first["cached"] == "none" and first["rows_per_second"] > 0
    assert f"({first['rows_per_second']:.1f} rows/s)" in out

    again = eval_teacher(tmp_path, [a], *cache, name="again")
    out = capsys.readouterr().out
    assert again["teacher_cache"]["hit"] is True
    assert again["cached"] == "all" and again["rows_per_second"] is None
    assert "rows/s" not in out and "cached: every logit read from the disk cache" in out

    both = eval_teacher(tmp_path, [a, b], *cache, name="both")
    out = capsys.readouterr().out
    ran = [r for r in both["teacher_cache"]["members"] if not r["hit"]]
    assert both["cached"] == "1 of 2 members" and len(ran) == 1
    assert both["computed_s"] == pytest.approx(ran[0]["time_s"]) and both["computed_s"] > 0
    assert both["rows_per_second"] == pytest.approx(both["rows"] / ran[0]["time_s"])
    assert f"1 of 2 members cached; the members that ran: {both['rows_per_second']:.1f}" in out


def test_prompt_ensemble_of_one_llm(tmp_path, workdir, tiny_models):
    """Repeated --prompt-template: one member per template, one model in memory; identical
    templates give the single teacher's accuracy (the combining rule, end to end)."""
    lm = str(tiny_models["qwen_lm"])
    t1, t2 = "Text: {text}\nCategory:", "{text}\nTopic ({labels}):"
    two = eval_teacher(tmp_path, [lm], "--prompt-template", t1, "--prompt-template", t2)
    assert len(two["members"]) == 3
    assert [m["settings"]["template"] for m in two["settings"]["members"]] == [t1, t2]
    same = eval_teacher(
        tmp_path, [lm], "--prompt-template", t1, "--prompt-template", t1, name="same"
    )
    single = eval_teacher(tmp_path, [lm], "--prompt-template", t1, name="single")
    assert same["accuracy"] == pytest.approx(single["accuracy"])
    assert same["loss"] == pytest.approx(single["loss"], rel=1e-4)
    argv = ["eval-teacher", "--teacher-model", lm, "--dataset", "toy", "--teacher-weights", "1"]
    assert main([*argv, "--prompt-template", t1, "--prompt-template", t2]) == 2


def test_distill_from_an_ensemble_online_and_cached(
    tmp_path, workdir, tiny_models, trained_teacher
):
    """history.json reports each member and the ensemble; online (each member tokenises the
    batch's text itself) and cached teacher numbers agree."""
    base = [
        "distill",
        "--dataset",
        "toy",
        "--teacher-model",
        str(trained_teacher),
        "--teacher-model",
        str(tiny_models["qwen_lm"]),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
    ]
    histories = []
    for mode in ("off", "memory"):
        out = tmp_path / f"runs-{mode}"
        assert main([*base, "--teacher-cache", mode, "--output-dir", str(out)]) == 0
        run = next(out.iterdir())
        config = json.loads((run / "config.json").read_text())
        assert config["teacher"]["mode"] == "ensemble"
        assert len(config["teacher"]["settings"]["members"]) == 2
        histories.append(json.loads((run / "history.json").read_text()))
    online, cached = histories
    for h in histories:
        assert [m["member"] for m in h["teacher"]["members"]][-1] == "ensemble"
        assert h["teacher"]["members"][-1]["accuracy"] == pytest.approx(
            h["teacher"]["val_accuracy"]
        )
    assert len(cached["teacher_cache"]["members"]) == 2
    assert online["teacher"]["val_accuracy"] == pytest.approx(cached["teacher"]["val_accuracy"])
    assert online["epochs"][0]["train_kl"] == pytest.approx(
        cached["epochs"][0]["train_kl"], rel=1e-3
    )
