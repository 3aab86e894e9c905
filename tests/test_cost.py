"""The cost report: real Snakemake benchmark files, real SLURM accounting, the report's three formats, MLflow."""
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from absvit import cost
from tests.helpers import write_benchmark
from tests.latex import compile_tables

BIN = Path(sys.executable).parent

SNAKEFILE = """
rule all:
    input: expand("out/burn-{i}.txt", i=(1, 2)), "out/nap.txt"

rule burn:
    output: "out/burn-{i}.txt"
    benchmark: "results/demo/benchmarks/burn/{i}.tsv"
    shell: "{PY} -c 'import time; t = time.process_time(); exec(\\"while time.process_time() - t < 1.6: pass\\")'; touch {output}"

rule nap:
    output: "out/nap.txt"
    benchmark: "results/demo/benchmarks/nap.tsv"
    shell: "sleep 0.5; touch {output}"
"""


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory):
    """A real Snakemake run: two CPU-burning jobs of one stage, one sleeping job, each with a benchmark file."""
    wd = tmp_path_factory.mktemp("bench")
    (wd / "Snakefile").write_text(f"PY = {sys.executable!r}\n" + SNAKEFILE)
    out = subprocess.run([BIN / "snakemake", "--cores", "1", "--quiet", "all"], cwd=wd, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return wd / "results" / "demo" / "benchmarks"


def test_cost_table_sums_the_benchmark_files(snakemake_run):
    files = {p: pd.read_csv(p, sep="\t") for p in snakemake_run.rglob("*.tsv")}
    assert list(next(iter(files.values())).columns) == ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss",
                                                        "io_in", "io_out", "mean_load", "cpu_time"]
    df = cost.cost_table(snakemake_run)
    assert list(df.columns) == cost.COLUMNS
    assert list(df.stage) == ["burn", "nap", "total"]
    burn, nap, total = (df.set_index("stage").loc[s] for s in ("burn", "nap", "total"))

    burns = [f for p, f in files.items() if p.parent.name == "burn"]
    assert burn.jobs == 2 and nap.jobs == 1 and total.jobs == 3
    assert burn.wall_s == pytest.approx(sum(f.s.sum() for f in burns))
    assert burn.cpu_core_hours == pytest.approx(sum(f.cpu_time.sum() for f in burns) / 3600)
    assert burn.cpu_core_hours * 3600 > 0.8  # Snakemake sampled the burning process (its first sample is at 1 s)
    assert nap.wall_s == pytest.approx(files[snakemake_run / "nap.tsv"].s.sum()) and nap.wall_s >= 0.5
    assert total.wall_s == pytest.approx(burn.wall_s + nap.wall_s)
    assert total.cpu_core_hours == pytest.approx(burn.cpu_core_hours + nap.cpu_core_hours)
    assert (df.gpu_hours == 0).all() and set(df.source) == {"benchmark"}

    # A local run on a GPU machine counts the GPUs its jobs were given.
    gpu = cost.cost_table(snakemake_run, gpus={"burn": 2}).set_index("stage")
    assert gpu.loc["burn", "gpu_hours"] == pytest.approx(burn.wall_s * 2 / 3600)
    assert gpu.loc["total", "gpu_hours"] == gpu.loc["burn", "gpu_hours"]


def test_cost_files_markdown_csv_and_latex_that_needs_only_booktabs(snakemake_run, tmp_path):
    df = cost.cost_table(snakemake_run)
    paths = cost.write_cost(tmp_path / "tables", df)
    assert [p.name for p in paths] == ["cost.csv", "cost.md", "cost.tex"]
    back = pd.read_csv(tmp_path / "tables" / "cost.csv")
    assert list(back.stage) == ["burn", "nap", "total"] and back.jobs.tolist() == [2, 1, 3]
    md = (tmp_path / "tables" / "cost.md").read_text()
    assert md == cost.cost_section(df)
    assert md.startswith("## Cost") and "critical path is not computed" in md and "| total | 3 |" in md
    tex = (tmp_path / "tables" / "cost.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "total & 3 &" in tex
    compile_tables([tmp_path / "tables" / "cost.tex"], tmp_path / "latex")  # a booktabs-only document


def test_cost_metrics_go_to_mlflow(snakemake_run, tmp_path):
    df = cost.cost_table(snakemake_run)
    untracked = cost.log_cost(df, preset="demo", track=False)
    assert untracked["cost.total.jobs"] == 3 and untracked["cost.burn.cpu_core_hours"] == df.cpu_core_hours[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not (tmp_path / "mlflow.db").exists()

    paths = cost.write_cost(tmp_path / "tables", df)
    metrics = cost.log_cost(df, preset="demo", tracking_uri=uri, artifacts=paths, launcher="local")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("absvit-bench").experiment_id])
    assert run.data.tags["absvit.stage"] == "cost" and run.data.tags["absvit.preset"] == "demo"
    assert run.data.metrics == pytest.approx(metrics)
    assert run.data.metrics["cost.total.gpu_hours"] == 0
    assert run.data.metrics["cost.total.wall_s"] == pytest.approx(df.wall_s.iloc[-1])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"cost.csv", "cost.md", "cost.tex"}


@pytest.mark.parametrize("tres, gpus", [("billing=2,cpu=2,mem=1G,node=1", 0), ("cpu=8,gres/gpu=4,mem=64G,node=1", 4),
                                        ("cpu=8,gres/gpu:h100=2,gres/gpu=2,node=1", 2), ("cpu=8,gres/gpu:a100=3,node=1", 3)])
def test_allocated_gpus_from_alloc_tres(tres, gpus):
    assert cost.allocated_gpus(tres) == gpus


def test_stage_of_nested_and_flat_benchmark_files(tmp_path):
    write_benchmark(tmp_path / "pretrain/absvit-s0.tsv", 10.0, 9.0)
    write_benchmark(tmp_path / "pretrain/absvit-s1.tsv", 12.0, 11.0)
    write_benchmark(tmp_path / "tables.tsv", 0.5, "NA")
    df = cost.cost_table(tmp_path).set_index("stage")
    assert df.loc["pretrain", "jobs"] == 2 and df.loc["pretrain", "wall_s"] == 22.0
    assert df.loc["pretrain", "cpu_core_hours"] == pytest.approx(20 / 3600)
    assert df.loc["tables", "cpu_core_hours"] == 0 and "before Snakemake's first CPU sample" in df.loc["tables", "note"]
    (tmp_path / "broken.tsv").write_text("not a benchmark\n")
    with pytest.raises(cost.UsageError, match="broken.tsv: not a Snakemake benchmark file"):
        cost.cost_table(tmp_path)


def test_local_jobs_cost_the_gpus_their_stage_requests(tmp_path):
    """The local launcher gives a job the GPUs its stage requests (submitit's local executor): the tables rule passes
    them (`absvit tables --gpus STAGE=N`), so a 3600 s job of a 2-GPU stage costs 2 GPU-hours."""
    for rel, seconds in (("segment/vit-voc-s0.tsv", 3600.0), ("tables.tsv", 2.0)):
        write_benchmark(tmp_path / rel, seconds, seconds)
    df = cost.cost_table(tmp_path, gpus=cost.parse_gpus(["segment=2", "pretrain=8"])).set_index("stage")
    assert df.loc["segment", "gpu_hours"] == 2.0 and df.loc["tables", "gpu_hours"] == 0
    assert df.loc["total", "gpu_hours"] == 2.0 and "| segment | 1 | 1:00:00 | 1.00 | 2.00 |" in cost.markdown(df.reset_index())
    with pytest.raises(cost.UsageError, match="--gpus: expected STAGE=N .* got 'segment=two'"):
        cost.parse_gpus(["segment=two"])

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([BIN / "snakemake", "tables", "-n", "--forceall", "-p", "--workflow-profile", "none",
                          "--config", "preset=paper", "plan_only=True"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--gpus pretrain=8 evaluate=1 imagenet_c=0 segment=8 vl=8 " in out.stdout  # presets.paper.resources


def test_slurm_jobs_cost_elapsed_times_allocated_cpus(slurm_cluster, tmp_path, monkeypatch):
    from absvit.cli import main
    from absvit.launch import Resources, submit

    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    results = tmp_path / "results" / "demo"
    folder = results / "submitit" / "pretrain" / "absvit-s0"
    argv = ["data", "embedded", "--out", str(tmp_path / "data"), "--per-class", "train=400"]  # seconds: sacct counts whole ones
    assert submit(argv, entry=main, launcher="slurm", folder=folder, name="absvit-pretrain-absvit-s0",
                  resources=Resources(timeout_min=5, cpus_per_task=2, mem_gb=1)) == 0
    (job,) = [p.name for p in folder.iterdir() if p.is_dir()]
    # The Snakemake job that waited on the login node, and a stage that never left it.
    for rel in ("pretrain/absvit-s0.tsv", "tables.tsv"):
        write_benchmark(results / "benchmarks" / rel, 3.0, 0.5)

    deadline = time.monotonic() + 60  # accounting records trail the controller
    while slurm_cluster.job_states().get(job) != "COMPLETED":
        assert time.monotonic() < deadline, slurm_cluster.job_states()
        time.sleep(0.5)
    elapsed, cpus = slurm_cluster.run("sacct", "-j", job, "-X", "-n", "-P", "-o", "ElapsedRaw,AllocCPUS").split("|")
    assert int(cpus) == 2 and int(elapsed) >= 1

    df = cost.cost_table(results / "benchmarks", launcher="slurm").set_index("stage")
    assert df.loc["pretrain", "source"] == "sacct" and df.loc["pretrain", "jobs"] == 1
    assert df.loc["pretrain", "wall_s"] == int(elapsed)
    assert df.loc["pretrain", "cpu_core_hours"] == pytest.approx(int(elapsed) * 2 / 3600)
    assert df.loc["pretrain", "gpu_hours"] == 0
    assert df.loc["tables", "source"] == "benchmark" and df.loc["tables", "wall_s"] == 3.0
    assert df.loc["total", "cpu_core_hours"] == pytest.approx(int(elapsed) * 2 / 3600 + 0.5 / 3600)

    # A local launcher's job folder (named by process id, no submission script) is not a SLURM job.
    (folder / "4242").mkdir()
    (folder / "4242" / "4242_0_log.out").touch()
    assert cost.cost_table(results / "benchmarks", launcher="slurm").equals(df.reset_index())
    # A SLURM job id accounting has never heard of is named, not silently counted as free.
    (folder / "999999").mkdir()
    (folder / "999999" / "999999_submission.sh").touch()
    note = cost.cost_table(results / "benchmarks", launcher="slurm").set_index("stage").loc["pretrain", "note"]
    assert "unknown to sacct" in note and "999999" in note
