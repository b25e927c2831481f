"""A local run's outputs include the tasks kfp.local served from its cache (they write nothing in the run dir)."""

import json

from pipelines.transfer_learning.local_run import collect_outputs


def test_cached_tasks_outputs_come_from_their_cache_entry(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    (run_dir / "deploy-triton").mkdir(parents=True)
    (run_dir / "deploy-triton" / "executor_output.json").write_text(json.dumps({"parameterValues": {"version": 2}}))
    cache.mkdir()
    (cache / ("ab12cd" + "0" * 58 + ".json")).write_text(json.dumps({
        "passed": True,
        "onnx_model": {"__kfp_artifact__": True, "schema_title": "system.Model", "name": "onnx_model",
                       "uri": "/runs/old/onnx-quantize/onnx_model", "metadata": {"recommended": "int8"}},
    }))
    outputs = collect_outputs(run_dir, {"onnx-quantize": "ab12cd", "evaluate": "ffff00"}, cache)
    assert outputs["deploy-triton"] == {"version": 2}
    assert outputs["onnx-quantize"] == {"passed": True,
                                        "onnx_model": {"uri": "/runs/old/onnx-quantize/onnx_model",
                                                       "recommended": "int8"}}
    assert "evaluate" not in outputs  # no cache entry with that key: nothing invented
    assert collect_outputs(run_dir) == {"deploy-triton": {"version": 2}}
