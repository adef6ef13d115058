import pytest
import torch
from conftest import CLASSES

from kdistill.data.labels import map_labels
from kdistill.errors import KdistillError
from kdistill.students.load import load_student
from kdistill.teachers.classifier import ClassifierTeacher, load_teacher_classifier


def test_map_labels_reorders_by_name():
    teacher = {0: "Film", 1: "Company", 2: "Building", 3: "Animal"}
    assert map_labels(teacher, CLASSES, "--teacher-model") == [3, 2, 1, 0]


def test_map_labels_ignores_case_spacing_and_extra_teacher_classes():
    teacher = {0: "educational institution", 1: "ANIMAL", 2: "Village"}
    assert map_labels(teacher, ["Animal", "EducationalInstitution"], "--teacher-model") == [1, 0]


def test_map_labels_lists_the_differences():
    with pytest.raises(KdistillError) as e:
        map_labels({0: "Animal", 1: "Plant"}, ["Animal", "Film", "Company"], "--teacher-model")
    msg = str(e.value)
    assert "missing from the teacher: Film, Company" in msg and "teacher-only: Plant" in msg


def test_map_labels_refuses_unnamed_labels():
    with pytest.raises(KdistillError, match="unnamed"):
        map_labels({0: "LABEL_0", 1: "LABEL_1"}, ["a", "b"], "--teacher-model")


def _batch(tok, texts, prefix="teacher"):
    enc = tok(texts, padding=True, return_tensors="pt")
    return {
        f"{prefix}_input_ids": enc["input_ids"],
        f"{prefix}_attention_mask": enc["attention_mask"],
    }


def test_teacher_logits_follow_the_data_sets_class_order(tiny_models):
    # The tiny BERT teacher was saved with the classes in reverse order.
    model, tok, columns = load_teacher_classifier(str(tiny_models["bert_teacher"]), CLASSES, False)
    assert [model.config.id2label[c] for c in columns] == CLASSES
    teacher = ClassifierTeacher(model, tok, columns, "t")
    batch = _batch(tok, ["a film directed by", "a species of moth"])
    raw = model(
        input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
    ).logits
    assert torch.equal(teacher.logits(batch), raw.flip(-1))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


@pytest.mark.parametrize("key", ["qwen_lm", "bert_student"])
def test_untrained_head_is_refused(tiny_models, key):
    with pytest.raises(KdistillError) as e:
        load_teacher_classifier(str(tiny_models[key]), CLASSES, allow_untrained=False)
    assert "no trained classification head for these 4 labels" in str(e.value)
    assert "--allow-untrained-teacher" in str(e.value)
    model, _, columns = load_teacher_classifier(
        str(tiny_models[key]), CLASSES, allow_untrained=True
    )
    assert model.config.num_labels == 4 and columns == [0, 1, 2, 3]


def test_missing_model_path_is_one_line():
    with pytest.raises(KdistillError, match="--teacher-model models/nope: no such folder"):
        load_teacher_classifier("models/nope", CLASSES, False)


def test_unreadable_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(KdistillError, match="--student-model .*cannot load"):
        load_student(str(tmp_path), CLASSES, 0)


def test_student_gets_a_fresh_head_named_after_the_classes(tiny_models):
    model, tok = load_student(str(tiny_models["bert_teacher"]), CLASSES, seed=0)
    assert model.config.id2label == dict(enumerate(CLASSES))
    assert model.config.label2id == {c: i for i, c in enumerate(CLASSES)}
    # The checkpoint's head was for the reversed order: it must not survive.
    from safetensors.torch import load_file

    saved = load_file(str(tiny_models["bert_teacher"] / "model.safetensors"))
    assert not torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight,
        saved["bert.embeddings.word_embeddings.weight"],
    )


@pytest.mark.parametrize("key", ["qwen_teacher", "qwen_lm"])
def test_decoder_only_pad_token_and_batched_logits_agree(tiny_models, key):
    model, tok = load_student(str(tiny_models[key]), CLASSES, seed=0)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    model.eval()
    texts = ["a film", "the company founded in the town with products and services", "bird"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        batched = model(**batch).logits
        single = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 3  # padded
    assert torch.allclose(batched, single, atol=1e-5)


def test_hub_id_without_a_network_uses_the_cache_and_fails_in_one_line(monkeypatch):
    """No network (HF_HUB_OFFLINE here): the clients go cache-only instead of retrying."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(KdistillError) as e:
        load_student("some-org/not-cached", CLASSES, seed=0)
    assert str(e.value).startswith("--student-model some-org/not-cached: cannot load it")
    assert "\n" not in str(e.value)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
