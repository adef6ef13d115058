"""Students cut from pretrained models: which layers are kept, that the cut model computes exactly
what the original's embeddings followed by only the kept blocks compute, and that the result
saves and reloads as an ordinary, self-consistent checkpoint (KV cache included)."""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.students.layers import keep_layers, layer_stack, resolve_layers

# ---------------------------------------------------------------------------------------------
# resolve_layers


@pytest.mark.parametrize(
    ("layers", "num", "total", "expected"),
    [
        ("0,5", None, 6, [0, 5]),
        ("-1,0", None, 6, [0, 5]),
        (" 3 , 1 ", None, 6, [1, 3]),
        (None, 2, 6, [0, 5]),
        (None, 6, 6, [0, 1, 2, 3, 4, 5]),
        (None, 3, 6, [0, 3, 5]),
        (None, 3, 12, [0, 6, 11]),
        (None, 4, 12, [0, 4, 7, 11]),
        (None, 1, 6, [0]),
        (None, None, 6, None),
    ],
)
def test_resolve_layers(layers: str | None, num: int | None, total: int, expected: Any) -> None:
    assert resolve_layers(layers, num, total) == expected


def test_num_layers_rule_is_even_and_keeps_both_ends() -> None:
    for total in range(1, 30):
        for n in range(2, total + 1):
            kept = resolve_layers(None, n, total)
            assert kept is not None and len(set(kept)) == n and kept == sorted(kept)
            assert kept[0] == 0 and kept[-1] == total - 1
            gaps = [b - a for a, b in pairwise(kept)]
            assert max(gaps) - min(gaps) <= 1, (total, n, kept)


@pytest.mark.parametrize(
    ("layers", "num", "flag"),
    [
        ("0,5", 2, "--student-num-layers"),  # both given
        ("0,6", None, "--student-layers"),  # past the last
        ("-7", None, "--student-layers"),  # before the first
        ("0,0", None, "--student-layers"),  # duplicate
        ("5,-1", None, "--student-layers"),  # the same layer twice, spelled two ways
        ("", None, "--student-layers"),
        (" , ", None, "--student-layers"),
        ("0,,5", None, "--student-layers"),
        ("a,1", None, "--student-layers"),
        ("1.5", None, "--student-layers"),
        ("0\n5", None, "--student-layers"),  # a newline in the value stays off the message
        (None, 0, "--student-num-layers"),
        (None, -1, "--student-num-layers"),
        (None, 7, "--student-num-layers"),
    ],
)
def test_resolve_layers_errors(layers: str | None, num: int | None, flag: str) -> None:
    with pytest.raises(KdistillError) as info:
        resolve_layers(layers, num, 6)
    message = str(info.value)
    assert "\n" not in message
    assert flag in message
    assert "6" in message or "both" in message  # the allowed range, or why


# ---------------------------------------------------------------------------------------------
# tiny models built from configs (random weights; eager attention so hand runs match exactly)

VOCAB = 120


def tiny_bert(num_layers: int, seed: int = 0) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval()


def qwen2_config(num_layers: int, **extra: Any) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        attn_implementation="eager",
        **extra,
    )


def tiny_qwen2(num_layers: int, seed: int = 0, **extra: Any) -> Any:
    from transformers import Qwen2ForSequenceClassification

    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(qwen2_config(num_layers, num_labels=3, **extra)).eval()


def batch(seed: int = 0, length: int = 9, vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of token ids (never 0, the pad id), the second right-padded by 3."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2, length), generator=g)
    mask = torch.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = 0, 0
    return ids, mask


def bert_by_hand(bert: Any, ids: torch.Tensor, mask: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """BertModel.forward reduced to what matters: embeddings, an additive padding mask over the
    keys (what the eager attention adds to its scores), then only the kept blocks in order."""
    hidden = bert.embeddings(input_ids=ids)
    additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    for i in kept:
        hidden = bert.encoder.layer[i](hidden, additive)
    return hidden  # (batch, seq, hidden)


def decoder_by_hand(base: Any, ids: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Qwen2Model.forward without padding: token embeddings, rotary (cos, sin) for positions
    0..n-1, an additive causal mask, the kept blocks in order, the final RMSNorm."""
    hidden = base.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rotary = base.rotary_emb(hidden, positions)
    n = ids.shape[1]
    causal = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)[None, None]
    for i in kept:
        hidden = base.layers[i](
            hidden, attention_mask=causal, position_embeddings=rotary, position_ids=positions
        )
    return base.norm(hidden)  # (batch, seq, hidden)


def cut(model: Any, kept: list[int]) -> Any:
    """A cut copy; the original stays whole for the reference computation."""
    student = copy.deepcopy(model)
    keep_layers(student, kept)
    return student.eval()


# ---------------------------------------------------------------------------------------------
# the cut model computes embeddings -> kept blocks


@torch.no_grad()
def test_bert_middle_layers_dropped_matches_hand_run() -> None:
    teacher = tiny_bert(4)
    ids, mask = batch()
    student = cut(teacher, [0, 3])  # layers 1 and 2 gone

    stack, attr = layer_stack(student)
    assert attr == "num_hidden_layers" and len(stack) == 2
    assert student.config.num_hidden_layers == 2
    assert stack[1] is not teacher.bert.encoder.layer[3]  # a copy, the teacher is untouched
    assert len(teacher.bert.encoder.layer) == 4 and teacher.config.num_hidden_layers == 4

    got = student.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, bert_by_hand(teacher.bert, ids, mask, [0, 3]))
    # The cut really changed the function: the full model gives something else.
    full = teacher.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(got, full, atol=1e-3)


@torch.no_grad()
def test_bert_prefix_equals_original_hidden_state() -> None:
    """An independent reference: keeping layers 0..k-1 of an encoder with no final norm is the
    original's k-th hidden state, as the model itself reports it."""
    teacher = tiny_bert(4, seed=1)
    ids, mask = batch(seed=1)
    student = cut(teacher, [0, 1])
    states = teacher.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    got = student.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, states.hidden_states[2])


@torch.no_grad()
def test_qwen2_middle_layers_dropped_matches_hand_run() -> None:
    teacher = tiny_qwen2(4, seed=2)
    ids, _ = batch(seed=2)
    ids = ids[:1].clone()  # one unpadded row: the hand run has no padding mask
    student = cut(teacher, [0, 2])  # layers 1 and 3 gone

    hand = decoder_by_hand(teacher.model, ids, [0, 2])
    torch.testing.assert_close(student.model(input_ids=ids).last_hidden_state, hand)
    # The head pools the last (non-pad) token.
    torch.testing.assert_close(student(input_ids=ids).logits, teacher.score(hand[:, -1]))

    # Second reference: layers 0..1 kept = the original's hidden state 2, then the final norm.
    prefix = cut(teacher, [0, 1])
    states = teacher.model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(
        prefix.model(input_ids=ids).last_hidden_state, teacher.model.norm(states[2])
    )


@pytest.mark.slow
@torch.no_grad()
def test_minilm_num_layers_matches_hand_run(minilm_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    teacher = AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    kept = resolve_layers(None, 3, teacher.config.num_hidden_layers)
    assert kept == [0, 3, 5]
    student = cut(teacher, kept)
    assert student.config.num_hidden_layers == 3 and len(layer_stack(student)[0]) == 3

    texts = ["The Eiffel Tower is a wrought-iron lattice tower in Paris.", "A small moth."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    assert not enc["attention_mask"].all()  # the padding mask is exercised
    got = student(**enc).last_hidden_state
    torch.testing.assert_close(
        got, bert_by_hand(teacher, enc["input_ids"], enc["attention_mask"], kept)
    )


# ---------------------------------------------------------------------------------------------
# save, reload, same outputs


def tiny_distilbert(num_layers: int) -> Any:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(3)
    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=num_layers,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        num_labels=3,
        attn_implementation="eager",
    )
    return DistilBertForSequenceClassification(config).eval()


def encoder_family(kind: str) -> Any:
    """3-layer RoBERTa / XLM-R / ELECTRA classifiers: the BERT layout under other names."""
    import transformers

    config_class, model_class = {
        "roberta": ("RobertaConfig", "RobertaForSequenceClassification"),
        "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification"),
        "electra": ("ElectraConfig", "ElectraForSequenceClassification"),
    }[kind]
    torch.manual_seed(4)
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=70,
        num_labels=3,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return getattr(transformers, model_class)(config).eval()


def from_fixture(path: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager")
    # The tiny Qwen2 ships without a pad id; its head refuses batches of two without one.
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    return model.eval()


@pytest.mark.parametrize(
    ("source", "kept", "count_attr"),
    [
        ("bert_teacher", [1], "num_hidden_layers"),  # conftest, 2 layers: drop the first
        ("qwen_teacher", [1], "num_hidden_layers"),
        ("distilbert", [0, 2], "n_layers"),
        ("roberta", [0, 2], "num_hidden_layers"),
        ("xlm-roberta", [1, 2], "num_hidden_layers"),
        ("electra", [0, 2], "num_hidden_layers"),
    ],
)
def test_save_and_reload(
    source: str, kept: list[int], count_attr: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    if source in tiny_models:
        model = from_fixture(tiny_models[source])
    elif source == "distilbert":
        model = tiny_distilbert(3)
    else:
        model = encoder_family(source)
    assert layer_stack(model)[1] == count_attr
    keep_layers(model, kept)
    assert getattr(model.config, count_attr) == len(kept)
    if source == "distilbert":
        assert model.distilbert.transformer.n_layers == len(kept)

    ids, mask = batch(seed=5, vocab=model.config.vocab_size)  # the toy BERTs' is their own
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert reloaded.config.num_hidden_layers == len(kept)
    assert len(layer_stack(reloaded)[0]) == len(kept)
    with torch.no_grad():
        after = reloaded.eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# decoder configs stay self-consistent; the KV cache works after renumbering


def test_qwen2_layer_types_window_and_layer_idx(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(6)
    # Layers 2 and 3 slide (window 4): a cut keeping 0 and 3 keeps one of each.
    config = qwen2_config(4, use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    model = Qwen2ForCausalLM(config).eval()
    keep_layers(model, [0, 3])

    assert model.config.num_hidden_layers == 2
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert model.config.max_window_layers == 1
    model.config.validate()  # what from_pretrained checks: one layer type per layer
    # Rebuilding layer_types from max_window_layers (what a config without them does) agrees.
    rebuilt = Qwen2Config.from_dict({**model.config.to_dict(), "layer_types": None})
    assert rebuilt.layer_types == model.config.layer_types
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, 4]
    assert model.model.has_sliding_layers

    # Incremental decoding through the cache equals one full forward: the cache has one slot
    # per kept layer and each block writes to its own (a stale layer_idx 3 would not fit).
    ids = torch.randint(1, VOCAB, (1, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        first = model(input_ids=ids[:, :-1], use_cache=True)
        assert len(first.cache.layers) == 2
        step = model(input_ids=ids[:, -1:], cache=first.cache, use_cache=True).logits[:, -1]
        torch.testing.assert_close(step, full)
        cached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert cached.shape == (1, 13) and torch.equal(cached, uncached)

    # The saved config reloads as the same 2-layer hybrid.
    model.save_pretrained(tmp_path)
    reloaded, info = Qwen2ForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert reloaded.config.layer_types == ["full_attention", "sliding_attention"]
    assert reloaded.config.max_window_layers == 1


def test_qwen2_dropping_all_sliding_layers() -> None:
    model = tiny_qwen2(4, seed=7, use_sliding_window=True, sliding_window=4, max_window_layers=2)
    keep_layers(model, [0, 1])
    assert model.config.layer_types == ["full_attention", "full_attention"]
    assert model.config.max_window_layers == 2
    assert not model.model.has_sliding_layers


@pytest.mark.parametrize("kind", ["qwen3", "llama", "mistral", "gemma"])
def test_other_decoders_cut_and_cache(kind: str, tmp_path: Path) -> None:
    """The other supported decoder-only families: the stack is found, layer_idx renumbered, the
    cache works and the checkpoint reloads cleanly."""
    import transformers

    config_class, model_class = {
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    }[kind]
    torch.manual_seed(8)
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model = getattr(transformers, model_class)(config).eval()
    keep_layers(model, [0, 2])
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 2

    ids = torch.randint(1, VOCAB, (1, 7), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        first = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], cache=first.cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full)

    model.save_pretrained(tmp_path)
    _, info = getattr(transformers, model_class).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


# ---------------------------------------------------------------------------------------------
# unsupported layouts and bad indices


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    )


@pytest.mark.parametrize("make", [lambda: torch.nn.Linear(4, 4), tiny_gpt2], ids=["module", "gpt2"])
def test_unsupported_layout(make: Any) -> None:
    model = make()
    for call in (lambda: layer_stack(model), lambda: keep_layers(model, [0])):
        with pytest.raises(KdistillError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "--student-layers" in message


def test_config_count_must_match_the_stack() -> None:
    """A look-alike `layers` list whose length disagrees with the config is not taken for the
    block list."""
    model = tiny_bert(2)
    model.config.num_hidden_layers = 5
    with pytest.raises(KdistillError, match="--student-layers"):
        layer_stack(model)


@pytest.mark.parametrize("kept", [[], [0, 0], [1, 0], [0, 4], [-1]])
def test_keep_layers_rejects_bad_indices(kept: list[int]) -> None:
    model = tiny_bert(4)
    with pytest.raises(KdistillError) as info:
        keep_layers(model, kept)
    assert "\n" not in str(info.value) and "0..3" in str(info.value)
    assert len(model.bert.encoder.layer) == 4  # nothing changed
