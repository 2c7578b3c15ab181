"""The step batch: one row per environment step, padded to the same count on every process."""

import torch

from opid_trl.rollout.episode import Episode
from opid_trl.rollout.step_rows import collect_step_rows, padded_row_count, per_row, ragged_rows, row_tensors
from opid_trl.trajectory import StepRecord

PAD, EOS = 0, 9


def episode(prompts, completions):
    ep = Episode(env=None, task_row={}, group_id=0, trajectory_id="x")
    ep.prompt_ids, ep.completion_ids = prompts, completions
    ep.steps = [StepRecord(index=i, observation="", response="") for i in range(len(prompts))]
    return ep


def test_padded_row_count_is_a_multiple_of_the_micro_steps():
    assert padded_row_count(5, 2) == 6
    assert padded_row_count(6, 2) == 6
    assert padded_row_count(0, 4) == 4  # a process with no step still hands over one row per micro-step


def test_rows_follow_episode_order_and_padding_repeats_the_first_row():
    episodes = [episode([[1, 2], [1, 2, 3]], [[5, EOS], [6]]), episode([], []), episode([[4]], [[7, 7, EOS]])]
    rows = collect_step_rows(episodes, 4, PAD)
    assert rows.locations == [(0, 0), (0, 1), (2, 0)]
    assert rows.num_real == 3 and rows.num_padding == 1 and len(rows) == 4
    assert rows.prompt_ids[3] == [1, 2] and rows.completion_ids[3] == [5, EOS]


def test_row_tensors_pad_sides_and_mask_padding_and_truncated_rows():
    rows = collect_step_rows([episode([[1, 2], [3]], [[5, EOS], [6]])], 3, PAD)
    prompt_ids, prompt_mask, completion_ids, completion_mask = row_tensors(rows, PAD, "cpu")
    assert prompt_ids.tolist() == [[1, 2], [PAD, 3], [1, 2]]  # prompts left-padded
    assert prompt_mask.tolist() == [[1, 1], [0, 1], [1, 1]]
    assert completion_ids.tolist() == [[5, EOS], [6, PAD], [5, EOS]]  # completions right-padded
    assert completion_mask.tolist() == [[1, 1], [1, 0], [0, 0]]  # the padding row carries no token
    *_, truncated_mask = row_tensors(rows, PAD, "cpu", eos_token_ids=[EOS])
    assert truncated_mask.tolist() == [[1, 1], [0, 0], [0, 0]]  # row 1 never produced EOS


def test_per_row_values_and_ragged_rows():
    rows = collect_step_rows([episode([[1], [1]], [[2], [3]]), episode([[1]], [[4]])], 4, PAD)
    assert per_row([[0.5, -0.5], [2.0]], rows, "cpu").tolist() == [0.5, -0.5, 2.0, 0.0]
    out = ragged_rows([[1.0], [2.0, 3.0]], 3, 2, float("nan"), "cpu")
    assert out[0, 0] == 1.0 and torch.isnan(out[0, 1]) and out[1].tolist() == [2.0, 3.0]
    assert torch.isnan(out[2]).all()
