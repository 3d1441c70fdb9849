"""How many threads a forward pass gets: the setting, the CPUs a container may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flatscope.inference.runner import available_cpus, model_threads

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no quota
        ("100000 100000\n", 1),
        ("150000 100000\n", min(AFFINITY, 2)),  # 1.5 CPUs round up
        ("6400000 100000\n", AFFINITY),  # a quota above the affinity does not add CPUs
        ("1000 100000\n", 1),  # a tiny quota still leaves one
        ("garbage\n", AFFINITY),
    ],
)
def test_a_cgroup_quota_caps_the_cpus(tmp_path: Path, cpu_max: str, expected: int):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert available_cpus(path) == expected


def test_no_cgroup_file_means_the_affinity(tmp_path: Path):
    assert available_cpus(tmp_path / "absent") == AFFINITY


def test_zero_leaves_a_core_to_the_event_loop_and_a_number_is_taken_as_is():
    assert model_threads(0) == max(1, available_cpus() - 1)
    assert model_threads(3) == 3
