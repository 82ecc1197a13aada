"""Evaluation (edge/evaluate.py): AP50 on hand-made cases, and whole-model evaluation of a
user-brought model (the YOLO-layout fixture) through backend, decoder, tiling and merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge.evaluate import (ap_all_point, average_precision, box_iou, evaluate_model,
                           match_detections, read_boxes_csv)
from edge.heads import Detections

GT = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)


# ---- AP on hand-made cases ------------------------------------------------------------------------

def test_perfect_detections_give_ap_1():
    r = average_precision([(GT, [0.9, 0.8])], [GT], score_threshold=0.5)
    assert r["ap50"] == 1.0 and r["precision"] == 1.0 and r["recall"] == 1.0
    assert (r["n_gt"], r["n_det"], r["tp"]) == (2, 2, 2)


def test_no_detections_give_ap_0():
    r = average_precision([(np.zeros((0, 4)), np.zeros(0))], [GT], score_threshold=0.5)
    assert r["ap50"] == 0.0 and r["precision"] == 0.0 and r["recall"] == 0.0


def test_known_precision_recall_curve():
    # ranked: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # all-point AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    dets = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], np.float32)
    r = average_precision([(dets, [0.9, 0.8, 0.7])], [GT], score_threshold=0.75)
    assert r["ap50"] == pytest.approx(5 / 6)
    assert r["precision"] == 0.5 and r["recall"] == 0.5  # at 0.75: one TP, one FP
    # the interpolation lifts a dip: TP, FP, FP, TP, TP over 3 GT
    assert ap_all_point([1, 0, 0, 1, 1], 3) == pytest.approx(1 / 3 + 2 / 3 * 3 / 5)


def test_duplicates_iou_boundary_and_classes():
    # a duplicate of a matched box is a false positive; IoU exactly 0.5 matches
    dup = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    np.testing.assert_array_equal(match_detections(dup, [0.9, 0.8], GT[:1]), [True, False])
    half = np.array([[0, 0, 10, 5]], np.float32)     # IoU 0.5 with GT[0]
    assert box_iou(half, GT[:1])[0, 0] == 0.5
    assert match_detections(half, [0.5], GT[:1])[0]
    # a detection of the wrong class does not match
    r = average_precision([(GT, [0.9, 0.8], [0, 1])], [(GT, np.array([0, 0]))], score_threshold=0.5)
    assert r["tp"] == 1 and r["recall"] == 0.5


def test_best_unmatched_ground_truth_is_taken():
    gts = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float32)
    dets = np.array([[2, 0, 12, 10], [0, 0, 10, 10]], np.float32)
    np.testing.assert_array_equal(match_detections(dets, [0.9, 0.8], gts), [True, True])


def test_pooling_over_images_and_empty_ground_truth():
    r = average_precision([(GT, [0.9, 0.8]), (GT[:1], [0.95])], [GT, np.zeros((0, 4))],
                          score_threshold=0.5)
    # ranked: FP (0.95, image 2), TP, TP -> precision 0, 1/2, 2/3; AP = 1/2 * 2/3 + 1/2 * 2/3
    assert r["ap50"] == pytest.approx(2 / 3) and r["precision"] == pytest.approx(2 / 3)
    empty = average_precision([Detections.empty()], [np.zeros((0, 4))])
    assert empty["ap50"] == 1.0 and empty["precision"] == 1.0 and empty["recall"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        average_precision([], [GT])


def test_read_boxes_csv(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,3,4,Tree\na.png,5,6,7.5,8,Tree\n")
    boxes, classes = read_boxes_csv(p)
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [5, 6, 7.5, 8]])
    np.testing.assert_array_equal(classes, [0, 0])
    p.write_text("1,2,3,4\n")
    np.testing.assert_array_equal(read_boxes_csv(p)[0], [[1, 2, 3, 4]])


# ---- a user-brought model: manifest entry only ----------------------------------------------------

@pytest.fixture(scope="module")
def fixture_manifest(tmp_path_factory):
    from tests.models import fixtures as fx

    return fx.write_manifest(tmp_path_factory.mktemp("fixture_models"))


def _block_frame(h, w, cells, cell=16):
    """A black frame with full red / green cells; ground truth = the fixture model's boxes there."""
    from tests.models import fixtures as fx

    frame = np.zeros((h, w, 3), np.uint8)
    boxes, classes = [], []
    for row, col, cls in cells:
        frame[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell, cls] = 255
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        boxes.append([cx - fx.YOLO_W / 2, cy - fx.YOLO_H / 2, cx + fx.YOLO_W / 2, cy + fx.YOLO_H / 2])
        classes.append(cls)
    return frame, np.array(boxes, np.float32), np.array(classes, np.int64)


@pytest.mark.parametrize("variant", ["onnx_fp32", "onnx_int8"])
def test_evaluate_user_model_on_a_tiled_image(fixture_manifest, variant):
    # 192 x 256 frame, 128 tiles: 2 x 2 tiles (rows at 0 and 64: they overlap), merged across tiles
    cells = [(0, 0, 0), (2, 3, 1), (5, 5, 0), (6, 12, 1), (11, 15, 0), (9, 8, 0)]
    frame, boxes, classes = _block_frame(192, 256, cells)
    r = evaluate_model("blocks_yolo", variant, image=frame, boxes=boxes, classes=classes,
                       manifest=fixture_manifest, overlap=0)
    assert r["tiles"] == 4 and r["n_gt"] == 6
    assert r["ap50"] == 1.0 and r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["tile_latency_ms_1thread"] > 0 and r["threads"] == 1
    assert r["variant"] == variant and r["runtime"] == "onnxruntime"


def test_evaluate_counts_misses_and_false_alarms(fixture_manifest):
    frame, boxes, classes = _block_frame(128, 128, [(1, 1, 0), (3, 3, 0)])
    wrong = boxes.copy()
    wrong[1] += 40  # second ground-truth box where nothing is: a miss and a false alarm
    r = evaluate_model("blocks_yolo", "onnx_fp32", image=frame, boxes=wrong, classes=classes,
                       manifest=fixture_manifest)
    assert r["recall"] == 0.5 and r["precision"] == 0.5 and r["ap50"] == 0.5


def test_evaluate_argument_errors(fixture_manifest):
    with pytest.raises(ValueError, match="either scenes"):
        evaluate_model("blocks_yolo", manifest=fixture_manifest)
    with pytest.raises(ValueError, match="boxes"):
        evaluate_model("blocks_yolo", image=np.zeros((128, 128, 3), np.uint8), manifest=fixture_manifest)


def test_cli_eval_prints_one_json_line(fixture_manifest, tmp_path, capsys):
    from edge.cli import main

    frame, boxes, _ = _block_frame(128, 128, [(1, 1, 0), (4, 6, 0)])
    np.save(tmp_path / "frame.npy", frame)
    csv = tmp_path / "boxes.csv"
    csv.write_text("xmin,ymin,xmax,ymax\n" + "".join(",".join(map(str, b)) + "\n" for b in boxes))
    assert main(["eval", "blocks_yolo", "--variant", "onnx_int8", "--manifest", str(fixture_manifest),
                 "--image", str(tmp_path / "frame.npy"), "--boxes", str(csv)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["ap50"] == 1.0 and r["variant"] == "onnx_int8" and r["n_gt"] == 2


def test_scenes_come_from_the_held_out_seed_range(fixture_manifest, monkeypatch, capsys):
    """The scene path, with a stand-in for models.scenes that records the seeds it is asked for."""
    import sys
    import types

    from edge.cli import main
    from edge.evaluate import HELD_OUT_SEED_BASE

    seeds = []

    def generate_scene(seed, height=256, width=256, **_):
        seeds.append(seed)
        row, col = divmod(seed % 64, 8)
        frame, boxes, classes = _block_frame(height, width, [(row, col, seed % 2)])
        return types.SimpleNamespace(image=frame, boxes=boxes, classes=classes)

    monkeypatch.setitem(sys.modules, "models.scenes", types.SimpleNamespace(generate_scene=generate_scene))
    r = evaluate_model("blocks_yolo", "onnx_fp32", scenes=3, scene_size=128, manifest=fixture_manifest)
    assert seeds == [HELD_OUT_SEED_BASE + i for i in range(3)]
    assert r["ap50"] == 1.0 and r["n_images"] == 3 and r["tiles"] == 3
    assert "seeds 1000000..1000002" in r["eval_set"]
    seeds.clear()
    assert main(["eval", "blocks_yolo", "--manifest", str(fixture_manifest), "--scenes", "2",
                 "--seed-base", "2000000"]) == 0
    assert seeds == [2_000_000, 2_000_001]  # 256 x 256 scenes: 2 x 2 tiles of 128
    assert json.loads(capsys.readouterr().out)["n_images"] == 2
