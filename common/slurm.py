"""The submitit launcher's options and executor, shared by tt-sweep (a job array of fused groups) and tt-extract
(--tasks N jobs writing disjoint chunks of one store)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import TwinTurboError

SUBMITIT_CLUSTERS = ("auto", "slurm", "local", "debug")


def _slurm(default, flag: str, help: str, choices: tuple = ()):
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices})


@dataclass
class SlurmOptions:
    """The options of `--launcher submitit` (tt-sweep builds its `--slurm-*` options from these fields); submitit's
    own names in brackets."""

    partition: str | None = _slurm(None, "--slurm-partition", "SLURM partition [the cluster's default].")
    time_min: int = _slurm(60, "--slurm-time", "Time limit per job, minutes.")  # timeout_min
    gpus_per_node: int = _slurm(1, "--slurm-gpus-per-node", "GPUs per job.")
    cpus_per_task: int = _slurm(8, "--slurm-cpus-per-task", "CPUs per job.")
    mem_gb: int = _slurm(32, "--slurm-mem", "Memory per job, GB.")
    array_parallelism: int = _slurm(16, "--slurm-array-parallelism", "At most this many jobs of the array run at "
                                    "once.")  # slurm_array_parallelism
    cluster: str = _slurm("auto", "--submitit-cluster", "submitit executor: auto = SLURM when sbatch is there, else "
                          "local processes.", SUBMITIT_CLUSTERS)  # AutoExecutor(cluster=...)

    def validate(self) -> None:
        """One line naming the first option out of range."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.metadata["choices"] and value not in spec.metadata["choices"]:
                raise TwinTurboError(f"{spec.metadata['flag']} {value}: expected one of "
                                     f"{', '.join(spec.metadata['choices'])}")
            if isinstance(value, int) and value < (0 if spec.name == "gpus_per_node" else 1):
                raise TwinTurboError(f"{spec.metadata['flag']} {value}: expected a positive number")

    def executor(self, folder: Path, name: str):
        """A submitit executor for these options, logging under `folder`/<job id>."""
        import submitit

        self.validate()
        executor = submitit.AutoExecutor(folder=Path(folder) / "%j",
                                         cluster=None if self.cluster == "auto" else self.cluster)
        params = dict(timeout_min=self.time_min, cpus_per_task=self.cpus_per_task, mem_gb=self.mem_gb,
                      slurm_array_parallelism=self.array_parallelism, name=name)
        if executor.cluster == "slurm":
            if self.gpus_per_node:
                params["gpus_per_node"] = self.gpus_per_node
            if self.partition:
                params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        return executor


def job_failure(job) -> str:
    """Why a finished submitit job did not do its work, in one line: 'was cancelled', or 'failed: <the exception the
    job raised>' (from the traceback submitit brings back), or its state."""
    state = job.state
    try:
        job.result()
        return f"ended {state} without finishing its work"
    except Exception as err:  # the job's traceback is in its log; its exception line says what went wrong
        text = str(err)
        if "CANCELLED" in state or "CANCELLED" in text:
            return "was cancelled"
        raised = [line.strip() for line in text.splitlines()
                  if re.match(r"^\s*[\w.]*(Error|Exception|Interrupt)\b.*?: ", line)]
        if raised:  # 'twinturbo.common.errors.TwinTurboError: ...' -> 'TwinTurboError: ...'
            return "failed: " + re.sub(r"^[\w.]*\.(\w+)", r"\1", raised[-1], count=1)
        return f"ended {state}: {text.strip().splitlines()[0] if text.strip() else type(err).__name__}"


def raise_unfinished(problems: list[str], total: int, noun: str, remedy: str, echo) -> None:
    """One line per job that did not do its work (`echo`), then one error line; nothing when all did."""
    for line in problems:
        echo(line)
    if problems:
        raise TwinTurboError(f"{len(problems)} of {total} {noun} did not finish (first: {problems[0]}); {remedy}")


def slurm_options(command):
    """The submitit launcher's click options, from SlurmOptions' fields (dest slurm_<field>; `options_of` gathers
    them back)."""
    import click

    for spec in reversed(fields(SlurmOptions)):
        meta = spec.metadata
        kind = click.Choice(meta["choices"]) if meta["choices"] else (int if spec.type in ("int", int) else str)
        command = click.option(meta["flag"], f"slurm_{spec.name}", type=kind, default=spec.default,
                               show_default=spec.default is not None, help=meta["help"])(command)
    return command


def options_of(parsed: dict) -> SlurmOptions:
    """SlurmOptions from a command's parsed options, removing them from `parsed`."""
    return SlurmOptions(**{spec.name: parsed.pop(f"slurm_{spec.name}") for spec in fields(SlurmOptions)})
