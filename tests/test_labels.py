"""Class names match by one rule (data.labels) in every command: exactly, else uniquely by a
Unicode-aware loose key; an ambiguous loose match is refused, never guessed."""

import json

import pytest

from kdistill.data.labels import map_labels
from kdistill.errors import KdistillError
from kdistill.evaluation.candidates import Candidate, check_labels

RUSSIAN = {0: "Спорт", 1: "Политика", 2: "Экономика"}


def test_loose_key_keeps_letters_of_every_script():
    from kdistill.data.labels import loose_key

    assert loose_key("Educational Institution") == loose_key("EducationalInstitution")
    assert loose_key("Спорт") == loose_key("спорт") == "спорт"
    assert loose_key("Sci/Tech") == "scitech"
    assert loose_key("ＡＢＣ") == "abc"  # full-width folds (NFKC)
    assert loose_key("STRASSE") == loose_key("Straße")  # casefold, not lower
    # Devanagari vowel signs are marks, part of the word: dropping them would merge words.
    assert loose_key("कि") != loose_key("क")
    assert len({loose_key(n) for n in ("体育", "政治", "经济", "رياضة", "سياسة")}) == 5


def test_cyrillic_classes_find_their_own_teacher_column():
    # The old ASCII-only rule turned every name into "", so спорт got Экономика's logit.
    assert map_labels(RUSSIAN, ["спорт", "Политика"], "--teacher-model") == [0, 1]
    chinese = {0: "体育", 1: "政治", 2: "经济"}
    assert map_labels(chinese, ["经济", "体育"], "--teacher-model") == [2, 0]


def test_cyrillic_class_the_teacher_lacks_is_reported_missing():
    with pytest.raises(KdistillError, match="missing from the teacher: Наука"):
        map_labels(RUSSIAN, ["Спорт", "Наука"], "--teacher-model")


def test_exact_match_wins_over_a_loose_one():
    teacher = {0: "SciTech", 1: "Sci/Tech", 2: "World"}
    assert map_labels(teacher, ["Sci/Tech", "World"], "--teacher-model") == [1, 2]
    assert map_labels(teacher, ["SciTech", "Sci/Tech"], "--teacher-model") == [0, 1]


def test_a_class_loosely_matching_two_teacher_labels_is_refused():
    teacher = {0: "Sci/Tech", 1: "SciTech", 2: "World"}
    with pytest.raises(KdistillError) as e:
        map_labels(teacher, ["sci-tech", "World"], "--teacher-model")
    msg = str(e.value)
    assert "\n" not in msg and "'Sci/Tech'" in msg and "'SciTech'" in msg


def test_two_classes_loosely_matching_one_teacher_label_are_refused():
    with pytest.raises(KdistillError) as e:
        map_labels({0: "SciTech", 1: "World"}, ["Sci/Tech", "Sci-Tech", "World"], "--x")
    assert "'Sci/Tech' and 'Sci-Tech' both match the label 'SciTech'" in str(e.value)


def test_names_without_letters_match_only_exactly():
    from kdistill.data.labels import match_names

    assert match_names(["+", "-"], ["-", "+"], "--x") == [1, 0]
    assert match_names(["+", "-"], ["?"], "--x") == [None]


def test_symbols_other_than_word_separators_are_part_of_the_name():
    """The old key kept only letters and digits, so C# took C++'s logit, silently."""
    from kdistill.data.labels import loose_key, match_names

    with pytest.raises(KdistillError, match="missing from the teacher: C#; teacher-only: C\\+\\+"):
        map_labels({0: "C++", 1: "Java"}, ["C#", "Java"], "--teacher-model")
    assert match_names(["C++", "C#", "R&D"], ["c#", "c++", "r&d"], "--x") == [1, 0, 2]
    assert match_names(["RD"], ["R&D"], "--x") == [None]
    assert loose_key("C #") == loose_key("c#") != loose_key("C++")


def test_case_spaces_and_word_separators_are_ignored():
    from kdistill.data.labels import loose_key

    spellings = [
        "Educational Institution",
        "educational_institution",
        "Educational-Institution",
        "educational.institution",
        "Educational/Institution",
        "EDUCATIONAL–INSTITUTION",  # an en dash is a dash too
        "EducationalInstitution",
    ]
    assert len({loose_key(s) for s in spellings}) == 1
    teacher = {0: "Film", 1: "educational_institution"}
    assert map_labels(teacher, ["Educational Institution", "film"], "--teacher-model") == [1, 0]


def test_sci_tech_spellings_stay_ambiguous_under_the_narrower_key():
    from kdistill.data.labels import loose_key

    assert loose_key("Sci/Tech") == loose_key("SciTech") == loose_key("sci-tech") == "scitech"
    with pytest.raises(KdistillError, match="matches both 'Sci/Tech' and 'SciTech'"):
        map_labels({0: "Sci/Tech", 1: "SciTech"}, ["Sci Tech"], "--teacher-model")


def _student(tmp_path, labels: list[str]) -> Candidate:
    folder = tmp_path / "student"
    folder.mkdir()
    config = {"id2label": {str(i): n for i, n in enumerate(labels)}}
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False))
    return Candidate("student", "--student-model", str(folder), folder)


def test_compare_refuses_a_student_over_other_cyrillic_classes(tmp_path):
    # The old rule saw {""} on both sides and let the student be scored on classes it lacks.
    student = _student(tmp_path, ["Спорт", "Политика", "Экономика"])
    with pytest.raises(KdistillError, match="missing: Наука; extra: Экономика"):
        check_labels(student, ["Спорт", "Политика", "Наука"])
    check_labels(student, ["экономика", "спорт", "политика"])  # same classes, other case: fine


def test_compare_refuses_an_ambiguous_student_label(tmp_path):
    student = _student(tmp_path, ["Sci/Tech", "SciTech", "World"])
    with pytest.raises(KdistillError, match="matches both 'Sci/Tech' and 'SciTech'"):
        check_labels(student, ["Sci-Tech", "World", "Sports"])
