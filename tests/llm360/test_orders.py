"""Amber's seeded/file orders and K2's chunk order: step -> (position, chunk, row), against independent readings."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from checkpoints_cache.registry import resolve_run
from data_order.amber import seeded_permutation
from data_order.chunked import ChunkLayout
from data_order.k2 import expand_chunk_order, locate_batch
from data_order.mmidx import DataOrderError

from .conftest import AMBER, B, K2, amber_card_text, amber_lines, k2_batch, k2_card_text


def _layout(text: str, **changes) -> ChunkLayout:
    return ChunkLayout.from_order({**tomllib.loads(text)["data_order"], **changes}, "test card")


def test_seeded_permutation_is_the_k_plus_1th_draw_after_one_seed():
    state = np.random.get_state()
    np.random.seed(AMBER["seed"])
    draws = [np.random.permutation(1000) for _ in range(4)]
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    for k in range(4):
        assert np.array_equal(seeded_permutation(k, 1000, AMBER["seed"]), draws[k])
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's global RNG is untouched


def test_amber_rows_in_both_orders_match_the_training_codes_indexing():
    for order in ("seeded", "file"):
        layout = _layout(amber_card_text(), order=order)
        assert layout.rows_per_position == 12 and layout.order == order  # 13 // 4 * 4: one line dropped per chunk
        for step in range(AMBER["S"] * AMBER["chunks"]):
            k, j = divmod(step, AMBER["S"])
            lines = amber_lines(k, order)[B * j:B * (j + 1)]
            rows = np.arange(step * B, (step + 1) * B)
            q, chunks, got = layout.map_rows(rows)
            assert (q == k).all() and (chunks == k).all() and np.array_equal(got, lines), (order, step)
            assert np.array_equal(layout.row_ids(rows), k * AMBER["E"] + lines)
            loc = layout.locate(step)
            assert (loc["position"], loc["chunk"], loc["step_in_chunk"], loc["row"]) == (k, k, j, lines[0])
    # The seeded order never trains on the permutation's last entry; the file order never on line 12.
    used = set(_layout(amber_card_text()).lines(2).tolist())
    assert len(used) == 12 and seeded_permutation(2, 13, AMBER["seed"])[12] not in used


def test_the_real_amber_card():
    layout = ChunkLayout.from_order(resolve_run("amber").data_order, "amber")
    assert (layout.order, layout.rows_per_position, layout.total_batches) == ("seeded", 762 * 2240, 274_320)
    assert layout.filename(101) == "train/train_101.jsonl" and layout.vocab_size == 32000
    assert layout.positions_of_batches(76962, 76962 + 762) == range(101, 102)  # ckpt_100 -> chunk 101
    assert layout.positions_of_batches(76962 - 90, 76962) == range(100, 101)  # reestimate: chunk 100
    # (the file order here: the seeded one replays 102 draws of 1.7M, ~0.15 s each -- covered on the tiny card)
    loc = ChunkLayout.from_order({**resolve_run("amber").data_order, "order": "file"}).locate(76962 + 5)
    assert (loc["position"], loc["chunk"], loc["step_in_chunk"], loc["row"]) == (101, 101, 5, 5 * 2240)
    assert resolve_run("amber").revision(76962) == "ckpt_100"
    assert resolve_run("amber").step_of_revision("ckpt_012") == 9906


# Computed by hand from llm360.md §3.3: positions 0-15 = chunks 0-15; 16-21 = 32-37; 22-29 = 44-51; 30-45 = 16-31;
# 46-51 = 38-43; 52-159 = 52-159; 160-184 = 161-185; 185-357 = 187-359; 358 = 160; 359 = 186.
SPIKES = [  # (training position, chunk id)
    (15, 15), (16, 32), (21, 37), (22, 44), (29, 51), (30, 16), (45, 31), (46, 38), (51, 43), (52, 52),
    (159, 159), (160, 161),  # the first spike: training restarted at ckpt_160 with chunk 160 moved to the end
    (184, 185), (185, 187),  # the second: the chunk at position 185 (186) moved to the end
    (357, 359), (358, 160), (359, 186),
]


@pytest.mark.parametrize("position,chunk", SPIKES)
def test_k2_step_to_chunk_at_the_spike_positions(position, chunk):
    run = resolve_run("k2")
    layout = ChunkLayout.from_order(run.data_order, "k2")
    step = 941 * position  # ckpt_{position}: the first batch a branch from it trains on
    loc = locate_batch(step, layout.chunk_order, 1_919_640, 2040)
    assert (loc.position, loc.chunk, loc.row, loc.straddles) == (position, chunk, 0, False)
    last = locate_batch(step + 940, layout.chunk_order, 1_919_640, 2040)  # the position's last batch
    assert (last.position, last.chunk, last.row) == (position, chunk, 940 * 2040)
    got = layout.locate(step + 7)
    assert (got["position"], got["chunk"], got["row"], got["step_in_chunk"]) == (position, chunk, 7 * 2040, 7)
    assert layout.filename(chunk) == f"chunk_{chunk}.jsonl"
    if position:
        assert run.revision(step) == f"ckpt_{position}"


def test_k2_card_and_order_validation():
    order = resolve_run("k2").data_order
    assert expand_chunk_order(order["chunk_order"], 360) == ChunkLayout.from_order(order).chunk_order
    assert "exact if the released chunks are the shuffled files" in order["exactness"]
    with pytest.raises(DataOrderError, match="chunk 3 appears twice"):
        expand_chunk_order([[0, 3], 3], 4)
    with pytest.raises(DataOrderError, match=r"chunks \[3\] are missing"):
        expand_chunk_order([[0, 2]], 4)
    with pytest.raises(DataOrderError, match="beyond K2's data"):
        locate_batch(941 * 360, expand_chunk_order(order["chunk_order"]), 1_919_640, 2040)


def test_k2_tiny_is_the_concatenation_in_chunk_order():
    layout = _layout(k2_card_text())
    for step in range(K2["S"] * K2["chunks"]):
        _, ids = k2_batch(step)
        assert np.array_equal(layout.row_ids(np.arange(step * B, (step + 1) * B)), ids), step


@pytest.mark.parametrize("changes,message", [
    ({"steps_per_chunk": 4}, "steps_per_chunk = 4 .* disagrees with examples_per_chunk // batch_size = 13 // 4 = 3"),
    ({"order": "sequential"}, "order 'sequential' does not apply to amber-chunks data"),
    ({"seed_base": None}, "lacks 'seed_base'"),
    ({"chunk_file": "train/train.jsonl"}, "give the path of chunk k in the repo with a {k} field"),
    ({"examples_per_chunk": 0}, r"examples_per_chunk = 0 .*: use an integer >= 1"),
])
def test_bad_cards_are_one_line(changes, message):
    with pytest.raises(DataOrderError, match=message) as e:
        _layout(amber_card_text(), **changes)
    assert "\n" not in str(e.value)
