"""Which student layer learns from which teacher layer: `--layer-map`.

Layers are named as `--student-layers` names them: transformer blocks counted from 0, negative
indices from the end (-1 = the last block), and `emb` for the embeddings. A pair `s:t` matches
the output of student block s with the output of teacher block t; with output_hidden_states
that is hidden_states[s + 1] and hidden_states[t + 1] (hidden_states[0] is the embeddings).
"""

from __future__ import annotations

from kdistill.errors import KdistillError

FLAG = "--layer-map"
EMBEDDINGS = "emb"
# A layer as hidden_states indexes it: 0 = embeddings, i = output of block i - 1.
LayerPair = tuple[int, int]


def _index(part: str, prefix: str, total: int, shown: str) -> int:
    """One side of a pair as a hidden_states index (0 = embeddings)."""
    text = part.strip().lower().removeprefix(prefix)
    if text in (EMBEDDINGS, "e"):
        return 0
    try:
        block = int(text)
    except ValueError:
        raise KdistillError(
            f"{FLAG} {shown!r}: {part.strip()!r} is not a layer; use block indices or emb, "
            "e.g. emb:emb,0:0,1:5"
        ) from None
    if not -total <= block < total:
        side = "student" if prefix == "s" else "teacher"
        raise KdistillError(
            f"{FLAG} {shown!r}: {side} block {block} is out of range (the {side} has {total} "
            f"blocks: {-total}..{total - 1})"
        )
    return block % total + 1


def parse_layer_map(value: str, student_blocks: int, teacher_blocks: int) -> list[LayerPair]:
    """'s0:t0,s1:t5' (or '0:0,1:5', 'emb:emb,...') -> [(1, 1), (2, 6)] as hidden_states
    indices, in student order. Each student layer may appear once."""
    shown = " ".join(value.split())
    pairs: list[LayerPair] = []
    for item in value.split(","):
        if not item.strip():
            continue
        if item.count(":") != 1:
            raise KdistillError(
                f"{FLAG} {shown!r}: {item.strip()!r} is not a student:teacher pair; use auto or "
                "pairs such as s0:t0,s1:t5"
            )
        s, t = item.split(":")
        pairs.append((_index(s, "s", student_blocks, shown), _index(t, "t", teacher_blocks, shown)))
    if not pairs:
        raise KdistillError(f"{FLAG} {shown!r}: no pairs; use auto or pairs such as s0:t0,s1:t5")
    students = [s for s, _ in pairs]
    if len(set(students)) != len(students):
        raise KdistillError(f"{FLAG} {shown!r}: a student layer appears twice")
    return sorted(pairs)


def auto_layer_map(
    student_blocks: int,
    teacher_blocks: int,
    cut_from: list[int] | None = None,
    source_blocks: int | None = None,
) -> list[LayerPair]:
    """The default map, embeddings to embeddings first.

    A student cut from a pretrained model (`--student-layers 0,5`, `cut_from` = [0, 5] of the
    `source_blocks` it had) maps each kept block to the block it was cut from: the teacher's
    block 5 is where the student's block 1 started. When the teacher is deeper or shallower
    than the model the student was cut from, the positions are scaled to the teacher's depth
    (round(b * (T - 1) / (S - 1))), so first stays first and last stays last.

    Any other student maps uniformly (TinyBERT): student block i (of M) to teacher block
    ceil((i + 1) * N / M) - 1 (of N), so the last block maps to the last.
    """
    pairs: list[LayerPair] = [(0, 0)]
    if cut_from is not None:
        source = source_blocks or teacher_blocks
        for i, b in enumerate(cut_from):
            t = (
                b
                if source == teacher_blocks
                else round(b * (teacher_blocks - 1) / max(source - 1, 1))
            )
            pairs.append((i + 1, t + 1))
        return pairs
    for i in range(student_blocks):
        t = -(-(i + 1) * teacher_blocks // student_blocks) - 1  # ceil((i + 1) * N / M) - 1
        pairs.append((i + 1, t + 1))
    return pairs


def resolve_layer_map(
    value: str,
    student_blocks: int,
    teacher_blocks: int,
    cut_from: list[int] | None = None,
    source_blocks: int | None = None,
) -> list[LayerPair]:
    """`--layer-map`: auto (auto_layer_map) or explicit pairs (parse_layer_map)."""
    if value.strip().lower() == "auto":
        return auto_layer_map(student_blocks, teacher_blocks, cut_from, source_blocks)
    return parse_layer_map(value, student_blocks, teacher_blocks)


def format_layer_map(pairs: list[LayerPair]) -> str:
    """[(0, 0), (1, 1), (2, 6)] -> 'emb:emb,0:0,1:5': what config.json records."""

    def name(i: int) -> str:
        return EMBEDDINGS if i == 0 else str(i - 1)

    return ",".join(f"{name(s)}:{name(t)}" for s, t in pairs)
