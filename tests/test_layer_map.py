import pytest

from kdistill.errors import KdistillError
from kdistill.training.layer_map import format_layer_map, parse_layer_map, resolve_layer_map


def test_explicit_pairs_in_both_spellings():
    assert parse_layer_map("s0:t0,s1:t5", 2, 6) == [(1, 1), (2, 6)]
    assert parse_layer_map("1:5, 0:0", 2, 6) == [(1, 1), (2, 6)]
    assert parse_layer_map("emb:emb,-1:-1", 2, 6) == [(0, 0), (2, 6)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s0:t6", "teacher block 6 is out of range"),
        ("s2:t0", "student block 2 is out of range"),
        ("0-1", "not a student:teacher pair"),
        ("x:1", "not a layer"),
        ("0:0,0:1", "appears twice"),
        (" , ", "no pairs"),
    ],
)
def test_bad_maps_name_the_flag(value, message):
    with pytest.raises(KdistillError, match=message) as e:
        parse_layer_map(value, 2, 6)
    assert str(e.value).startswith("--layer-map") and "\n" not in str(e.value)


def test_auto_cut_student_maps_to_the_layers_it_was_cut_from():
    """--student-layers 0,5 of a 6-layer model, taught by a 6-layer teacher."""
    pairs = resolve_layer_map("auto", 2, 6, cut_from=[0, 5], source_blocks=6)
    assert pairs == [(0, 0), (1, 1), (2, 6)]
    assert format_layer_map(pairs) == "emb:emb,0:0,1:5"
    # Cut from a 6-layer model, taught by a 12-layer one: positions scaled, last to last.
    assert resolve_layer_map("auto", 2, 12, [0, 5], 6) == [(0, 0), (1, 1), (2, 12)]


@pytest.mark.parametrize(
    ("m", "n", "expected"),
    [
        (2, 6, "emb:emb,0:2,1:5"),
        (4, 12, "emb:emb,0:2,1:5,2:8,3:11"),
        (2, 2, "emb:emb,0:0,1:1"),
        (3, 2, "emb:emb,0:0,1:1,2:1"),
    ],
)
def test_auto_uniform(m, n, expected):
    """TinyBERT's uniform map: embeddings to embeddings, last block to last block."""
    assert format_layer_map(resolve_layer_map("auto", m, n)) == expected


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"temperature": "hot"}, "--temperature"),
        ({"temperature": 0}, "--temperature"),
        ({"hidden_loss": "l1"}, "--hidden-loss"),
        ({"attention_loss": "maps"}, "--attention-loss"),
        ({"teacher_calibration": "on"}, "--teacher-calibration"),
        ({"hidden_weight": -1.0}, "--hidden-weight"),
        ({"attention_weight": -0.5}, "--attention-weight"),
        ({"layer_map": "0-1"}, "--layer-map"),
        ({"alpha": 0.0, "hidden_loss": "mse"}, "--hidden-loss"),
        ({"temperature": "auto", "seeds": "1,2"}, "--temperature"),
    ],
)
def test_config_refuses_bad_values_in_one_line(kwargs, flag):
    from kdistill.config import DistillConfig

    with pytest.raises(KdistillError) as e:
        DistillConfig(**kwargs)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_config_temperature_accepts_auto_and_numbers():
    from kdistill.config import DistillConfig

    assert DistillConfig(temperature="auto").temperature == "auto"
    assert DistillConfig(temperature="2.5").temperature == 2.5
    assert not DistillConfig().uses_intermediate()
    assert DistillConfig(hidden_loss="cosine").uses_intermediate()
    assert not DistillConfig(hidden_loss="cosine", hidden_weight=0.0).uses_intermediate()
