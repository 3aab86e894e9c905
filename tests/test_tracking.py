import pytest
from mlflow.tracking import MlflowClient

from absvit.pretrain import pretrain
from tests.conftest import tiny_recipe


def test_pretrain_mirrors_params_and_per_epoch_metrics_into_mlflow(tmp_path, embedded):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    pretrain("absvit_pico_patch8_64", embedded, out, tiny_recipe(epochs=2), tracking_uri=uri, run_name="pretrain/test",
             stop_after_epoch=1)
    pretrain("absvit_pico_patch8_64", embedded, out, tiny_recipe(epochs=2), tracking_uri=uri, run_name="pretrain/test")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("absvit-bench").experiment_id])
    assert len(runs) == 1  # the resumed job continued the same run
    run = runs[0]
    assert run.info.run_name == "pretrain/test" and run.info.status == "FINISHED"
    assert run.data.params["model"] == "absvit_pico_patch8_64" and run.data.params["recipe.var_weight"] == "0.1"
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"result.json", "metrics.jsonl"} <= artifacts


def test_unreachable_store_warns_and_training_continues(tmp_path, embedded, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.warns(UserWarning, match="MLflow tracking at http://127.0.0.1:9 is unreachable"):
        result = pretrain("vit_pico_patch8_64", embedded, tmp_path / "run", tiny_recipe(epochs=1),
                          tracking_uri="http://127.0.0.1:9")
    assert result["epoch"] == 1 and (tmp_path / "run" / "result.json").exists()
