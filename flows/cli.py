"""`ulmfit` command line: run the flow, predict with a finished run, ensemble two runs, list stages."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import flows  # noqa: F401  (sets Prefect defaults before prefect is imported)
from pipeline.config import available_presets, load_config
from pipeline.errors import ConfigError, UlmfitError
from pipeline.models.backbones import REGISTRY as BACKBONES
from pipeline.stages.registry import REGISTRY as STAGES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ulmfit", description="ULMFiT: pretrain -> adapt -> classify, as a cached Prefect flow.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=f"run the flow: {' -> '.join(STAGES)} (cached stages are not recomputed)")
    run.add_argument("--preset", default="cpu", help=f"one of {', '.join(available_presets())} (default: cpu)")
    run.add_argument("--rerun", choices=list(STAGES), help="recompute this stage and the stages after it")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override a config field, e.g. --set classify.n_labels=500 (repeatable)")
    run.add_argument("--out", help="run directory (default: runs/PRESET)")
    run.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("-v", "--verbose", action="store_true", help="show Prefect's tracebacks of a failed stage")
    predict = sub.add_parser("predict", help="classify texts with a finished run (one JSON line per text)")
    predict.add_argument("--run", required=True, help="run directory (or its classify/ folder)")
    predict.add_argument("texts", nargs="*", help="texts to classify; - reads stdin, one text per line")
    predict.add_argument("--file", help="classify every text of this file: one per line, or a column of a "
                         ".csv/.tsv/.parquet/.jsonl file (see --text-col); - is stdin")
    predict.add_argument("--text-col", default="text", help="the text column of a --file table (default: text)")
    compare = sub.add_parser("compare", help="backbones x {full, no_pretrain, no_adapt}: a cached grid of runs, "
                             "written as a table (CSV, markdown) and a plot")
    compare.add_argument("--preset", default="cpu", help="preset of every cell (default: cpu)")
    compare.add_argument("--backbones", default=",".join(BACKBONES),
                         help=f"comma-separated, of {', '.join(BACKBONES)} (default: all)")
    compare.add_argument("--variants", default="full,no_pretrain,no_adapt", help="comma-separated ablations")
    compare.add_argument("--n-labels", help="comma-separated label budgets, e.g. 100,1000 (default: the preset's)")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override applied to every cell (repeatable)")
    compare.add_argument("--out", help="output directory (default: runs/compare-PRESET)")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per cell (labeled sample + classifier init); "
                         "the table gives mean ± sd (default 1)")
    compare.add_argument("--reseed-lm", action="store_true", help="also retrain the language models per seed "
                         "(default: every classifier seed shares them)")
    compare.add_argument("--results", metavar="FILE", help="rewrite the marked section of this file (e.g. RESULTS.md) "
                         "from the report")
    compare.add_argument("-v", "--verbose", action="store_true", help="show Prefect's tracebacks of a failed stage")
    ensemble = sub.add_parser("ensemble", help="average two finished classifiers' test probabilities "
                              "(e.g. a forward and a backward run; `run --set model.direction=both` does it itself)")
    ensemble.add_argument("runs", nargs=2, metavar="RUN", help="run directory (or its classify/ folder)")
    ensemble.add_argument("--out", help="output folder (default: ensemble/ beside the first classifier folder)")
    sub.add_parser("stages", help="list the stages, backbones and presets")
    serve = sub.add_parser("serve", help="open the Prefect UI and serve the flows as deployments (Ctrl-C stops)")
    serve.add_argument("--port", type=int, default=4200, help="port of the local server (0 = any free port; default 4200)")
    serve.add_argument("--limit", type=int, default=1, help="at most this many flow runs at once (default 1: runs queue)")
    export = sub.add_parser("export", help="a trained model out in a standard format: --format hf (the gpt / bert "
                            "language model for transformers' Auto classes), --format onnx (the classifier, "
                            "for onnxruntime)")
    export.add_argument("run", help="run directory (onnx: or its classify folder)")
    export.add_argument("--format", required=True, choices=["hf", "onnx"],
                        help="hf: config.json, model.safetensors, tokenizer; onnx: model.onnx, tokenizer, "
                        "config.json, score.py and a README")
    export.add_argument("--out", required=True, help="a new (or empty) folder")
    deploy = sub.add_parser("deploy", help="register the flows (one deployment per preset) with a Prefect work "
                            "pool on the server at PREFECT_API_URL, for workers on other machines")
    deploy.add_argument("--pool", required=True, help="work pool name (create it first: prefect work-pool create "
                        "NAME --type process)")
    return parser


def _cmd_run(args) -> int:
    cfg = load_config(args.preset, args.overrides)  # validated before Prefect starts, then passed on as is
    if args.show_config:
        print(cfg.model_dump_json(indent=2))
        return 0
    from flows.session import flow_session, interrupted_message, sigterm_as_interrupt
    from pipeline.validate import check_run

    out, start = _out(args.out, f"runs/{args.preset}"), time.perf_counter()
    try:
        with sigterm_as_interrupt():
            check_run(cfg, out, rerun=args.rerun)  # every input and output, before Prefect and any stage start
            from flows.ulmfit_flow import ulmfit_config_flow

            with flow_session(args.verbose):
                summary = ulmfit_config_flow(config=cfg, out_dir=out, rerun=args.rerun)
    except KeyboardInterrupt as stop:
        return _interrupted(interrupted_message(stop, Path(out).expanduser()))
    print(f"\nulmfit run finished in {time.perf_counter() - start:.1f}s")
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    """One line per stage of each chain (pretrain, ..., pretrain-backward, ...) and the ensemble's."""
    from pipeline.use.ensemble import HEADLINE

    width = max(9, *map(len, summary))
    for name, info in summary.items():
        key, label = STAGES[info["stage"]].headline if info["stage"] in STAGES else HEADLINE
        print(f"  {name:{width}s} {info['state']:10s} {info['seconds']:8.1f}s  {label}: {info['metrics'][key]:.4f}"
              f"  -> {info['path']}")


def _cmd_ensemble(args) -> int:
    from pathlib import Path

    from pipeline.artifacts.layout import ENSEMBLE, classifier_folder
    from pipeline.use.ensemble import ensure

    folders = [classifier_folder(run) for run in args.runs]
    out = Path(args.out).expanduser().resolve() if args.out else folders[0].parent / ENSEMBLE
    start = time.perf_counter()
    state, metrics = ensure(folders, out)
    _print_summary({ENSEMBLE: {"stage": ENSEMBLE, "state": state, "seconds": time.perf_counter() - start,
                               "metrics": metrics, "path": str(out)}})
    for member, folder in zip(metrics["members"], folders):
        print(f"    {member['name']:9s} test accuracy: {member['test_accuracy']:.4f}  <- {folder}")
    return 0


def _cmd_compare(args) -> int:
    from flows.session import flow_session, interrupted_message, sigterm_as_interrupt
    from pipeline.study.compare import checked_grid, compare_command

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    n_labels = [_whole_number("--n-labels", n) for n in split(args.n_labels)] if args.n_labels else None
    out, start = _out(args.out, f"runs/compare-{args.preset}"), time.perf_counter()
    grid_args = (args.preset, split(args.backbones), split(args.variants), n_labels, args.overrides, out,
                 args.seeds, args.reseed_lm)
    try:
        with sigterm_as_interrupt():
            cells = checked_grid(*grid_args)  # every cell's inputs and outputs, before Prefect and any stage start
            from flows.compare_flow import compare_cells_flow

            with flow_session(args.verbose):
                result = compare_cells_flow(cells=cells, out_dir=out, command=compare_command(*grid_args),
                                            results=args.results)
    except KeyboardInterrupt as stop:
        return _interrupted(interrupted_message(stop, Path(out).expanduser()))
    print(f"\nulmfit compare finished in {time.perf_counter() - start:.1f}s; report: {result['report']}")
    for name, states in result["states"].items():
        print(f"  {name:28s} " + " ".join(f"{stage}={state}" for stage, state in states.items()))
    return 0


def _out(given: str | None, default: str) -> str:
    """--out, or the default when it is not given; an empty or blank --out is a mistake, not the default."""
    if given is None:
        return default
    if not given.strip():
        raise ConfigError(f"--out {given!r}: an empty folder name; leave --out out for the default ({default})")
    return given


def _whole_number(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not a whole number") from None


def _interrupted(message_and_status: tuple[str, int]) -> int:
    message, status = message_and_status
    print(message, file=sys.stderr)
    return status


def _cmd_predict(args) -> int:
    from pipeline.use.predict import predict_stream, texts_from_file

    if args.file and args.texts:
        raise ConfigError("give texts or --file, not both")
    if args.texts == ["-"] or args.file:
        texts, where = texts_from_file(args.file or "-", args.text_col)
    elif args.texts:
        texts, where = args.texts, lambda i: f"text #{i + 1}"
    else:
        raise ConfigError("nothing to classify: give texts, - to read stdin, or --file FILE")
    for text, label, prob in predict_stream(args.run, texts, where):
        print(json.dumps({"text": text, "label": label, "probability": round(prob, 4)}), flush=True)
    return 0


def _cmd_stages(_args) -> int:
    for name, stage in STAGES.items():
        print(f"{name:9s} {stage.summary()}")
    print("\nbackbones: " + ", ".join(f"{b.name} ({b.description})" for b in BACKBONES.values()))
    print("presets:   " + ", ".join(available_presets()))
    return 0


def _cmd_serve(args) -> int:
    from flows.serve import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a port is 0 (any free port) to 65535")
    if args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: at least 1 flow run at a time")
    return serve(port=args.port, limit=args.limit)


def _cmd_export(args) -> int:
    from pipeline.use.export import export

    out = export(args.run, args.format, args.out)
    print(f"exported {args.run} as {args.format} to {out}")
    return 0


def _cmd_deploy(args) -> int:
    from flows.serve import deploy

    return deploy(args.pool)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for chatty in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    commands = {"run": _cmd_run, "compare": _cmd_compare, "predict": _cmd_predict, "ensemble": _cmd_ensemble,
                "stages": _cmd_stages, "serve": _cmd_serve, "deploy": _cmd_deploy,
                "export": _cmd_export}
    try:
        return commands[args.command](args)
    except UlmfitError as err:
        print(f"ulmfit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # run and compare say how to resume; predict, stages: nothing to resume
        print("ulmfit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
