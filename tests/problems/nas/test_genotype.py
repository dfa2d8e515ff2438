from __future__ import annotations

import pydantic
import pytest
import torch

from problems.nas import DARTS_V2, PRIMITIVES, Genotype, derive_genotype, genotype_from
from problems.nas.genotype import GenotypeError
from problems.nas.search_space import edges_per_cell


def hand_set_weights(choices: dict[int, dict[str, float]]) -> torch.Tensor:
    """Uniform small weights, with the listed (edge, op) entries raised."""
    w = torch.full((edges_per_cell(), len(PRIMITIVES)), 0.01)
    for edge, ops in choices.items():
        for op, value in ops.items():
            w[edge, PRIMITIVES.index(op)] = value
    return w


def test_derivation_keeps_top_two_edges_by_strongest_non_none_op():
    # Edge layout: node 0 ← edges 0-1, node 1 ← 2-4, node 2 ← 5-8, node 3 ← 9-13.
    normal = hand_set_weights(
        {
            0: {"sep_conv_3x3": 0.5},
            1: {"none": 0.9, "skip_connect": 0.3},  # 'none' is ignored
            2: {"max_pool_3x3": 0.2},
            3: {"dil_conv_5x5": 0.6},
            4: {"sep_conv_5x5": 0.4},
            5: {"avg_pool_3x3": 0.1},
            6: {"skip_connect": 0.7},
            7: {"none": 0.99},
            8: {"sep_conv_3x3": 0.3},
            9: {"dil_conv_3x3": 0.8},
            10: {"none": 0.5},
            11: {"sep_conv_5x5": 0.2},
            12: {"max_pool_3x3": 0.25},
            13: {"skip_connect": 0.05},
        }
    )
    reduce = hand_set_weights({0: {"max_pool_3x3": 0.9}, 1: {"avg_pool_3x3": 0.8}})
    genotype = derive_genotype(normal, reduce)
    assert genotype.normal == [
        ("sep_conv_3x3", 0),
        ("skip_connect", 1),
        ("dil_conv_5x5", 1),
        ("sep_conv_5x5", 2),
        ("skip_connect", 1),
        ("sep_conv_3x3", 3),
        ("dil_conv_3x3", 0),
        ("max_pool_3x3", 3),
    ]
    assert genotype.reduce[:2] == [("max_pool_3x3", 0), ("avg_pool_3x3", 1)]
    assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4, 5]


def test_genotype_json_round_trip(tmp_path):
    DARTS_V2.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == DARTS_V2
    assert genotype_from(str(tmp_path / "g.json")) == DARTS_V2


def test_published_genotype_by_name():
    assert genotype_from("DARTS_V2") is DARTS_V2


@pytest.mark.parametrize(
    "bad",
    [
        {"normal": [["conv_7x7", 0], ["skip_connect", 1]]},
        {"normal": [["skip_connect", 0], ["skip_connect", 2]]},  # node 0 cannot read node 0
        {"normal_concat": [2, 9]},
    ],
)
def test_invalid_genotype_is_refused(bad):
    data = {**DARTS_V2.model_dump(), **bad}
    with pytest.raises(pydantic.ValidationError):
        Genotype.model_validate(data)


def test_unknown_genotype_name_or_missing_file():
    with pytest.raises(GenotypeError, match="neither a file nor a known name"):
        genotype_from("NOT_A_GENOTYPE")


def test_the_summary_table_names_inputs_as_the_cell_picture_does():
    from problems.nas.genotype import DARTS_V2, input_name
    from problems.nas.summary import genotype_rows

    assert [input_name(i) for i in range(4)] == ["c_{k-2}", "c_{k-1}", "node 0", "node 1"]
    rows = genotype_rows(DARTS_V2)
    # DARTS_V2's normal node 3 reads intermediate node 0 (DARTS index 2) by dil_conv_3x3
    assert rows["normal cell"].endswith("node 3: skip_connect←c_{k-2}, dil_conv_3x3←node 0")
    assert "←2" not in rows["normal cell"] and "←3" not in rows["reduction cell"]


def test_alphas_that_have_not_moved_from_uniform_are_said_not_to_have_separated(tmp_path):
    from problems.nas.plots import SEPARATED, plot_alpha_evolution, separation_note

    still = torch.full((3, 14, 8), 1 / 8)
    still[:, 0, 0] += SEPARATED / 2
    note = separation_note(still, still)
    assert note is not None and "not separated" in note and "0.0050" in note
    moved = still.clone()
    moved[-1, 5, 3] += SEPARATED
    assert separation_note(still, moved) is None
    for case in (still, moved):
        path = plot_alpha_evolution([0, 1, 2], list(case), list(case), tmp_path / "a.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
