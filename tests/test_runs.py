import json
from datetime import datetime

import pytest

from kdistill.runs import atomic_dir, atomic_write_json, finish_run_dir, new_run_dir


def test_atomic_write_json_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "best_model"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("crash mid-save")
    assert (target / "w").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["best_model"]


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "m"
    for text in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text(text)
    assert (target / "w").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_run_dirs_never_collide(tmp_path):
    now = datetime(2026, 1, 31, 13, 50, 45)
    final1, partial1 = new_run_dir(tmp_path, "dbpedia_T3.0_A0.7", now)
    final2, partial2 = new_run_dir(tmp_path, "dbpedia_T3.0_A0.7", now)
    assert final1.name == "dbpedia_T3.0_A0.7_20260131_135045"
    assert final2.name == "dbpedia_T3.0_A0.7_20260131_135045_2"
    assert partial1.is_dir() and partial1.name.endswith(".partial")
    finish_run_dir(partial1, final1)
    final3, _ = new_run_dir(tmp_path, "dbpedia_T3.0_A0.7", now)
    assert final3 not in (final1, final2)
