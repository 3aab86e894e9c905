# Config validation, the paths every stage shares, and every helper function the rules call (the
# rule files hold rules only).
import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from absvit.data import ATTACK_SUITES, LAYOUTS, SUITES  # dataset layouts; the suites of `absvit evaluate --suite`
from absvit.data.corruptions import CORRUPTIONS, SEVERITIES
from absvit.released import download_hint


def _validate(config):
    """Snakemake's schema validation, re-raised as one line naming the offending key."""
    try:
        validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    except WorkflowError as e:
        cause = e.__context__  # snakemake folds the jsonschema error into its message
        if not hasattr(cause, "absolute_path"):
            raise
        key = ".".join(map(str, cause.absolute_path)) or "(top level)"
        # a oneOf / not that fails says "is valid under each of ..." or "is not valid under any of ...": the
        # schema's own errorMessage says what is expected instead
        said = cause.schema.get("errorMessage") if cause.validator in ("oneOf", "anyOf", "not") else None
        raise WorkflowError(f"config.yaml: config key '{key}': {said or cause.message}") from None


_validate(config)
if config["preset"] not in config["presets"]:
    raise WorkflowError(f"config key 'preset': {config['preset']!r} is not one of presets {sorted(config['presets'])}")

PRESET = config["preset"]
# `--config plan_only=True` (what `absvit plan` passes): list a preset's jobs before its data exists. The configured
# paths are neither checked nor rule inputs (`configured`); a run that would execute jobs is refused (onstart).
PLAN_ONLY = config["plan_only"]
P = config["presets"][PRESET]
OUT = Path("results") / PRESET
TABLES = OUT / "tables"
LOGS = OUT / "logs"
BENCH = OUT / "benchmarks"
RUNS = P["runs"]
SEEDS = P["seeds"]  # every pretraining run, and every job downstream of it, runs once per seed
# What the preset makes besides evaluations: Tables 1-3 where it configures them (a preset of released files, such as
# `released`, has none of them) and the released files' table where it names released checkpoints.
COMPARISONS = [t for t in ("table2", "table3") if t in P]
SEG = P.get("segmentation") or {"backbones": {}, "datasets": {}, "recipe": {}}
TRAINED = [run for run in RUNS if run not in P["checkpoints"]]
VL = P.get("vl")  # V&L fine-tuning (vl.smk), where the preset configures it
ENV = "../../envs/environment.yaml"  # each rule's conda environment (relative to workflow/rules/)


def _check_config():
    from absvit.errors import UsageError
    from absvit.recipe import PretrainRecipe, SegmentRecipe, Where, check_patch_multiple
    from absvit.vl.preflight import check_img_size, name_input_size, task_recipe

    where = f"presets.{PRESET}"
    for table in COMPARISONS:
        for key, run in P[table].items():
            if run not in RUNS:
                raise WorkflowError(f"config key '{where}.{table}.{key}': run {run!r} is not in {where}.runs")
    for key in ("vit", "absvit") if "table3" in P else ():  # Table 3 compares a ViT with an AbSViT
        if not RUNS[P["table3"][key]]["model"].startswith(f"{key}_"):
            raise WorkflowError(f"config key '{where}.table3.{key}': run {P['table3'][key]!r} is a "
                                f"{RUNS[P['table3'][key]]['model']}, not a {key}_* model")
    stages = [("recipe", P, TRAINED, "its runs without a released checkpoint are pretrained"),
              ("pretrain", P["resources"], TRAINED, "its runs without a released checkpoint are pretrained"),
              ("segment", P["resources"], SEG["datasets"], "it configures segmentation"),
              ("imagenet_c", P["resources"], "generate" in P["data"], "it generates ImageNet-C"),
              ("vl", P["resources"], VL, "it configures V&L fine-tuning")]
    for key, section, needed, why in stages:
        if needed and key not in section:
            prefix = "" if section is P else "resources."
            raise WorkflowError(f"config key '{where}.{prefix}{key}': required, as {why}")
    for key, recipe in (("recipe", P.get("recipe", {})), ("segmentation.recipe", SEG["recipe"]),
                        *((f"segmentation.datasets.{d}.recipe", v["recipe"]) for d, v in SEG["datasets"].items())):
        if "seed" in recipe:
            raise WorkflowError(f"config key '{where}.{key}.seed': set the seeds with '{where}.seeds' (a list)")
    fig = P.get("figures")
    for key, kind in (("absvit_run", "absvit_"), ("vit_run", "vit_")) if fig else ():
        if fig[key] not in RUNS or not RUNS[fig[key]]["model"].startswith(kind):
            raise WorkflowError(f"config key '{where}.figures.{key}': {fig[key]!r} is not a {kind}* run of {where}.runs")
    for run in P["checkpoints"]:
        if run not in RUNS:
            raise WorkflowError(f"config key '{where}.checkpoints.{run}': no such run in {where}.runs")
    seg = SEG
    for name, b in seg["backbones"].items():
        if b.get("run") and b["run"] not in RUNS:
            raise WorkflowError(f"config key '{where}.segmentation.backbones.{name}.run': no run {b['run']!r} in {where}.runs")
        if (b["kind"] == "absvit") != b["model"].startswith("absvit_"):
            raise WorkflowError(f"config key '{where}.segmentation.backbones.{name}': kind {b['kind']!r} "
                                f"does not match model {b['model']!r}")
    for name, d in seg["datasets"].items():
        if "generate" not in seg and "root" not in d:
            raise WorkflowError(f"config key '{where}.segmentation.datasets.{name}.root': required (the dataset's folder)")
    for kind, e in (VL or {}).get("encoders", {}).items():
        if e.get("run") and (e["run"] not in RUNS or RUNS[e["run"]]["model"] != e["model"]):
            raise WorkflowError(f"config key '{where}.vl.encoders.{kind}.run': {e['run']!r} is not a run of "
                                f"{where}.runs with model {e['model']!r}")
        if not e["model"].startswith(f"{kind}_"):
            raise WorkflowError(f"config key '{where}.vl.encoders.{kind}.model': {e['model']!r} is not a {kind}_* model")
    try:
        recipe = PretrainRecipe.from_dict(P.get("recipe", {}), where=f"{where}.recipe")  # types and ranges of every key
        for run in TRAINED:  # the img_size each pretraining run trains at: a multiple of its model's patch size
            check_patch_multiple(recipe.img_size, RUNS[run]["model"], where=f"{where}.recipe")
        for task in ("vqa", "retrieval") if VL else ():
            r, keys = task_recipe(VL, task, where)
            res = P["resources"]["vl"]  # one process per GPU (one on a CPU node), as `absvit submit` starts them
            r.micro_batch(res.get("nodes", 1) * max(res["gpus_per_node"], 1), where=keys)
            for kind, e in VL["encoders"].items():  # the recipe's input size is each encoder's
                size = recipe.img_size if e.get("run") else name_input_size(e["model"])
                check_img_size(r.img_size, size, f"{e['model']} ({where}.vl.encoders.{kind})", keys("img_size"))
        for name, d in seg["datasets"].items():
            values, keys = Where.layered((f"{where}.segmentation.recipe", seg["recipe"]),
                                         (f"{where}.segmentation.datasets.{name}.recipe", d["recipe"]))
            SegmentRecipe.from_dict(values, where=keys)
    except UsageError as e:
        raise WorkflowError(f"config key {e}") from None


_check_config()

# Every verb runs with the Python that runs Snakemake (the project's environment), not whatever
# `python` is first on PATH; with --software-deployment-method conda, with the rule's environment's.
CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if CONDA else shlex.quote(sys.executable)

# Dataset roots: generated under results/data/embedded, or the real paths from the preset.
if "generate" in P["data"]:
    DATA_ROOT = Path("results") / "data" / "embedded"
    DATA = {split: DATA_ROOT / split for split in ("train", "val", "imagenet-a", "imagenet-r", "imagenet-sketch")}
    DATA["imagenet-c"] = DATA_ROOT / "imagenet-c"
else:
    root = Path(P["data"]["imagenet"])
    DATA = {"train": root / "train", "val": root / "val", "imagenet-c": Path(P["data"]["imagenet_c"]),
            "imagenet-a": Path(P["data"]["imagenet_a"]), "imagenet-r": Path(P["data"]["imagenet_r"]),
            "imagenet-sketch": Path(P["data"]["imagenet_sketch"])}
SUITE_DATA = {**{s: DATA[s] for s in SUITES if s not in ("clean", *ATTACK_SUITES)},
              **{s: DATA["val"] for s in ("clean", *ATTACK_SUITES)}}  # FGSM / PGD attack the clean val images
SUITE_KEYS = {"clean": "imagenet", "imagenet-c": "imagenet_c", "imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r",
              "imagenet-sketch": "imagenet_sketch"}  # each suite's key under presets.<preset>.data
GENERATED = "generate" in P["data"]


def _configured_paths():
    """(config key, path, expected layout) of every file or folder the preset names."""
    where = f"presets.{PRESET}"
    if not GENERATED:
        yield f"{where}.data.imagenet", DATA["train"], LAYOUTS["imagenet/train"]
        yield f"{where}.data.imagenet", DATA["val"], LAYOUTS["imagenet/val"]
        for key in ("imagenet_c", "imagenet_a", "imagenet_r", "imagenet_sketch"):
            yield f"{where}.data.{key}", Path(P["data"][key]), LAYOUTS[key]
    for run, path in P["checkpoints"].items():
        yield f"{where}.checkpoints.{run}", Path(path), LAYOUTS["checkpoint"] + download_hint(RUNS[run]["model"])
    if P.get("figures") and not isinstance(P["figures"]["scenes"], dict):
        yield f"{where}.figures.scenes", Path(P["figures"]["scenes"]) / "manifest.csv", LAYOUTS["scenes"]
    seg = SEG
    if "generate" not in seg and seg["datasets"]:
        for name, d in seg["datasets"].items():
            yield f"{where}.segmentation.datasets.{name}.root", Path(d["root"]), LAYOUTS[name]
    for name, b in seg["backbones"].items():
        if b.get("checkpoint"):
            kind = "resnet_weights" if b["kind"] == "resnet" else "checkpoint"
            yield f"{where}.segmentation.backbones.{name}.checkpoint", Path(b["checkpoint"]), LAYOUTS[kind]
    if VL:
        yield from _configured_vl_paths(f"{where}.vl")


def _configured_vl_paths(where):
    for kind, e in VL["encoders"].items():
        if e.get("checkpoint"):
            yield f"{where}.encoders.{kind}.checkpoint", Path(e["checkpoint"]), LAYOUTS["checkpoint"]
    if "generate" not in VL["data"]:
        yield f"{where}.data.vqa", Path(VL["data"]["vqa"]), LAYOUTS["vqa"]
        yield f"{where}.data.flickr30k", Path(VL["data"]["flickr30k"]), LAYOUTS["flickr30k"]
    if not isinstance(VL["text_encoder"], dict):
        yield f"{where}.text_encoder", Path(VL["text_encoder"]) / "config.json", LAYOUTS["text_encoder"]
    if VL.get("figure5"):
        yield f"{where}.figure5", Path(VL["figure5"]), LAYOUTS["figure5"]


def _check_paths():
    """Before any DAG is built: one line per configured path that does not exist."""
    missing = [f"  {key}: {path} does not exist (expected {layout})" for key, path, layout in _configured_paths()
               if not path.exists()]
    if missing:
        raise WorkflowError(f"config.yaml: preset {PRESET!r} names {len(missing)} path(s) that do not exist "
                            "(set them in config.yaml or with --config):\n" + "\n".join(missing))


if not PLAN_ONLY:
    _check_paths()


def _label_space(run):
    """The classes a run's model has: its training set's class folders, or what its released file records
    (ImageNet-1k for an official file, which records none)."""
    from absvit.data.readers import class_folder_names, label_space

    if run not in P["checkpoints"]:
        return class_folder_names(DATA["train"])
    from absvit.checkpoint import read_checkpoint, recorded_setup

    return recorded_setup(read_checkpoint(P["checkpoints"][run]))["classes"] or label_space("imagenet-1k")


def _check_label_spaces():
    """Before any DAG is built: every evaluation set fits the label space of every run evaluated on it (which
    classes val / IN-C / IN-Sketch must hold, which IN-A / IN-R classes map onto it), one line per problem."""
    from absvit.data.readers import suite_problems
    from absvit.errors import CheckpointError, DatasetError

    problems = {}
    for run in RUNS:
        try:
            classes = _label_space(run)
        except (CheckpointError, DatasetError) as e:
            problems[str(e)] = [run]
            continue
        for suite in (s for s in SUITES if s not in ATTACK_SUITES):  # the attacks read the clean set: checked once
            for line in suite_problems(suite, SUITE_DATA[suite], classes):
                problems.setdefault(f"presets.{PRESET}.data.{SUITE_KEYS[suite]} ({suite}): {line}", []).append(run)
    if problems:
        raise WorkflowError(f"config.yaml: preset {PRESET!r}: {len(problems)} evaluation set(s) do not fit the label "
                            "space of the runs evaluated on them (their classes: the training set's class folders, or "
                            "what a released checkpoint records):\n"
                            + "\n".join(f"  {line} (runs: {', '.join(runs)})" for line, runs in problems.items()))


if not GENERATED and not PLAN_ONLY:  # the generated sets hold the classes the generator writes into train/
    _check_label_spaces()


onstart:
    if PLAN_ONLY:
        raise WorkflowError("config key 'plan_only': True lists the jobs (snakemake -n, absvit plan) and runs none; "
                            "run without it")


def configured(path, generated=False):
    """``[path]`` as a rule input, where ``path`` is what the preset names (a dataset folder, a released checkpoint,
    the scenes folder) unless ``generated`` (made by this workflow). Every such input goes through here:
    under plan_only a configured path is left out, so that Snakemake lists the jobs before the data exists."""
    return [path] if generated or not PLAN_ONLY else []


def submit(stage, wildcards_name):
    """`python -m absvit submit ... --` for a stage: launcher and its SLURM request from config."""
    r = P["resources"][stage]
    opts = [f"--launcher {config['launcher']}", f"--folder {OUT / 'submitit' / stage / wildcards_name}",
            f"--name absvit-{stage}-{wildcards_name}", f"--timeout-min {r['timeout_min']}",
            f"--nodes {r.get('nodes', 1)}", f"--gpus-per-node {r['gpus_per_node']}",
            f"--cpus-per-task {r['cpus_per_task']}", f"--mem-gb {r['mem_gb']}"]
    opts += [f"--{k} {r[k]}" for k in ("partition", "constraint", "account", "qos") if r.get(k)]
    return f"{PYTHON} -m absvit submit " + " ".join(opts) + " --"


def tracking():
    return f"--tracking-uri {config['mlflow_uri']}" if config["mlflow_uri"] else ""


def pretrained(run):
    """Runs that `pretrain` makes (once per seed); a run with a released checkpoint is that one file."""
    return run not in P["checkpoints"]


def run_seeds(run):
    """The seeds of a run's weights: every seed of a pretrained run, the first alone for a released file."""
    return SEEDS if pretrained(run) else SEEDS[:1]


def weights(run, seed):
    """A run's weights as an input: its configured released checkpoint, else what `pretrain` makes for ``seed``."""
    if run in P["checkpoints"]:
        return configured(P["checkpoints"][run])
    return expand(rules.pretrain.output.model, run=run, seed=seed)


def recipe_json(run, seed):
    """A pretraining job's recipe, as one JSON object for `--recipe` (checked once, by the verb)."""
    values = {**P["recipe"], "seed": int(seed)}
    if "var_weight" in RUNS[run]:
        values["var_weight"] = RUNS[run]["var_weight"]
    return json.dumps(values, sort_keys=True)


EVAL_DIR = OUT / "eval" / "{run}" / "s{seed}"  # `evaluate` writes <suite>.json here


def eval_outputs(runs):
    """Every eval JSON of ``runs``: each run x its seeds x suite."""
    return [path for run in runs for path in expand(EVAL_DIR / "{suite}.json", run=run, seed=run_seeds(run), suite=SUITES)]


def comparison_inputs(table):
    """Every eval JSON of the runs presets.<preset>.<table> compares."""
    return eval_outputs(P[table].values())


def comparison_arms(table):
    """`ARM=RUN:EVAL_DIR ...`, one per arm and seed, of the runs named by presets.<preset>.<table>."""
    return " ".join(f"{arm}={run}:{expand(EVAL_DIR, run=run, seed=seed)[0]}"
                    for arm, run in P[table].items() for seed in run_seeds(run))


def suite_inputs():
    """Evaluation's data inputs: every suite's folder (once: the attacks read the clean one), generated ImageNet-C as
    its shards."""
    folders = dict.fromkeys(SUITE_DATA[s] for s in SUITES if not (GENERATED and s == "imagenet-c"))
    if GENERATED:
        return [*folders, *expand(rules.imagenet_c.output.shard, corruption=CORRUPTIONS, severity=SEVERITIES)]
    return [path for folder in folders for path in configured(folder)]


# Segmentation (Table 1)
SEG_BACKBONES = SEG["backbones"]
SEG_DATASETS = SEG["datasets"]
SEG_GENERATED = "generate" in SEG
SEG_DATA_ROOT = Path("results") / "data" / PRESET / "segmentation"


def seg_root(dataset):
    """A segmentation dataset's folder as an input: generated, or the configured root."""
    if SEG_GENERATED:
        return [SEG_DATA_ROOT / dataset]
    return configured(Path(SEG_DATASETS[dataset]["root"]))


def seg_weights(name, seed):
    """The backbone's starting weights: a pretraining run's model.pth of ``seed``, a configured file, or none."""
    b = SEG_BACKBONES[name]
    if b.get("run"):
        return weights(b["run"], seed)
    return configured(b["checkpoint"]) if b.get("checkpoint") else []


# The appendix figures (figures.smk), when the preset has a `figures:` key
FIG = P.get("figures")
FIGURES = OUT / "figures"
FIGURE_TITLES = {"fig1_attention": "Fig. 1: bottom-up vs top-down attention",  # each figure's file stem (PNG + PDF)
                 "fig3_alpha": "Fig. 3: the feedback scale alpha", "fig4_decoder": "Fig. 4: what the first-layer tokens hold"}
SCENES_GENERATED = bool(FIG) and isinstance(FIG["scenes"], dict)
SCENES = Path("results") / "data" / PRESET / "scenes" if SCENES_GENERATED else Path(FIG["scenes"]) if FIG else None


def figure_outputs():
    """The figures' score tables of every seed of the AbSViT run (none without `figures:`)."""
    if not FIG:
        return []
    return expand(FIGURES / "s{seed}" / "figures.json", seed=run_seeds(FIG["absvit_run"]))


def seg_recipe_json(dataset, seed):
    """A segmentation job's recipe (the preset's, then the dataset's keys), as one JSON object for `--recipe`."""
    return json.dumps({**SEG["recipe"], **SEG_DATASETS[dataset]["recipe"], "seed": int(seed)}, sort_keys=True)


def table_stems():
    """What the tables job writes, each table as .tex, .csv, .md and .html: Table 1 with segmentation, Tables 2 / 3
    where the preset names their runs, Table 4 with V&L, the figures' scores with figures (Figure 5's with a manifest),
    and the cost table always."""
    wanted = {"table1": SEG_DATASETS, "table2": "table2" in P, "table3": "table3" in P, "table4": VL,
              "figures": FIG, "figure5": VL_FIGURE5, "cost": True}
    return [stem for stem, want in wanted.items() if want]


# Each table's category and title in Snakemake's report (a caption each: workflow/report/<stem>.rst)
TABLE_TITLES = {"table1": ("Table 1", "Table 1: semantic segmentation (mIoU)"),
                "table2": ("Table 2", "Table 2: the L_var ablation"),
                "table3": ("Table 3", "Table 3: ViT vs AbSViT robustness"),
                "table4": ("Table 4", "Table 4: V&L fine-tuning, ViT vs AbSViT"),
                "figures": ("Figures", "Scores of Figs. 1, 3, 4", "Scores (all seeds)"),
                "figure5": ("Figures", "Scores of Figure 5 (V&L)", "Scores (all seeds)"),
                "released": ("Released", "The released checkpoints re-measured"),
                "cost": ("Cost", "What the run cost, per stage")}


def released_outputs(*exts):
    """The released files' table (`absvit released`) of a preset with released checkpoints: released.<ext>."""
    return [TABLES / f"released.{ext}" for ext in (exts or ("tex", "csv", "md"))] if P["checkpoints"] else []


# Snakemake's report (`snakemake --report results/<preset>/report.html`): which outputs it shows, under which
# category (one per table, "Figures", "Cost", "Report"), each captioned by workflow/report/<kind>.rst
def reported(path, kind, category, label, subcategory=None):
    """``path`` marked for the report: listed as ``label`` under ``category`` (and ``subcategory``; wildcards such as
    ``{seed}`` are filled in), with the caption workflow/report/<kind>.rst (RST with Jinja: ``snakemake.config``,
    ``snakemake.wildcards``, ``snakemake.params``)."""
    return report(path, caption=f"../report/{kind}.rst", category=category, subcategory=subcategory,
                  labels={"result": label})


def table_report(stem, category, title, subcategory=None):
    """A table in the report as two results, both captioned by workflow/report/<stem>.rst: its HTML page
    (``absvit html`` writes it from <stem>.md; shown inline) and its CSV (a download)."""
    return [reported(TABLES / f"{stem}.html", stem, category, title, subcategory),
            reported(TABLES / f"{stem}.csv", stem, category, f"{title} (CSV)", subcategory)]


# V&L fine-tuning (vl.smk): the generated data and text encoder of the embedded default, or the configured ones
VL_GENERATED = bool(VL) and "generate" in VL["data"]
VL_DATA_ROOT = Path("results") / "data" / PRESET / "vl"
VL_TEXT = (Path("results") / "data" / PRESET / "vl-text-encoder" if VL and isinstance(VL["text_encoder"], dict)
           else Path(VL["text_encoder"]) if VL else None)
VL_DATA = ({"vqa": VL_DATA_ROOT / "vqa", "retrieval": VL_DATA_ROOT / "flickr30k"} if VL_GENERATED
           else {"vqa": Path(VL["data"]["vqa"]), "retrieval": Path(VL["data"]["flickr30k"])} if VL else {})
VL_FIGURE5 = VL_DATA_ROOT / "vqa" / "figure5.csv" if VL_GENERATED else Path(VL["figure5"]) if VL and VL.get("figure5") else None
if VL and not PLAN_ONLY:  # the text encoder's folder and each task's splits, as the jobs will read them
    from absvit.errors import CheckpointError, DatasetError
    from absvit.vl.preflight import check_inputs

    try:
        check_inputs(VL, VL_DATA, f"presets.{PRESET}", Path(".snakemake") / "absvit-checks")
    except (CheckpointError, DatasetError) as e:
        raise WorkflowError(f"config.yaml: preset {PRESET!r}: {e}") from None
VL_OUT = OUT / "vl" / "{task}" / "{encoder}" / "s{seed}"


def vl_inputs(task):
    """A V&L job's data and text encoder: made by `vl_data`, or the configured folders."""
    if VL_GENERATED:
        return {"data": VL_DATA_ROOT, "text_encoder": VL_TEXT}
    return {"data": configured(VL_DATA[task]), "text_encoder": configured(VL_TEXT)}


def vl_encoder(kind, seed):
    """The visual encoder's weights: its pretraining run's of ``seed``, or the configured file."""
    e = VL["encoders"][kind]
    return weights(e["run"], seed) if e.get("run") else configured(e["checkpoint"])


def vl_recipe_json(task, seed):
    """A V&L job's recipe (the preset's, then the task's keys) as one JSON object for `--recipe`."""
    return json.dumps({**VL["recipe"], **VL.get(task, {}), "seed": int(seed)}, sort_keys=True)


def vl_outputs():
    """Every V&L result: task x encoder x seed."""
    if not VL:
        return []
    return expand(VL_OUT / "result.json", task=("vqa", "retrieval"), encoder=("vit", "absvit"), seed=SEEDS)


def figure5_outputs():
    """Figure 5's score table of every seed (none without a Figure 5 manifest)."""
    return expand(FIGURES / "s{seed}" / "fig5.csv", seed=SEEDS) if VL_FIGURE5 else []
