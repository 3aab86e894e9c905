"""The Snakemake workflow: the plan, config validation, the CLI entry point."""
import os
import re
import subprocess
import sys

import torch
import yaml

from tests.helpers import ROOT, SNAKEMAKE, dry_run, job_counts, workflow_copy

def test_dry_run_plans_the_whole_embedded_dag():
    out = dry_run()
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    seeds = 3  # presets.embedded.seeds: every pretraining run and everything downstream, once per seed
    assert counts == {"all": 1, "embedded_dataset": 1, "imagenet_c": 75, "pretrain": 3 * seeds, "evaluate": 3 * seeds,
                      "lvar_ablation": 1, "robustness_comparison": 1, "segmentation_dataset": 1, "segment": 9 * seeds,
                      "scenes": 1, "decoder": seeds, "figures": seeds, "tables": 1,
                      "vl_data": 1, "vl": 2 * 2 * seeds, "vl_figure": seeds}, counts  # V&L: task x encoder x seed
    for seed in range(seeds):
        assert f"results/embedded/pretrain/absvit/s{seed}/model.pth" in out.stdout
        assert f"results/embedded/segment/absvit/voc/s{seed}/result.json" in out.stdout
        assert f"results/embedded/vl/retrieval/absvit/s{seed}/result.json" in out.stdout
        assert f"--encoder results/embedded/pretrain/absvit/s{seed}/model.pth" in out.stdout  # its own seed's weights


def test_each_rule_sits_on_one_level_of_the_dag():
    """Snakemake's report draws its rule graph with one node per rule and dependency level (the longest path from
    a job without inputs): a rule whose jobs sit on two levels is drawn twice (`segment` was: the random-init ResNet's
    jobs one step after the data, the pretrained backbones' two)."""
    out = subprocess.run([SNAKEMAKE, "--dag", "-n", "--forceall", "all"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rules = {n: label.split("\\n")[0] for n, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', out.stdout, re.M)}
    inputs: dict[str, set] = {n: set() for n in rules}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out.stdout, re.M):
        inputs[b].add(a)
    level: dict[str, int] = {}

    def depth(n):
        if n not in level:
            level[n] = 1 + max((depth(m) for m in inputs[n]), default=-1)
        return level[n]

    levels: dict[str, set] = {}
    for n, rule in rules.items():
        levels.setdefault(rule, set()).add(depth(n))
    assert {rule: sorted(ls) for rule, ls in levels.items() if len(ls) > 1} == {}


def test_one_seed_runs_each_job_once(tmp_path):
    wd = workflow_copy(tmp_path, lambda c: c["presets"]["embedded"].update(seeds=[7]))
    out = dry_run("--printshellcmds", cwd=wd)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert (counts["pretrain"], counts["evaluate"], counts["segment"]) == (3, 3, 9)
    assert "results/embedded/pretrain/vit/s7/model.pth" in out.stdout and " seed=7" in out.stdout


def test_a_seed_in_the_recipe_is_refused_naming_seeds(tmp_path):
    wd = workflow_copy(tmp_path, lambda c: c["presets"]["embedded"]["recipe"].update(seed=3))
    out = dry_run(cwd=wd)
    assert out.returncode != 0 and "presets.embedded.recipe.seed" in out.stderr and "presets.embedded.seeds" in out.stderr


def test_lint_is_clean():
    """`snakemake --lint`: a conda environment per rule, non-file values through params:, helpers in common.smk."""
    out = subprocess.run([SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True)
    text = out.stdout + out.stderr  # with a lint: "Lints for rule X (line N, file):" and exit status 1
    assert out.returncode == 0 and "Lints for" not in text and "good condition" in text, text[-4000:]


def test_released_checkpoint_skips_pretraining(tmp_path):
    ckpt = tmp_path / "released.pth"
    ckpt.touch()
    wd = workflow_copy(tmp_path, lambda c: c["presets"]["embedded"]["checkpoints"].update(vit=str(ckpt)))
    out = dry_run(cwd=wd)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert counts["pretrain"] == 2 * 3  # the other two runs, each seed
    assert counts["evaluate"] == 2 * 3 + 1  # the released file: evaluated once, not once per seed


def test_schema_rejects_a_misspelt_key_before_any_job(tmp_path):
    wd = workflow_copy(tmp_path, lambda c: c["presets"]["embedded"]["resources"]["pretrain"].update(gpus_per_nod=1))
    out = dry_run(cwd=wd)
    assert out.returncode != 0
    assert "gpus_per_nod" in out.stderr and "resources" in out.stderr, out.stderr


def test_schema_rejects_a_wrong_type_naming_the_key(tmp_path):
    wd = workflow_copy(tmp_path, lambda c: c["presets"]["embedded"]["evaluate"].update(batch_size="big"))
    out = dry_run(cwd=wd)
    assert out.returncode != 0
    assert "batch_size" in out.stderr and "'big'" in out.stderr, out.stderr


def test_unknown_recipe_key_names_the_key(tmp_path):
    wd = workflow_copy(tmp_path, lambda c: c["presets"]["embedded"]["recipe"].update(learning_rate=1.0))
    out = dry_run(cwd=wd)
    assert out.returncode != 0
    assert "presets.embedded.recipe" in out.stderr and "learning_rate" in out.stderr, out.stderr


def _config_error(tmp_path, edit) -> str:
    """The one-line error `snakemake -n` gives for a config edited by ``edit``, before any DAG."""
    out = dry_run(cwd=workflow_copy(tmp_path, edit))
    assert out.returncode != 0 and "Building DAG" not in out.stderr, out.stderr[-2000:]
    return out.stderr


def test_a_vl_recipe_error_names_the_config_key_it_was_set_in(tmp_path):
    def vl(c):
        return c["presets"]["embedded"]["vl"]

    err = _config_error(tmp_path / "a", lambda c: vl(c)["recipe"].update(epochs=-1))
    assert "config key presets.embedded.vl.recipe.epochs: -1 is out of range; expected an int >= 1" in err
    err = _config_error(tmp_path / "b", lambda c: vl(c)["retrieval"].update(negatives=0))
    assert "config key presets.embedded.vl.retrieval.negatives: 0 is out of range" in err
    # an input size the encoders do not take: refused at planning, before Snakemake removes the last run's outputs
    err = _config_error(tmp_path / "c", lambda c: vl(c)["recipe"].update(img_size=56))
    assert re.search(r"config key presets\.embedded\.vl\.recipe\.img_size: 56 does not fit the visual encoder "
                     r"(abs)?vit_pico_patch8_64_gap \(presets\.embedded\.vl\.encoders\.(abs)?vit\), which takes 64x64 "
                     r"images; expected 64", err), err


def test_a_schema_choice_error_says_what_is_expected(tmp_path):
    err = _config_error(tmp_path, lambda c: c["presets"]["embedded"]["vl"]["encoders"]["vit"].update(checkpoint="/x.pth"))
    assert ("config key 'presets.embedded.vl.encoders.vit': give exactly one of 'run' (a pretraining run of this preset: "
            "its weights, every seed) and 'checkpoint' (a weights file)") in err
    assert "is valid under each of" not in err


def test_paper_preset_names_every_missing_dataset_path():
    out = dry_run("--config", "preset=paper")  # config.yaml's placeholder /datasets paths do not exist here
    assert out.returncode != 0
    for key in ("data.imagenet", "data.imagenet_c", "data.imagenet_a", "data.imagenet_r", "data.imagenet_sketch",
                "segmentation.datasets.voc.root", "segmentation.datasets.cityscapes.root",
                "segmentation.datasets.ade20k.root", "segmentation.backbones.absvit.checkpoint", "figures.scenes"):
        assert f"presets.paper.{key}: /" in out.stderr, (key, out.stderr)


def test_cli_lists_models():
    out = subprocess.run([sys.executable, "-m", "absvit", "models"], capture_output=True, text=True, check=True)
    assert "absvit_base_patch16_224" in out.stdout and "100.72M" in out.stdout


def test_cli_set_reads_json_values_and_exponent_floats():
    from absvit.arguments import key_values

    got = key_values(["warmup_lr=1e-5", "epochs=3", "auto_augment=rand-m9-mstd0.5-inc1", "repeated_aug=false", "compile=off"])
    assert got == {"warmup_lr": 1e-05, "epochs": 3, "auto_augment": "rand-m9-mstd0.5-inc1", "repeated_aug": False,
                   "compile": "off"}


def _tiny_embedded(config, lr=0.008):
    p = config["presets"]["embedded"]
    p["data"]["generate"]["per_class"] = {"train": 8, "val": 2, "imagenet-a": 1, "imagenet-r": 1, "imagenet-sketch": 1}
    p["recipe"].update(epochs=1, batch_size=16, lr=lr, workers=0)


def test_jobs_run_in_snakemakes_environment_and_a_changed_recipe_starts_fresh(tmp_path):
    """With no virtual environment on PATH (`snakemake` called by its path, as from a login shell), rules use
    Snakemake's own Python. Editing the recipe reruns the job, which moves the old checkpoint aside and trains anew."""
    wd = workflow_copy(tmp_path, _tiny_embedded)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # here `python` is missing, and `python3` has no torch
    target = "results/embedded/pretrain/vit/s0/model.pth"

    def run():
        out = subprocess.run([SNAKEMAKE, "--cores", "2", target], cwd=wd, env=env, capture_output=True, text=True)
        logs = "".join(p.read_text() for p in (wd / "results/embedded/logs").rglob("*.log"))
        assert out.returncode == 0, out.stderr + out.stdout + logs
        return torch.load(wd / target, weights_only=True)

    first = run()
    folder = wd / target.rsplit("/", 1)[0]
    assert first["args"]["lr"] == 0.008 and not list(folder.glob("stale-*"))
    config = yaml.safe_load((wd / "config.yaml").read_text())
    _tiny_embedded(config, lr=0.004)
    (wd / "config.yaml").write_text(yaml.safe_dump(config))
    second = run()
    assert second["args"]["lr"] == 0.004
    (stale,) = folder.glob("stale-*")
    assert torch.load(stale / "checkpoint.pth", weights_only=True)["args"]["lr"] == 0.008
    assert "moved it aside" in (wd / "results/embedded/logs/pretrain/vit-s0.log").read_text()


def test_the_conda_environment_pins_what_ci_installs():
    """Every rule's `conda:` environment lists requirements.lock's pins inline (Snakemake copies the file, so a
    relative `-r requirements.lock` would not resolve)."""
    env = yaml.safe_load((ROOT / "envs" / "environment.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = [line.strip() for line in (ROOT / "envs" / "requirements.lock").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pip == lock
    assert "python=3.11" in env["dependencies"]
