"""The AN4 finishing step's wall-time accounting for members trained side by side."""

from __future__ import annotations

import pytest

from training.recipes.finish_an4 import training_wall_time_s


def test_overlapping_runs_count_once_and_separate_runs_add_up() -> None:
    members = [
        {"published_at": "2026-11-26T10:40:00+00:00", "wall_time_s": 2100.0},  # alone
        {"published_at": "2026-11-26T17:33:00+00:00", "wall_time_s": 3600.0},  # three side by side,
        {"published_at": "2026-11-26T17:33:10+00:00", "wall_time_s": 3605.0},  # ending within 10 s
        {"published_at": "2026-11-26T17:33:05+00:00", "wall_time_s": 3590.0},
    ]
    assert training_wall_time_s(members) == pytest.approx(2100.0 + 3610.0)
    assert training_wall_time_s(members[:1]) == 2100.0
    back_to_back = [{"published_at": "2026-11-26T10:00:00+00:00", "wall_time_s": 600.0},
                    {"published_at": "2026-11-26T10:10:00+00:00", "wall_time_s": 600.0}]
    assert training_wall_time_s(back_to_back) == 1200.0
