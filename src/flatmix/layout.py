"""Where the workflow puts every output: each preset's under RESULTS/PRESET/ (presets never overwrite each
other), the data every preset shares under RESULTS/data/, and inside a preset's folder one place per kind
of result. The one home of these paths: the rules (workflow/rules/common.smk), `flatmix plan --commands`
and the report all ask the objects here, and none builds or parses a path of its own.

A result is addressed by a key (Pretraining, Monitor, Probe, Knn, Detection, Flatness) whose `.path` is its file and
whose `.log` is its rule's log, both relative to the preset's folder.
"""

from collections import namedtuple
import posixpath

# The config key (`data.KEY`) of the root each data set is prepared from
ROOT_OF = {"imagenet100": "imagenet", "imagenet1k": "imagenet", "voc": "voc", "coco": "coco", "cifar10": "cifar10",
           "cifar100": "cifar100"}


def _folder(*parts):
    """A folder as one spelling (`results/` and `results` alike), so that every caller names it the same."""
    return posixpath.normpath(posixpath.join(*map(str, parts)))


def preset_folder(config, preset=None):
    return _folder(config["results"], preset or config["preset"])


def data_folder(config):
    return _folder(config["results"], "data")


def prepared_name(config, dataset):
    """A prepared data set's folder under the data folder: prepared/DATASET from its real root,
    synth-prepared/DATASET from the synthetic one (never mistaken for the real one)."""
    return f"{'prepared' if config['data'][ROOT_OF[dataset]] else 'synth-prepared'}/{dataset}"


def prepared_folder(config, dataset):
    return _folder(data_folder(config), prepared_name(config, dataset))


class _Result:
    """A result file and its rule's log: FOLDER/FILE and logs/FOLDER.log."""
    __slots__ = ()
    FILE = "metrics.json"

    @property
    def path(self):
        return f"{self.folder}/{self.FILE}"

    @property
    def log(self):
        return f"logs/{self.folder}.log"


class Pretraining(_Result, namedtuple("Pretraining", "run")):
    """A pretraining run: its folder of run files (flatmix.pretrain.RUN_FILES), the checkpoint its
    consumers read."""
    __slots__ = ()
    FILE = "checkpoint.pth"

    @property
    def folder(self):
        return f"pretrain/{self.run}"


class Monitor(_Result, namedtuple("Monitor", "run")):
    """A pretraining run's summary, which holds its kNN monitor's result after the last epoch (knn_top1)."""
    __slots__ = ()
    FILE = "summary.json"

    @property
    def folder(self):
        return f"pretrain/{self.run}"


class Probe(_Result, namedtuple("Probe", "run")):
    """The linear probe of a pretraining run."""
    __slots__ = ()

    @property
    def folder(self):
        return f"linear/{self.run}"


class Knn(_Result, namedtuple("Knn", "run")):
    """The kNN classification of a pretraining run's final backbone."""
    __slots__ = ()

    @property
    def folder(self):
        return f"knn/{self.run}"


class Detection(_Result, namedtuple("Detection", "backbone task bn")):
    """One fine-tuning: a backbone (a run, `random` or an outside checkpoint's name), a task, a BN setting."""
    __slots__ = ()

    @property
    def folder(self):
        return f"detect/{self.backbone}/{self.task}-{self.bn}"

    @property
    def config(self):
        return f"{self.folder}/config.py"


class Flatness(_Result, namedtuple("Flatness", "figure")):
    """One Figure 5 (`in1k` or `in100`)."""
    __slots__ = ()
    FILE = "flatness.json"

    @property
    def folder(self):
        return f"flatness/{self.figure}"

    @property
    def png(self):
        return f"{self.folder}/flatness.png"
