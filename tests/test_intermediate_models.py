"""IntermediateLoss on tiny random models: hidden states and q/k/v come out of BERT and Qwen2
blocks, across widths and head counts, and gradients reach the student and the projection."""

import pytest
import torch

from kdistill.config import DistillConfig
from kdistill.errors import KdistillError
from kdistill.training.intermediate import IntermediateLoss, tokens_agree


def _bert(hidden: int, heads: int, layers: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def _qwen(hidden: int, heads: int, kv: int, layers: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=50,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
    )
    return Qwen2ForSequenceClassification(config)


class FakeTeacher:
    def __init__(self, model):
        self.model = model.eval()
        self.columns = torch.arange(model.config.num_labels)


def _batch(seq: int = 7):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (3, seq), generator=g)
    mask = (torch.arange(seq)[None] < torch.tensor([[seq], [4], [2]])).long()
    return {
        "student_input_ids": ids,
        "student_attention_mask": mask,
        "teacher_input_ids": ids,
        "teacher_attention_mask": mask,
        "labels": torch.tensor([0, 2, -100]),
    }


@pytest.mark.parametrize(
    "pair",
    [
        (lambda: _bert(32, 2, 2, 0), lambda: _bert(64, 4, 4, 1)),
        (lambda: _qwen(32, 4, 2, 2, 0), lambda: _qwen(48, 6, 3, 3, 1)),
    ],
    ids=["bert", "qwen2"],
)
def test_step_over_differing_widths_and_heads(pair):
    student, teacher = pair[0](), FakeTeacher(pair[1]())
    config = DistillConfig(hidden_loss="mse", attention_loss="relation")
    inter = IntermediateLoss(config, student, teacher.model, token_level=True)
    record = inter.describe()
    assert record["layer_map"].startswith("emb:emb,0:")
    assert record["projection_parameters"] > 0 and record["relation_heads"] >= 1
    _logits, out = inter.loss(student, teacher, _batch(), 2.0, 0.7)
    assert torch.isfinite(out.loss) and out.hidden > 0 and out.relation > 0
    out.loss.backward()
    assert all(p.grad is not None for p in inter.projection.parameters())
    assert student.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.model.parameters())
    inter.close()


def test_identical_models_give_zero_intermediate_terms():
    student = _bert(32, 2, 2, 0)
    teacher = FakeTeacher(_bert(32, 2, 2, 0))
    student.eval()  # no dropout: the same weights give the same states
    config = DistillConfig(hidden_loss="cosine", attention_loss="relation")
    inter = IntermediateLoss(config, student, teacher.model, token_level=True)
    _, out = inter.loss(student, teacher, _batch(), 2.0, 0.7)
    assert out.hidden.abs() < 1e-5 and out.relation.abs() < 1e-5
    assert not list(inter.projection.parameters())  # same width: nothing to learn or drop


def test_relation_needs_the_same_tokens():
    config = DistillConfig(attention_loss="relation")
    with pytest.raises(KdistillError, match="--attention-loss relation"):
        IntermediateLoss(config, _bert(32, 2, 2, 0), _bert(64, 4, 2, 1), token_level=False)


def test_tokens_agree():
    assert tokens_agree([[1, 2], [3]], [[1, 2], [3]])
    assert not tokens_agree([[1, 2], [3]], [[1, 2], [4]])
