"""The shipped ship detector, every variant, through the flight decoders: the issue's accuracy targets
on 300 held-out generated scenes (seeds the training never used), and the manifest's recorded figures
reproduce."""
import pytest

from edge.evaluate import evaluate_model
from edge.manifest import load_manifest

SHIP_VARIANTS = ["onnx_fp32", "onnx_int8", "ort_int8", "tflite_int8"]
HELD_OUT_SCENES = 300
#: Issue 3 targets: int8 AP50 >= 0.95 on both runtimes, int8 within 1 AP point of fp32.
MIN_INT8_AP50 = 0.95
MAX_INT8_AP_LOSS = 0.01


@pytest.fixture(scope="module")
def ship_results():
    manifest = load_manifest()
    return {v: evaluate_model("ship", v, scenes=HELD_OUT_SCENES, manifest=manifest) for v in SHIP_VARIANTS}


@pytest.mark.parametrize("variant", [v for v in SHIP_VARIANTS if "int8" in v])
def test_ship_int8_meets_accuracy_targets(ship_results, variant):
    ap = ship_results[variant]["ap50"]
    assert ap >= MIN_INT8_AP50, (variant, ap)
    assert ship_results["onnx_fp32"]["ap50"] - ap <= MAX_INT8_AP_LOSS, (variant, ap)


#: ONNX Runtime's fused integer kernels differ by instruction set (its AVX2 u8s8 path can saturate
#: the 16-bit pair sums that AVX-512 VNNI does not): the manifest's figures come from an AVX-512 Xeon;
#: an AVX2-only AMD EPYC of this workplace measured onnx_int8 / ort_int8 AP50 0.9570 / precision 0.8683
#: / recall 0.9580 against the recorded 0.9596 / 0.8875 / 0.9548 (2026-12-01), while the same file in
#: memory="owned" mode (QDQ run unfused) gave exactly the recorded figures there. The float and LiteRT
#: kernels agree everywhere (tolerance 2e-3).
REPRODUCE_TOLERANCE = {"onnx_int8": {"ap50": 5e-3, "precision": 0.025, "recall": 5e-3},
                       "ort_int8": {"ap50": 5e-3, "precision": 0.025, "recall": 5e-3}}


@pytest.mark.parametrize("variant", SHIP_VARIANTS)
def test_manifest_metrics_reproduce(ship_results, variant):
    recorded = load_manifest().model("ship").raw["metrics"][variant]
    measured = ship_results[variant]
    for key in ("ap50", "precision", "recall"):
        tol = REPRODUCE_TOLERANCE.get(variant, {}).get(key, 2e-3)
        assert measured[key] == pytest.approx(recorded[key], abs=tol), (variant, key)
