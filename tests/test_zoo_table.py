"""merge_table's own part: the JSON and the README block it writes from a sweep's rows."""

from __future__ import annotations

import json

import pytest

from engine.errors import DataError
from engine.zoo.merge_table import README_MARKERS, to_markdown, write_table

PAYLOAD = {
    "sweep": {},
    "rows": [
        {
            "group": "en-x",
            "system": "base",
            "setting": {},
            "scores": {
                "en-es": {"bleu": 2.0, "chrf": 20.0, "off_target": 0.1, "off_target_ref": 0.0},
                "en-bn": {"bleu": 4.0, "chrf": 31.0, "off_target": 0.0, "off_target_ref": 0.0},
            },
        },
        {
            "group": "en-x",
            "system": "ties",
            "setting": {"density": 0.5, "weight": 1.0},
            "scores": {
                "en-es": {"bleu": 1.0, "chrf": 10.25, "off_target": 0.5, "off_target_ref": 0.4},
                "en-bn": {"bleu": 0.5, "chrf": 12.5, "off_target": 0.25, "off_target_ref": 0.25},
            },
        },
    ],
}


def test_markdown_has_a_cell_per_direction_and_the_plain_average():
    lines = to_markdown(PAYLOAD).splitlines()
    assert lines[0].startswith("### En→X")
    assert lines[1] == "| system | setting (chosen on dev) | en-bn | en-es | average |"
    # (12.5 + 10.25) / 2 = 11.375 chrF, (0.5 + 1.0) / 2 BLEU, (25 % + 50 %) / 2 off-target
    assert lines[4] == "| ties | density=0.5, weight=1.0 | 12.5 / 0.5 / 25 | 10.2 / 1.0 / 50 | **11.4** / 0.8 / 38 |"
    assert lines[3].startswith("| base | – | 31.0 / 4.0 / 0 | 20.0 / 2.0 / 10 | **25.5** / 3.0 / 5 |")


def test_write_table_replaces_only_the_marked_block(tmp_path):
    (tmp_path / "README.md").write_text(
        f"intro\n\n{README_MARKERS[0]}\nstale table\n{README_MARKERS[1]}\n\nafter\n", encoding="utf-8"
    )
    write_table(tmp_path, PAYLOAD)
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text.startswith("intro\n\n") and text.endswith(f"{README_MARKERS[1]}\n\nafter\n")
    assert "stale table" not in text and to_markdown(PAYLOAD) in text
    assert json.loads((tmp_path / "merge_table.json").read_text(encoding="utf-8")) == PAYLOAD
    write_table(tmp_path, PAYLOAD)  # the markers survive a second run
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text


def test_write_table_names_a_readme_without_markers(tmp_path):
    (tmp_path / "README.md").write_text("no table here\n", encoding="utf-8")
    with pytest.raises(DataError, match="README.md: no merge-table markers"):
        write_table(tmp_path, PAYLOAD)
    assert not (tmp_path / "merge_table.json").exists()
