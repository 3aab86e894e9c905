import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
import timm
from mlflow.tracking import MlflowClient

from absvit.cli import main
from absvit.data.synthetic_seg import generate_segmentation
from absvit.pretrain import pretrain
from absvit.recipe import SegmentRecipe
from absvit.segment import segment
from tests.helpers import tiny_recipe


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
    assert {"result.json", "metrics.jsonl", "config.json"} <= artifacts
    assert run.data.params["recipe.seed"] == "0" and run.data.params["versions.timm"] == timm.__version__
    assert run.data.params["git_commit"] != "" and run.data.params["versions.torch"] == metadata.version("torch")


def test_runs_carry_the_pipeline_tags_and_name_the_run_that_made_their_weights(tmp_path, embedded):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tags = ["--tracking-uri", uri, "--preset", "embedded", "--run", "absvit"]
    pre = tmp_path / "pretrain"
    assert main(["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(embedded), "--out", str(pre), *tags,
                 "--set", "epochs=1", "batch_size=32", "img_size=64", "crop_pct=1.0", "workers=0"]) == 0
    assert main(["evaluate", "--checkpoint", str(pre / "model.pth"), "--suite", "imagenet-sketch", *tags, "--workers", "0",
                 "--data", str(embedded / "imagenet-sketch"), "--out", str(tmp_path / "sketch.json")]) == 0
    generate_segmentation(tmp_path / "seg", per_split={"train": 2, "val": 1}, layouts=["voc"])
    assert main(["segment", "--backbone", "absvit", "--checkpoint", str(pre / "model.pth"), "--dataset", "voc",
                 "--data", str(tmp_path / "seg" / "voc"), "--out", str(tmp_path / "voc"), *tags, "--set", "iterations=1",
                 "batch_size=2", "crop_height=32", "crop_width=32", "scale_long=64", "scale_short=32", "workers=0"]) == 0
    assert main(["evaluate", "--checkpoint", str(pre / "model.pth"), "--suite", "imagenet-sketch", "--workers", "0",
                 "--tracking-uri", uri, "--data", str(embedded / "imagenet-sketch"), "--out", str(tmp_path / "adhoc.json")]) == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("absvit-bench").experiment_id
    runs = {r.data.tags["absvit.stage"] + "/" + r.data.tags["absvit.preset"]: r for r in client.search_runs([experiment])}
    assert sorted(runs) == ["evaluate/adhoc", "evaluate/embedded", "pretrain/embedded", "segment/embedded"]
    assert len(client.search_runs([experiment], "tags.`absvit.run` = 'absvit' and tags.`absvit.preset` = 'embedded'")) == 3
    assert runs["evaluate/adhoc"].data.tags["absvit.run"] == "pretrain"  # outside the pipeline: the checkpoint's folder
    source = runs["pretrain/embedded"].info.run_id
    assert runs["pretrain/embedded"].data.tags["absvit.seed"] == "0"
    for key in ("evaluate/embedded", "evaluate/adhoc", "segment/embedded"):
        assert runs[key].data.tags["absvit.source_run_id"] == source == runs[key].data.params["source_run_id"], key
    assert runs["evaluate/embedded"].data.tags["absvit.suite"] == "imagenet-sketch"
    assert json.loads((tmp_path / "sketch.json").read_text())["source_run_id"] == source


def test_jobs_starting_together_on_a_new_store_are_all_tracked(tmp_path):
    """The DAG's first jobs open a sqlite store that does not exist yet, at the same moment."""
    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    job = (f"import mlflow, pathlib, time\nfrom absvit.tracking import Tracker\n"
           f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
           f"t = Tracker('job', uri={uri!r})\nassert t.active\nt.finish()")
    jobs = [subprocess.Popen([sys.executable, "-W", "error::UserWarning", "-c", job], stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    time.sleep(8)  # all four have imported mlflow and wait
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in jobs]
    assert [p.returncode for p in jobs] == [0] * 4, errors
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("absvit-bench").experiment_id])) == 4


def test_unreachable_store_warns_and_training_continues(tmp_path, embedded, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.warns(UserWarning, match="MLflow tracking at http://127.0.0.1:9 is unreachable"):
        result = pretrain("vit_pico_patch8_64", embedded, tmp_path / "run", tiny_recipe(epochs=1),
                          tracking_uri="http://127.0.0.1:9")
    assert result["epoch"] == 1 and (tmp_path / "run" / "result.json").exists()


def test_an_unreachable_store_is_probed_once_per_job(tmp_path, embedded, pico_run):
    """Without the probe, MLflow's client retried a closed port for about 4 minutes per suite (7 suites: ~29 min of
    an evaluate job). Now the job asks once, with a short timeout, says so once and carries on: three suites end well
    within the deadline here (the only timing, a bound for a slow machine: not a speed target)."""
    suites = ("clean", "imagenet-a", "imagenet-r")
    argv = [sys.executable, "-m", "absvit", "evaluate", "--checkpoint", str(pico_run / "model.pth"), "--suite", *suites,
            "--data", *(str(embedded / s) for s in ("val", "imagenet-a", "imagenet-r")),
            "--out", *(str(tmp_path / f"{s}.json") for s in suites), "--workers", "0",
            "--tracking-uri", "http://127.0.0.1:9"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}  # MLflow's own retries
    out = subprocess.run(argv, capture_output=True, text=True, timeout=200, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("MLflow tracking at http://127.0.0.1:9 is unreachable") == 1, out.stderr
    assert all((tmp_path / f"{s}.json").exists() for s in suites)


def _eval_dirs(root: Path, seeds=(0, 1)) -> dict[str, list[Path]]:
    """Robustness results of the L_var arms and of a ViT, one folder per seed, as `absvit evaluate` writes them
    (numbers chosen to round awkwardly; seed s adds 2 s to each)."""
    numbers = {"without_lvar": ("absvit_tiny_patch16_224", (71.25, 69.049999, 9.45, 33.55, 20.849)),
               "with_lvar": ("absvit_tiny_patch16_224", (74.15, 66.75, 10.05, 34.95, 22.65)),
               "vit": ("vit_tiny_patch16_224", (72.45, 71.15, 7.85, 32.05, 19.95))}
    dirs = {}
    for arm, (model, values) in numbers.items():
        for seed in seeds:
            d = root / arm / f"s{seed}"
            dirs.setdefault(arm, []).append(d)
            d.mkdir(parents=True)
            clean, mce, a, r, sk = (v + 2 * seed for v in values)
            for suite, value in (("clean", clean), ("imagenet-a", a), ("imagenet-r", r), ("imagenet-sketch", sk),
                                 ("fgsm", clean / 2), ("pgd", clean / 3)):
                (d / f"{suite}.json").write_text(json.dumps({"model": model, "suite": suite, "top1": value, "seed": seed}))
            (d / "imagenet-c.json").write_text(json.dumps({"model": model, "suite": "imagenet-c", "mce": mce, "seed": seed}))
    return dirs


def _arm_args(arm: str, run: str, dirs: list[Path]) -> list[str]:
    return ["--arm", *(f"{arm}={run}:{d}" for d in dirs)]


def tables_regenerate_from_the_store_alone(uri: str, tmp_path: Path, segmentation: list[Path] = ()) -> None:
    """ablations lvar + robustness (+ segmentation) -> tables from files; then, with every file but the store gone,
    tables from MLflow: the same bytes, the same model-derived labels."""
    dirs = _eval_dirs(tmp_path / "eval")
    csv = {name: tmp_path / "ablation" / f"{name}.csv" for name in ("lvar", "robustness")}
    label = "Embedded default: a caption sentence"
    common = ["--label", label, "--preset", "embedded", "--tracking-uri", uri]
    assert main(["ablation", "--name", "lvar", *_arm_args("without_lvar", "a", dirs["without_lvar"]),
                 *_arm_args("with_lvar", "b", dirs["with_lvar"]), "--out", str(csv["lvar"]), *common]) == 0
    assert main(["ablation", "--name", "robustness", *_arm_args("vit", "v", dirs["vit"]),
                 *_arm_args("absvit", "b", dirs["with_lvar"]), "--out", str(csv["robustness"]), *common]) == 0
    seg_args = ["--segmentation", *map(str, segmentation)] if segmentation else []
    assert main(["tables", "--ablation", str(csv["lvar"]), "--robustness", str(csv["robustness"]), *seg_args,
                 "--label", label, "--out-dir", str(tmp_path / "files")]) == 0
    shutil.rmtree(tmp_path / "eval")
    shutil.rmtree(tmp_path / "ablation")
    for path in segmentation:
        shutil.rmtree(path.parent)
    assert main(["tables", "--from-mlflow", "--tracking-uri", uri, "--preset", "embedded",
                 "--out-dir", str(tmp_path / "store")]) == 0
    names = sorted(p.name for p in (tmp_path / "files").iterdir())
    tables = ["table1.csv", "table1.md", "table1.tex"] if segmentation else []
    assert names == ["report.md", *tables, "table2.csv", "table2.md", "table2.tex", "table3.csv", "table3.md", "table3.tex"]
    for name in names:
        assert (tmp_path / "store" / name).read_bytes() == (tmp_path / "files" / name).read_bytes(), name
    # two seeds per arm, 2 apart: mean +- sample std 1.4, and n
    assert r"AbSViT-Ti & $\times$ & 72.2$\pm$1.4 & 70.0$\pm$1.4 & 10.4$\pm$1.4 & 34.5$\pm$1.4 & 21.8$\pm$1.4 & 2 \\" in (
        tmp_path / "files" / "table2.tex").read_text()
    table3 = (tmp_path / "files" / "table3.tex").read_text()
    assert r"Model & Clean & IN-C ($\downarrow$) & IN-A & IN-R & IN-SK & FGSM & PGD & n \\" in table3
    assert r"ViT-Ti & 73.5$\pm$1.4 & 72.2$\pm$1.4 & " in table3
    report = (tmp_path / "files" / "report.md").read_text()
    assert "| ViT-Ti | IN-C ($\\downarrow$) | 72.15 | 1.41 | 2 | 71.1 | 1.05 |" in report
    assert "## Differences against the seed spread" in report and "Welch" in report

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("absvit-bench").experiment_id
    for name, models in (("lvar", {"model.without_lvar": "absvit_tiny_patch16_224", "seeds.with_lvar": "0,1"}),
                         ("robustness", {"model.vit": "vit_tiny_patch16_224", "model.absvit": "absvit_tiny_patch16_224"})):
        run = client.search_runs([experiment], f"tags.`absvit.stage` = 'ablation' and tags.`absvit.run` = '{name}'")[0]
        assert run.data.tags["absvit.preset"] == "embedded" and models.items() <= run.data.params.items()
        assert run.data.params["command"].startswith(f"absvit ablation --name {name}")
        assert {f"{name}.csv", "config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_tables_from_sqlite_store_are_byte_identical(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    generate_segmentation(tmp_path / "seg", per_split={"train": 4, "val": 2}, layouts=["voc", "ade20k"])
    recipe = SegmentRecipe(iterations=2, batch_size=2, crop_height=32, crop_width=32, scale_long=64, scale_short=32,
                           head_channels=8, aux_channels=8, workers=0)
    results = []
    for backbone, model, dataset in (("vit", "vit_pico_patch8_64", "voc"), ("absvit", "absvit_pico_patch8_64", "ade20k")):
        out = tmp_path / "segment" / backbone / dataset
        with pytest.warns(UserWarning, match="random init"):
            segment(backbone, model, dataset, tmp_path / "seg" / dataset, out, recipe, tracking_uri=uri, preset="embedded")
        results.append(out / "result.json")
    tables_regenerate_from_the_store_alone(uri, tmp_path, results)
    table1 = (tmp_path / "store" / "table1.tex").read_text()  # labelled by the models, which started from no weights
    assert "ViT-B" not in table1 and "AbSViT-B" not in table1
    assert r"vit\_pico\_patch8\_64 (random init) & " in table1 and r"absvit\_pico\_patch8\_64 (random init) & -- & -- & " in table1


def test_tables_from_mlflow_without_runs_names_the_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["tables", "--from-mlflow", "--tracking-uri", uri, "--out-dir", str(tmp_path / "t")]) == 2
    assert "no finished ablation, segmentation or V&L run for preset 'embedded' in the" in capsys.readouterr().err
    assert not (tmp_path / "t" / "table2.tex").exists()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with its own sqlite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([Path(sys.executable).with_name("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_real_mlflow_server_receives_runs_and_tables_regenerate_from_it(mlflow_server, tmp_path, embedded):
    result = pretrain("vit_pico_patch8_64", embedded, tmp_path / "run", tiny_recipe(epochs=1), tracking_uri=mlflow_server,
                      run_name="pretrain/server")
    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("absvit-bench").experiment_id],
                             "attributes.run_name = 'pretrain/server'")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["val_top1"] == result["val_top1"]
    assert {"result.json", "metrics.jsonl", "config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    tables_regenerate_from_the_store_alone(mlflow_server, tmp_path)
