"""``megactor``: the command line. Errors the user can fix print one line and exit 2; a run whose shards
failed exits 1; success exits 0."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from curation.errors import MegactorError

EPILOG = """examples:
  megactor curate --input ~/data/hdtf --kind hdtf --output runs/hdtf
  megactor curate --input videos/ --output runs/demo --score-all
  megactor filter --manifest runs/hdtf --output runs/hdtf-400px --face-res-min 400
  megactor augment --manifest runs/hdtf --output runs/hdtf-aug
  megactor train --stage 1 --manifest runs/hdtf-aug --output runs/train
  megactor animate --checkpoint runs/train --reference face.png --driving drive.mp4 --audio speech.wav \\
      --mode mixed --visual-alpha 0.8 --output out.mp4
  megactor evaluate --checkpoint runs/train --manifest runs/hdtf --output runs/eval
  megactor inventory --input ~/data/vox2 --kind voxceleb2
  megactor summary runs/hdtf
  megactor report runs/hdtf
  megactor weights list

environment: MEGACTOR_WEIGHTS_DIR (model cache), PREFECT_API_URL (a Prefect server; unset: a local one is
started for the run), MEGACTOR_OFFLINE=1 (never download)."""


def _quiet_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _set_overrides(getattr(args, "set", None))
    flags = {
        "face_res_min": "thresholds.face_res_px_min", "yaw_max": "thresholds.yaw_abs_mean_deg_max",
        "sync_c_min": "thresholds.sync_c_min", "sync_d_max": "thresholds.sync_d_max",
        "profile": "profile", "ray_address": "runtime.ray_address", "device": "runtime.device",
    }
    for attr, key in flags.items():
        if getattr(args, attr, None) is not None:
            overrides[key] = getattr(args, attr)
    if getattr(args, "score_all", False):
        overrides["runtime.score_all"] = True
    if getattr(args, "no_require_lip_sync", False):
        overrides["thresholds.require_lip_sync"] = False
    if getattr(args, "no_sync", False):
        overrides["sync.enabled"] = False
    return overrides


def _add_threshold_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("thresholds (paper defaults)")
    group.add_argument("--face-res-min", type=float, help="minimum effective face resolution, px (600)")
    group.add_argument("--yaw-max", type=float, help="maximum mean |yaw|, degrees (30)")
    group.add_argument("--sync-c-min", type=float, help="Sync-C must exceed this (6)")
    group.add_argument("--sync-d-max", type=float, help="Sync-D must be below this (8.5)")
    group.add_argument("--no-require-lip-sync", action="store_true",
                       help="decide without Sync-C/Sync-D (otherwise unscored clips are 'pending')")
    group.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any config value, dotted (repeatable), e.g. --set face.sample_fps=2")


def _load(args: argparse.Namespace, with_input: bool):
    from curation.config import config_for_inputs

    inputs = (args.input or []) if with_input else []
    return config_for_inputs(inputs, kind=getattr(args, "kind", "folder"), dataset=getattr(args, "dataset", None),
                             config_file=getattr(args, "config", None), overrides=_overrides(args),
                             follow_links_outside=not getattr(args, "refuse_outside_links", False))


def cmd_curate(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    config = _load(args, with_input=True)
    from curation.pipeline import preflight
    from flows.server import LocalPrefectServer

    preflight(config)  # bad input fails here, before a server or Ray starts

    server = nullcontext() if os.environ.get("PREFECT_API_URL") else LocalPrefectServer(keep=args.keep_server)
    with server as running:
        if running is not None:
            print(f"Prefect UI: {running.ui_url} (local server for this run)", flush=True)
        from flows.curate import run_curation  # after PREFECT_API_URL is set: Prefect reads it at import
        summary = run_curation(config, args.output, executor=args.executor)
    if running is None:
        ui = f"{os.environ['PREFECT_API_URL'].removesuffix('/api')} (PREFECT_API_URL)"
    elif args.keep_server and running.process is not None:
        ui = f"{running.ui_url} (local server left running: kill {running.process.pid} to stop it)"
    elif running.process is None:
        ui = f"{running.ui_url} (an already running local server)"
    else:
        ui = f"stopped with the run; `prefect server start` with PREFECT_HOME={running.home} shows its history"
    _print_outcome(Path(args.output).resolve(), summary, ui)
    return 0


def _print_outcome(output: Path, summary: dict[str, Any], ui: str) -> None:
    print()
    print(f"clips: {summary['clips']} from {summary['sources']} sources; status: {summary['status']}")
    if summary["reject_reasons"]:
        print("reject reasons: " + ", ".join(f"{k}={v}" for k, v in summary["reject_reasons"].items()))
    print(f"manifest:   {output / 'manifest'}  (pandas.read_parquet on this directory)")
    print(f"summary:    {output / 'summary.json'}")
    print(f"card:       {output / 'README.md'}")
    print(f"Prefect UI: {ui}")


def cmd_augment(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from curation.augment import pipeline
    from curation.augment.config import load_augment_config
    from flows.server import LocalPrefectServer

    overrides = _set_overrides(args.set)
    flags = {"kinds": "kinds", "device": "runtime.device", "ray_address": "runtime.ray_address", "seed": "seed"}
    for attr, key in flags.items():
        if getattr(args, attr, None) is not None:
            overrides[key] = getattr(args, attr)
    if args.identity_folder:
        overrides["identity.pool"] = "folder"
        overrides["identity.folder"] = str(Path(args.identity_folder).resolve())
    if isinstance(overrides.get("kinds"), str):
        overrides["kinds"] = [k.strip() for k in overrides["kinds"].split(",") if k.strip()]
    config = load_augment_config(args.config, overrides)
    source = pipeline.manifest_dir(args.manifest)
    if Path(args.output).resolve() in (source, source.parent):
        raise MegactorError("--output must differ from the curated run (the curated run is never modified)")
    pipeline.preflight(config, source)  # bad input fails here, before a server or Ray starts
    if config.variants_per_clip("faceswap"):
        print(f"note: {pipeline.LICENCE_NOTE}", file=sys.stderr)

    server = nullcontext() if os.environ.get("PREFECT_API_URL") else LocalPrefectServer(keep=args.keep_server)
    with server as running:
        if running is not None:
            print(f"Prefect UI: {running.ui_url} (local server for this run)", flush=True)
        from flows.augment import run_augment  # after PREFECT_API_URL is set: Prefect reads it at import
        summary = run_augment(config, source, args.output, executor=args.executor)
    output = Path(args.output).resolve()
    print()
    print(f"variants: {summary['variants']} of {summary['kept_clips']} kept clips; status: {summary['status']}")
    for kind, d in summary["kinds"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in d["reasons"].items()) or "none"
        print(f"  {kind:<9} {d['status']}  clips with a usable variant: {d['clips_with_usable']}  reasons: {reasons}")
    print(f"variants:   {output / 'variants'}  (pandas.read_parquet on this directory)")
    print(f"card:       {output / 'README.md'}")
    print(f"train with: megactor train --stage 1 --manifest {output}")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from curation import manifest
    from curation.io import part_files, write_json_atomic

    source = Path(args.manifest)
    if (source / "manifest").is_dir():
        source = source / "manifest"
    if not part_files(source):
        raise MegactorError(f"no manifest part files in {source} (expected a megactor curate or filter output)")
    config = _load(args, with_input=False)
    output = Path(args.output)
    target = (output / "manifest").resolve()
    if target in {source.resolve(), manifest.scores_dir(source)} or output.resolve() == source.parent.resolve():
        raise MegactorError("--output must differ from the input manifest and the scores it re-decides "
                            "(they are never modified)")
    existing = part_files(target)
    if existing and "refiltered_from" not in manifest.read_provenance(existing[0]):
        raise MegactorError(f"{target} holds a curated manifest, not a megactor filter output: choose another "
                            "--output (it would be replaced)")
    thresholds = config.thresholds.model_dump()
    result = manifest.refilter(source, target, config.thresholds,
                               {"thresholds": thresholds, "refiltered_from": str(source.resolve())},
                               materialize=args.materialize)
    status = dict(result.status.most_common())
    reasons = dict(result.reasons.most_common())
    scores = [str(d) for d in result.scores_dirs]
    write_json_atomic({"scores": scores[0] if len(scores) == 1 else scores, "materialized": args.materialize,
                       "refiltered_from": str(source.resolve()), "thresholds": thresholds, "rows": result.rows,
                       "status": status, "reasons": reasons}, output / "refilter.json")
    kind = "standalone manifest" if args.materialize else f"decisions over the scores in {', '.join(scores)}"
    print(f"{len(result.parts)} part(s), {result.rows} clips re-decided -> {target} ({kind})")
    print("status: " + ", ".join(f"{s}={n}" for s, n in status.items()))
    print("reasons: " + (", ".join(f"{r}={n}" for r, n in reasons.items()) or "none"))
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    from curation import inventory
    from curation.sources import make_source

    adapters = [make_source(args.kind, Path(p).resolve(), args.dataset) for p in args.input]
    table = inventory.build_inventory(adapters, workers=args.workers, progress=True)
    if args.output:
        path = inventory.write_inventory(table, Path(args.output) / "inventory")
        print(f"inventory: {path}")
    print(inventory.format_hours_table(inventory.hours_by_dataset(table)))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    path = Path(args.output) / "summary.json"
    if not path.is_file():
        raise MegactorError(f"no summary.json in {args.output} (has a curation run finished there?)")
    summary = json.loads(path.read_text())
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['clips']} clips from {summary['sources']} sources; status {summary['status']}")
    for d in summary["datasets"]:
        print(f"  {d['dataset']:<20} {d['hours_in']:9.3f} h in  {d['hours_kept']:9.3f} h kept "
              f"({d['kept_pct_hours']:.1f} %)  clips {d['clips_kept']}/{d['clips']}")
    print("reject reasons: " + (", ".join(f"{k}={v}" for k, v in summary["reject_reasons"].items()) or "none"))
    rtf = summary.get("scoring_realtime_factor")
    if rtf:
        print(f"scoring speed: {rtf:.2f} s of video per scorer-second")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from curation.report import build_report

    print(build_report(args.run, args.output))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from curation import weights

    names = list(args.names)
    if args.profile:
        from curation.config import load_config
        from curation.pipeline import build_scorers

        config = load_config(None, {"profile": args.profile})
        names += [name for scorer in build_scorers(config, device="cpu") for name in scorer.weight_sources()]
    if args.augment:
        from curation.augment.config import load_augment_config
        from curation.augment.pipeline import build_components

        made = build_components(load_augment_config(), "mediapipe", "cpu").values()
        names += [name for component in made for name in component.weight_sources()]
    if args.evaluate:
        from flows.evaluation_config import EVAL_WEIGHTS

        names += ["sd-vae-ft-ema", "whisper-tiny", "face_landmarker", *EVAL_WEIGHTS]
    names = list(dict.fromkeys(names)) or sorted(weights.REGISTRY)
    for name in names:
        weights.get_spec(name)  # an unknown name fails before anything is downloaded
    if args.action == "list":
        print(f"cache: {weights.weights_dir()}" + (f"  (mirror: {os.environ['MEGACTOR_WEIGHTS_MIRROR']})"
                                                    if os.environ.get("MEGACTOR_WEIGHTS_MIRROR") else ""))
        for name in names:
            spec = weights.REGISTRY[name]
            state, path = weights.status(name)
            size = f"{spec.size_bytes / 1e6:7.1f} MB" if spec.size_bytes else f"{len(spec.files):3d} files "
            check = "" if spec.verified else "  (unverified: no published sha256; recorded at fetch)"
            print(f"  {name:<16} {state:<8} {size}  {path}{check}")
            print(f"  {'':<16} {spec.description}; licence: {spec.licence}")
        missing = [n for n in names if weights.status(n)[0] != "ok"]
        if missing:
            print(f"fetch with: megactor weights fetch {' '.join(missing)}")
        return 0
    for name in names:
        print(f"{name}: {weights.fetch(name, progress=True)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from training.config import load_train_config

    overrides = _set_overrides(args.set)
    if args.manifest:
        overrides["data.manifest_dir"] = str(Path(args.manifest).resolve())
    if overrides.get("init_from"):  # a path typed on the command line is the caller's, relative to where they are
        overrides["init_from"] = str(Path(overrides["init_from"]).resolve())
    stages = [1, 2, 3] if args.stage == "all" else [int(args.stage)]
    if args.config and len(stages) > 1:
        raise MegactorError("--config names one stage's file; with --stage all, the three embedded stage configs "
                            "are used (change them with --set, or train the stages one by one)")
    configs = []
    for stage in stages:
        stage_overrides = dict(overrides)
        if args.output:
            stage_overrides["output"] = str(Path(args.output).resolve() / f"stage{stage}")
        if args.stage == "all" and stage > 1:
            stage_overrides["init_from"] = str(Path(configs[-1].output) / "final")  # replaced by the flow too
        configs.append(load_train_config(args.config, stage=stage,
                                         overrides=stage_overrides))
    if args.executor == "local" and any(config.num_workers != 1 for config in configs):
        raise MegactorError(f"the local executor trains in one process: num_workers is {configs[0].num_workers} "
                            f"(use --executor ray for more workers)")
    from flows.server import LocalPrefectServer

    server = nullcontext() if os.environ.get("PREFECT_API_URL") else LocalPrefectServer(keep=args.keep_server)
    with server as running:
        if running is not None:
            print(f"Prefect UI: {running.ui_url} (local server for this run)", flush=True)
        from flows.train import train_all, train_stage  # after PREFECT_API_URL is set

        if len(configs) == 1:
            results = [train_stage(configs[0], ray_address=args.ray_address, executor=args.executor)]
        else:
            results = train_all(configs, ray_address=args.ray_address, executor=args.executor)
    for config, result in zip(configs, results, strict=True):
        loss = result["metrics"].get("loss")
        print(f"stage {config.stage}: {result['steps']} steps, last loss {loss if loss is None else round(loss, 5)}, "
              f"final checkpoint {result['final_checkpoint']}")
    return 0


def cmd_animate(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    if args.jobs:
        if not args.checkpoint:
            raise MegactorError("--jobs needs --checkpoint")
        from flows.server import LocalPrefectServer

        server = nullcontext() if os.environ.get("PREFECT_API_URL") else LocalPrefectServer(keep=False)
        with server as running:
            if running is not None:
                print(f"Prefect UI: {running.ui_url} (local server for this run)", flush=True)
            from flows.animate import run_animate_batch

            rows = run_animate_batch(args.jobs, args.checkpoint, device=args.device, scheduler=args.scheduler,
                                     ray_address=args.ray_address, overwrite=args.overwrite)
        counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "skipped", "error")}
        for row in rows:
            if row["status"] == "error":
                print(f"error: {row['output']}: {row['error']}", file=sys.stderr)
        print(f"{len(rows)} jobs: {counts['ok']} made, {counts['skipped']} already there, {counts['error']} failed; "
              f"results in {Path(args.jobs).resolve().with_suffix('.results.csv')}")
        return 1 if counts["error"] else 0
    missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--reference", args.reference),
                                        ("--output", args.output)) if not value]
    if missing:
        raise MegactorError(f"animate needs {', '.join(missing)} (or --jobs FILE for a batch)")
    from tqdm import tqdm

    from curation.devices import resolve_device
    from inference.pipeline import AnimationPipeline

    if Path(args.output).exists() and not args.overwrite:
        raise MegactorError(f"{args.output} exists (pass --overwrite to replace it)")
    pipeline = AnimationPipeline.from_pretrained(args.checkpoint, device=resolve_device(args.device),
                                                 scheduler=args.scheduler)
    bar = tqdm(desc="denoising", unit="window-step")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        animation = pipeline(args.reference, args.driving, args.audio, mode=args.mode,
                             visual_alpha=_number_or_path(args.visual_alpha),
                             audio_scale=_number_or_path(args.audio_scale), steps=args.steps,
                             guidance=args.guidance, seed=args.seed, output=args.output, progress=progress)
    finally:
        bar.close()
        pipeline.close()
    print(f"{animation.output}: {len(animation.frames)} frames at {animation.fps:g} fps "
          f"({len(animation.frames) / animation.fps:.2f} s), {animation.seconds:.1f} s, "
          f"{animation.seconds_per_frame:.3f} s per generated frame")
    return 0


def _number_or_path(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def cmd_evaluate(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from flows.evaluation_config import EvalConfig, preflight

    data: dict[str, Any] = {}
    if args.config:
        from curation.config import read_yaml_mapping

        data = read_yaml_mapping(Path(args.config), "evaluation config")
    for key, value in _set_overrides(args.set).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        config = EvalConfig.model_validate(data)
    except Exception as error:  # pydantic's message names the bad key and value
        raise MegactorError(f"invalid evaluation configuration: {error}") from None
    videos = {}
    for item in args.videos or []:
        label, _, folder = item.rpartition("=")
        videos[label or Path(folder).name] = folder
    from flows.server import LocalPrefectServer

    preflight(args.manifest, config, args.checkpoint, videos)  # before a server starts
    server = nullcontext() if os.environ.get("PREFECT_API_URL") else LocalPrefectServer(keep=False)
    with server as running:
        if running is not None:
            print(f"Prefect UI: {running.ui_url} (local server for this run)", flush=True)
        from flows.evaluate import markdown_table, run_evaluation

        summary = run_evaluation(args.manifest, args.output, config, checkpoint=args.checkpoint, videos=videos,
                                 ray_address=args.ray_address)
    print(markdown_table(summary["results"], {}).split("## Protocol")[0].strip())
    for item in summary["generation_errors"]:
        print(f"warning: {item['clip_id']} ({item['mode']}) was not generated: {item['error']}", file=sys.stderr)
    print(f"results: {Path(args.output).resolve() / 'results.md'} (protocol and weights' sha256 inside)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from flows.server import LocalPrefectServer

    server = nullcontext() if os.environ.get("PREFECT_API_URL") else LocalPrefectServer(keep=False)
    with server as running:
        where = running.ui_url if running is not None else os.environ["PREFECT_API_URL"].removesuffix("/api")
        print(f"Prefect UI: {where}; deployments: {', '.join(args.flows or ['all'])} (Ctrl-C stops)", flush=True)
        from flows.deployments import serve  # after PREFECT_API_URL is set

        serve(args.flows, limit=args.limit)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.output)
    print(f"inference export written: {folder / 'model.safetensors'}, {folder / 'model.json'}")
    return 0


def _set_overrides(items: list[str] | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise MegactorError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    return overrides


def cmd_sync(args: argparse.Namespace) -> int:
    from curation.config import load_config
    from curation.devices import resolve_device
    from curation.scorers.sync_syncnet import score_video

    overrides = {"sync.weights": str(Path(args.weights).resolve())} if args.weights else {}
    config = load_config(args.config, overrides).sync
    if not Path(args.video).is_file():
        raise MegactorError(f"video not found: {args.video}")
    scores = score_video(args.video, config, resolve_device(args.device))
    if args.json:
        print(json.dumps({"offset": scores["sync_offset"], "sync_c": round(scores["sync_c"], 4),
                          "sync_d": round(scores["sync_d"], 4)}))
    else:
        print(f"AV offset:  {scores['sync_offset']:d} frames\nSync-D:     {scores['sync_d']:.3f}\n"
              f"Sync-C:     {scores['sync_c']:.3f}\nwindows:    {scores['sync_windows']:d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megactor", description="MegActor-Sigma public-data curation.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    curate = commands.add_parser("curate", help="score a folder of videos into a filtered manifest",
                                 description="Inventory, split, score and filter videos (Prefect flow on Ray).")
    curate.add_argument("--input", action="append", metavar="DIR", help="a dataset root (repeatable)")
    curate.add_argument("--kind", default="folder",
                        help="layout of --input: folder, hdtf, celebv_hq, voxceleb2, talkinghead_1kh, multitalk")
    curate.add_argument("--dataset", help="dataset name (default: the kind, or the folder's name)")
    curate.add_argument("--refuse-outside-links", action="store_true",
                        help="symbolic links leading out of --input become outside_data_root rows (default: "
                             "followed; a relative ../ link leaving the root is refused either way)")
    curate.add_argument("--output", required=True, metavar="DIR", help="output directory (reruns resume it)")
    curate.add_argument("--config", metavar="FILE", help="YAML config overriding the defaults")
    curate.add_argument("--profile", choices=["lite", "paper"],
                        help="scorer set: lite (MediaPipe face, SyncNet) or paper (DWPose face, SyncNet)")
    curate.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where DWPose and SyncNet run (auto)")
    curate.add_argument("--no-sync", action="store_true",
                        help="skip SyncNet (clips that pass everything else stay 'pending')")
    curate.add_argument("--score-all", action="store_true",
                        help="score every clip with every measure, gate-rejected ones too (analysis)")
    curate.add_argument("--ray-address", help="Ray cluster address (default: a local Ray)")
    curate.add_argument("--executor", choices=["ray", "local"], default="ray",
                        help="task runner: ray (default) or local (one thread, for debugging)")
    curate.add_argument("--keep-server", action="store_true", help="leave the local Prefect server running")
    _add_threshold_flags(curate)
    curate.set_defaults(func=cmd_curate)

    aug = commands.add_parser("augment", help="face-swapped and stylized driving variants of a curated run's clips",
                              description="Make face-swapped (InsightFace) and stylized (SD-Turbo) variants of "
                                          "every kept clip of a curated run (Prefect flow on Ray), check them, and "
                                          "write a variants table the trainer reads. Reruns resume.")
    aug.add_argument("--manifest", required=True, metavar="DIR", help="a curated run (its output directory)")
    aug.add_argument("--output", required=True, metavar="DIR", help="output directory (reruns resume it)")
    aug.add_argument("--config", metavar="FILE", help="YAML config overriding curation/configs/augment.yaml")
    aug.add_argument("--kinds", help="comma-separated: faceswap,stylized (default both)")
    aug.add_argument("--identity-folder", metavar="DIR",
                     help="face images to swap in (DIR/<speaker>/*.jpg); default: frames of other kept clips")
    aug.add_argument("--seed", type=int, help="seed of every random choice (0)")
    aug.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the models run (auto)")
    aug.add_argument("--ray-address", help="Ray cluster address (default: a local Ray)")
    aug.add_argument("--executor", choices=["ray", "local"], default="ray",
                     help="task runner: ray (default) or local (one thread, for debugging)")
    aug.add_argument("--keep-server", action="store_true", help="leave the local Prefect server running")
    aug.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any augment config value, dotted (repeatable), e.g. --set stylize.steps=4")
    aug.set_defaults(func=cmd_augment)

    refilter = commands.add_parser("filter", help="re-apply thresholds to a manifest without re-scoring")
    refilter.add_argument("--manifest", required=True, metavar="DIR", help="a run's output or manifest directory")
    refilter.add_argument("--output", required=True, metavar="DIR",
                          help="where the decisions go (DIR/manifest, read with the scores by every megactor "
                               "command; DIR/refilter.json names the scores)")
    refilter.add_argument("--config", metavar="FILE", help="YAML config with thresholds")
    refilter.add_argument("--materialize", action="store_true",
                          help="write a standalone copy of every part (scores and new decisions) instead of "
                               "decisions that point at the input's scores")
    _add_threshold_flags(refilter)
    refilter.set_defaults(func=cmd_filter)

    inv = commands.add_parser("inventory", help="probe source files and print hours per dataset")
    inv.add_argument("--input", action="append", required=True, metavar="DIR")
    inv.add_argument("--kind", default="folder")
    inv.add_argument("--dataset")
    inv.add_argument("--output", metavar="DIR", help="also write OUTPUT/inventory/part-00000.parquet")
    inv.add_argument("--workers", type=int, default=4, help="parallel ffprobe calls")
    inv.set_defaults(func=cmd_inventory)

    summ = commands.add_parser("summary", help="print a finished run's summary")
    summ.add_argument("output", metavar="DIR")
    summ.add_argument("--json", action="store_true")
    summ.set_defaults(func=cmd_summary)

    rep = commands.add_parser("report", help="write a run's dataset report (HTML page with figures)")
    rep.add_argument("run", metavar="RUN", help="a run's output directory (or its manifest directory)")
    rep.add_argument("--output", metavar="DIR", help="where the page goes (default: RUN/report)")
    rep.set_defaults(func=cmd_report)

    wts = commands.add_parser("weights", help="list or fetch model weights",
                              description="Model files: where they come from, their licence, whether they are here. "
                                          "Cache: MEGACTOR_WEIGHTS_DIR (default ~/.cache/megactor/weights); "
                                          "read-only mirror: MEGACTOR_WEIGHTS_MIRROR.")
    wts.add_argument("action", choices=["list", "fetch"])
    wts.add_argument("names", nargs="*", metavar="NAME", help="registry names (default: all)")
    wts.add_argument("--profile", choices=["lite", "paper"], help="the models a curation profile needs")
    wts.add_argument("--augment", action="store_true",
                     help="the models `megactor augment` needs (face swap, stylization, landmarks)")
    wts.add_argument("--evaluate", action="store_true",
                     help="the models `megactor animate` and `megactor evaluate` need (VAE, Whisper, faces, metrics)")
    wts.set_defaults(func=cmd_weights)

    sync = commands.add_parser("sync", help="SyncNet scores of a cropped face video (AV offset, Sync-D, Sync-C)",
                               description="Score an already-cropped talking-face video the way the SyncNet "
                                           "reference demo does: 25 fps, 224x224 crops, 16 kHz audio.")
    sync.add_argument("video", metavar="VIDEO")
    sync.add_argument("--weights", metavar="FILE", help="a syncnet_v2.model-format file (default: the registry's)")
    sync.add_argument("--config", metavar="FILE", help="YAML config (its sync section is used)")
    sync.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    sync.add_argument("--json", action="store_true", help='one line: {"offset": ..., "sync_c": ..., "sync_d": ...}')
    sync.set_defaults(func=cmd_sync)

    train = commands.add_parser("train", help="train a stage (1, 2, 3) or all three on the curated manifest",
                                description="Modality Decoupling Control training on Ray Train. Each stage's "
                                            "defaults are in training/configs/stageN.yaml; rerunning resumes "
                                            "from the newest checkpoint in the output.")
    train.add_argument("--stage", required=True, choices=["1", "2", "3", "all"])
    train.add_argument("--config", metavar="FILE", help="a stage config (default: the embedded stageN.yaml)")
    train.add_argument("--manifest", metavar="DIR", help="the curated manifest (a run's output or manifest dir)")
    train.add_argument("--output", metavar="DIR", help="where checkpoints and logs go (per stage: DIR/stageN)")
    train.add_argument("--ray-address", help="Ray cluster address (default: a local Ray)")
    train.add_argument("--executor", choices=["ray", "local"], default="ray",
                       help="ray: Ray Train (num_workers workers, restarts); local: one worker in this process, "
                            "no Ray (a quick laptop run or a debugger)")
    train.add_argument("--keep-server", action="store_true", help="leave the local Prefect server running")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config value, dotted (repeatable)")
    train.set_defaults(func=cmd_train)
    anim = commands.add_parser(
        "animate", help="animate a reference portrait from a driving video and/or audio (or a batch of jobs)",
        description="Modes: visual (eyes and mouth from the video), audio (the audio only), mixed (eyes from the "
                    "video, mouth from the audio). --visual-alpha scales the head motion (1: as driven, 0: "
                    "frozen, >1: exaggerated), --audio-scale the audio's weight; each is a number or a file "
                    "with a per-frame curve (.txt/.csv/.json). The output's length is the audio's, else the "
                    "driving video's.")
    anim.add_argument("--checkpoint", help="a training output: a run's root, a stage's output or its final/")
    anim.add_argument("--reference", metavar="IMAGE", help="the portrait to animate (an image, or a video's "
                                                           "first frame)")
    anim.add_argument("--driving", metavar="VIDEO", help="the driving video (visual and mixed modes)")
    anim.add_argument("--audio", metavar="FILE", help="the audio (audio and mixed modes; muxed into the output)")
    anim.add_argument("--mode", choices=("visual", "audio", "mixed"), default="mixed")
    anim.add_argument("--visual-alpha", default="1.0", metavar="A|FILE")
    anim.add_argument("--audio-scale", default="1.0", metavar="S|FILE")
    anim.add_argument("--steps", type=int, default=25)
    anim.add_argument("--guidance", type=float, default=2.0)
    anim.add_argument("--seed", type=int, default=0)
    anim.add_argument("--scheduler", choices=("ddim", "dpm++"), default="ddim")
    anim.add_argument("--device", default="auto", help="auto, cpu or cuda")
    anim.add_argument("--output", metavar="OUT.mp4")
    anim.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    anim.add_argument("--jobs", metavar="FILE", help="a YAML or CSV list of jobs: a Prefect flow over Ray "
                                                     "(results in FILE.results.csv)")
    anim.add_argument("--ray-address", help="a Ray cluster for --jobs (default: a local one)")
    anim.set_defaults(func=cmd_animate)

    ev = commands.add_parser(
        "evaluate", help="split a curated manifest by identity, generate the test clips (A, V, A+V) and score "
                         "them: FID, FVD, LPIPS, Sync-C/D, CSIM",
        description="Writes OUTPUT/results.json and results.md (the paper's Table 3/4 layout, with the protocol). "
                    "--videos LABEL=DIR scores another method's videos ({clip_id}.mp4) against the same ground "
                    "truth. Settings: EvalConfig (flows/evaluation_config.py), by --config FILE.yaml or --set KEY=VALUE.")
    ev.add_argument("--manifest", required=True, help="a curated run (its kept clips are split 9:1 by identity)")
    ev.add_argument("--output", required=True)
    ev.add_argument("--checkpoint", help="a training output to evaluate")
    ev.add_argument("--videos", action="append", metavar="LABEL=DIR", help="another method's videos (repeatable)")
    ev.add_argument("--config", help="a YAML file of EvalConfig settings")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE", help="an EvalConfig setting (repeatable)")
    ev.add_argument("--ray-address", help="a Ray cluster (default: a local one)")
    ev.set_defaults(func=cmd_evaluate)

    srv = commands.add_parser(
        "serve", help="serve the flows as Prefect deployments (run them from the UI, `prefect deployment run` or "
                      "the API)",
        description="Deployments: megactor-curate-run/curate, megactor-augment-run/augment, megactor-train-run/"
                    "train, megactor-animate-run/animate, megactor-evaluate-run/evaluate. Against PREFECT_API_URL, "
                    "or a local server started for as long as this runs.")
    srv.add_argument("flows", nargs="*", metavar="FLOW", help="curate, augment, train, animate, evaluate (default: all)")
    srv.add_argument("--limit", type=int, help="at most this many runs at once")
    srv.set_defaults(func=cmd_serve)

    export = commands.add_parser("export", help="write a checkpoint's inference export (EMA weights as "
                                                "safetensors + model.json)")
    export.add_argument("checkpoint", help="a checkpoint folder holding state.pt (final/ or checkpoints/step-*)")
    export.add_argument("--output", help="where to write it (default: the checkpoint folder)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from curation.errors import ShardsFailedError

    try:
        return args.func(args)
    except ShardsFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MegactorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
