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
