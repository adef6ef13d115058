"""Command line: parse flags into a config dataclass and call the command. No logic here.

torch and transformers are imported inside the commands so `--help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from kdistill.config import (
    CompareConfig,
    DistillConfig,
    DownloadConfig,
    EvalTeacherConfig,
    ExportConfig,
    FinetuneConfig,
    PredictConfig,
    PrepareDataConfig,
    RunsConfig,
    SweepConfig,
)
from kdistill.errors import KdistillError, RunStopped, environment_error
from kdistill.requirements import check_transformers

logger = logging.getLogger("kdistill")


def _field_type(tp: Any) -> tuple[Callable[[str], Any] | None, bool]:
    """(converter, is_bool) for a dataclass annotation such as `int | None` or `str`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if tp is bool:
        return None, True
    return tp, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag-name` per dataclass field; the field's help metadata is the help text."""
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})
    # The command's own flags first in --help, then those it shares (teacher options).
    ordered = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)
    for f in ordered:
        flag = "--" + f.name.replace("_", "-")
        conv, is_bool = _field_type(hints[f.name])
        # argparse %-formats help text: "95%" in compare's help broke `compare --help`.
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if is_bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
            continue
        default = f.default
        shown = "" if default is None else f" (default: {default})"
        repeat = f.metadata.get("repeat")
        parser.add_argument(
            flag,
            type=conv,
            default=default,
            **({"action": _Repeated, "join": repeat == "join"} if repeat else {}),
            choices=f.metadata.get("choices"),
            metavar=None if f.metadata.get("choices") else f.name.upper(),
            help=help_text + shown,
        )


class _Repeated(argparse.Action):
    """A flag that may be given several times (ensemble members): once, its value; several
    times, the values as a list, or joined with commas where the flag takes a comma list."""

    def __init__(self, *args: Any, join: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.join = join

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        seen = getattr(namespace, f"_given_{self.dest}", False)
        setattr(namespace, f"_given_{self.dest}", True)
        if not seen:
            setattr(namespace, self.dest, values)
            return
        before = getattr(namespace, self.dest)
        if self.join:
            setattr(namespace, self.dest, f"{before},{values}")
        else:
            setattr(
                namespace, self.dest, [*(before if isinstance(before, list) else [before]), values]
            )


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


# --------------------------------------------------------------------------- commands


def cmd_download_model(args: argparse.Namespace) -> int:
    from kdistill.data.download import download_model

    path = download_model(config_from_args(DownloadConfig, args))
    sys.stdout.write(f"{path}\n")
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from kdistill.data.prepare import prepare

    path, summary = prepare(config_from_args(PrepareDataConfig, args))
    sys.stdout.write(f"{summary}\nsaved to {path}\n")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from kdistill.distill import distill

    config = config_from_args(DistillConfig, args)
    if config.seeds:  # one run per seed, grouped: the sweep's machinery with a one-point grid
        from kdistill.sweep import distill_seeds

        run_dir = distill_seeds(config)
    else:
        run_dir = distill(config)
    sys.stdout.write(f"{run_dir}\n")
    return 0


def cmd_finetune_teacher(args: argparse.Namespace) -> int:
    from kdistill.finetune import finetune_teacher

    path = finetune_teacher(config_from_args(FinetuneConfig, args))
    sys.stdout.write(f"{path}\n")
    return 0


def cmd_eval_teacher(args: argparse.Namespace) -> int:
    from kdistill.eval_teacher import eval_teacher, format_report

    report = eval_teacher(config_from_args(EvalTeacherConfig, args))
    sys.stdout.write(format_report(report) + "\n")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from kdistill.sweep import sweep

    sweep_dir = sweep(config_from_args(SweepConfig, args))
    sys.stdout.write(f"{sweep_dir}\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kdistill.compare import compare

    out_dir = compare(config_from_args(CompareConfig, args))
    sys.stdout.write(f"{out_dir}\n")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from kdistill.training.runs import show_runs

    sys.stdout.write(show_runs(config_from_args(RunsConfig, args)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kdistill.shipping.predict import predict

    sys.stdout.write(predict(config_from_args(PredictConfig, args)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdistill.shipping.export import export

    out_dir = export(config_from_args(ExportConfig, args))
    sys.stdout.write(f"{out_dir}\n")
    return 0


COMMANDS: dict[str, tuple[type, Callable[[argparse.Namespace], int], str]] = {
    "download-model": (DownloadConfig, cmd_download_model, "Download a model from the Hub."),
    "prepare-data": (PrepareDataConfig, cmd_prepare_data, "Split, explore and save a data set."),
    "finetune-teacher": (FinetuneConfig, cmd_finetune_teacher, "Fine-tune a classifier teacher."),
    "eval-teacher": (EvalTeacherConfig, cmd_eval_teacher, "Measure a teacher before distilling."),
    "distill": (DistillConfig, cmd_distill, "Train a student from a frozen teacher."),
    "sweep": (SweepConfig, cmd_sweep, "Distil over a grid of temperatures and alphas."),
    "compare": (CompareConfig, cmd_compare, "Compare a teacher and its students; write a report."),
    "runs": (RunsConfig, cmd_runs, "List the runs under outputs/."),
    "predict": (PredictConfig, cmd_predict, "Label new text with a trained model."),
    "export": (ExportConfig, cmd_export, "Export a model to ONNX, checked against torch."),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; one line that names the flag and
    points at --help is easier to read in a log."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "kdistill", command: str | None = None) -> argparse.ArgumentParser:
    """The `kdistill` parser with every subcommand, or, with `command`, that command's flags
    alone under `prog` (the seed's scripts)."""
    if command is not None:
        cls, func, help_text = COMMANDS[command]
        parser = OneLineParser(prog=prog, description=(cls.__doc__ or help_text).strip())
        parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
        add_config_arguments(parser, cls)
        parser.set_defaults(func=func)
        return parser
    parser = OneLineParser(
        prog=prog,
        description="Online knowledge distillation of text classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, func, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=(cls.__doc__ or help_text).strip(),
        )
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="Debug logging."
        )
        add_config_arguments(p, cls)
        p.set_defaults(func=func)
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "fsspec", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # datasets draws a bar for every tiny map/filter/cast; kdistill draws its own where it helps.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def user_error(prog: str, e: KdistillError) -> int:
    """One line on stderr, whatever the message quotes (a file's text, a library's error)."""
    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    sys.stderr.write(f"{prog}: error: {message}\n")
    return 2


def main(
    argv: Sequence[str] | None = None, prog: str = "kdistill", command: str | None = None
) -> int:
    """Exit status: 0 done, 2 bad input (one line on stderr), 130 interrupted (SIGINT), 143
    stopped by SIGTERM; a distill run stopped by either has saved a checkpoint to resume from."""
    parser = build_parser(prog, command)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        check_transformers()  # before any model is loaded: an old release fails here, in one line
        return args.func(args)
    except KdistillError as e:
        return user_error(prog, e)
    except OSError as e:  # a full disk, a folder without write permission: the user's to fix
        if (error := environment_error(e)) is None:
            raise
        return user_error(prog, error)
    except RunStopped as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
