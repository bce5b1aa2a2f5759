"""A CSV logger whose ``metrics.csv`` survives a resume."""

import csv
import io

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn

from osr.utils.io import write_text


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger that can carry on the ``metrics.csv`` of the run it resumes.

    Lightning's CSVLogger deletes ``metrics.csv`` as soon as it opens a directory that holds
    one, as a resumed run does (it continues inside the killed run's directory). Here the file
    is kept until the first new row: ``carry_rows()`` (called when a checkpoint is restored)
    keeps its rows, and otherwise the new run starts a new file, as with Lightning.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> "CarryingWriter":
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = CarryingWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def carry_rows(self) -> None:
        self.experiment.carry_rows()


class CarryingWriter(ExperimentWriter):
    """Lightning's writer, except for an existing ``metrics.csv``.

    A resumed run logs again what happened after its checkpoint: each row it logs replaces
    the carried row with the same step, epoch and metric names. Carried rows that are not
    logged again stay, such as an epoch's end that Lightning does not repeat on resume.
    """

    def __init__(self, log_dir: str) -> None:
        self.carried = 0  # rows at the head of the file that come from the interrupted run
        self.stale = False  # a file from an earlier run, not carried (yet)
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes the file here; whether it is carried on is not known yet
        self.stale = self._fs.isfile(self.metrics_file_path)

    def carry_rows(self) -> None:
        if not self.stale:
            return
        header, rows = self._read()
        self.metrics_keys, self.carried, self.stale = header, len(rows), False

    def save(self) -> None:
        if self.metrics and self.stale:
            rank_zero_warn(f"{self.metrics_file_path} of an earlier run is replaced by this run's.")
            self._fs.rm_file(self.metrics_file_path)
            self.stale = False
        super().save()
        if self.carried:
            self._drop_logged_again()

    def _drop_logged_again(self) -> None:
        header, rows = self._read()
        carried, new = rows[: self.carried], rows[self.carried :]
        logged_again = {_identity(row) for row in new}
        kept = [row for row in carried if _identity(row) not in logged_again]
        if len(kept) == len(carried):
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept + new)
        write_text(self.metrics_file_path, text.getvalue())
        self.carried = len(kept)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)


def _identity(row: dict[str, str]) -> tuple[str, str, frozenset[str]]:
    names = frozenset(k for k, v in row.items() if v and k not in ("step", "epoch"))
    return row.get("step", ""), row.get("epoch", ""), names
