import json

from pipelines.summary import comparison_lines


def test_comparison_lines_show_difference_interval_and_verdict(tmp_path):
    path = tmp_path / "metrics.json"
    assert comparison_lines(path) == []  # no evaluation yet: nothing to print
    path.write_text(json.dumps({"ssim": 0.3, "comparisons": {
        "pose_iou_model_vs_source_image": {"n": 96, "diff": 0.0274, "ci": [0.011, 0.044], "better": "model"},
        "subset_pose_match_guided_vs_null_cond": None}}))
    lines = comparison_lines(path)
    assert len(lines) == 3
    assert "pose_iou_model_vs_source_image" in lines[1] and "+0.027 [+0.011, +0.044]" in lines[1]
    assert lines[1].rstrip().endswith("-> model") and "n=96" in lines[1]
    assert "subset_pose_match_guided_vs_null_cond" in lines[2] and "n/a" in lines[2]


def test_appearance_lines_show_model_baseline_floor_and_gap_closed(tmp_path):
    from pipelines.summary import appearance_lines

    path = tmp_path / "metrics.json"
    assert appearance_lines(path) == []
    detail = {"n": 90, "mean_model": 0.1, "mean_baseline": 0.4, "mean_floor": 0.025, "share": 0.8, "ci": [0.7, 0.9]}
    path.write_text(json.dumps({"synthetic_colour_gap_closed_torso_detail": detail,
                                "synthetic_colour_gap_closed_legs_detail": None}))
    lines = appearance_lines(path)
    assert len(lines) == 2  # header + torso; legs has no detail
    assert "model 0.100" in lines[1] and "other identity 0.400" in lines[1] and "floor 0.025" in lines[1]
    assert "gap closed 80% [70%, 90%] n=90" in lines[1]
