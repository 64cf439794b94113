"""The YOLO class: Ultralytics' model object over the `yolodistill` command."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import numpy as np

from ._command import run

TASKS = ("detect", None)


@dataclass
class Boxes:
    """One image's detections: corners in pixels of the original image, scores and classes."""

    xyxy: np.ndarray  # (N, 4) float32
    conf: np.ndarray  # (N,) float32
    cls: np.ndarray  # (N,) int64
    name: List[str] = field(default_factory=list)  # the class name of each box

    def __len__(self) -> int:
        return len(self.conf)


@dataclass
class Results:
    """The detections of one image, as `yolodistill predict --json` gives them."""

    path: str
    boxes: Boxes

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def from_json(line: str) -> "Results":
        image = json.loads(line)
        found = image["boxes"]
        boxes = Boxes(
            xyxy=np.array([b["xyxy"] for b in found], dtype=np.float32).reshape(-1, 4),
            conf=np.array([b["conf"] for b in found], dtype=np.float32),
            cls=np.array([b["cls"] for b in found], dtype=np.int64),
            name=[b["name"] for b in found],
        )
        return Results(path=image["image"], boxes=boxes)


class YOLO:
    """A detection model: a built-in name or YAML (new), a `.pt` or `.safetensors` file (trained).

    Keyword arguments of every method are the command's `key=value` arguments, with Ultralytics'
    names where an option exists there (`epochs`, `imgsz`, `batch`, `lr0`, `device`, `conf`, …) and
    ours elsewhere (`teacher`, `distill`, …); an unknown one raises CommandError naming the closest.
    """

    def __init__(self, model="yolov8n.yaml", task: Optional[str] = None):
        if task not in TASKS:
            raise ValueError(f"task '{task}' is not supported: yolodistill trains and runs detection models ('detect')")
        self.model = os.fspath(model)
        # what later calls reuse, as Ultralytics keeps them: the data of the last training
        self.overrides: dict = {}
        self.metrics: Optional[dict] = None
        # the last training here, as Ultralytics' `model.trainer`: save_dir, best, last, epochs, …
        self.trainer: Optional[SimpleNamespace] = None

    def train(self, **kwargs) -> Optional[dict]:
        """Trains (with `teacher=`: distills); returns the final validation's metrics.

        Afterwards the object is the run's best weights, and `trainer.save_dir` its run folder.
        `resume=True` on a `last.safetensors` continues that run.
        """
        resume = kwargs.pop("resume", None)
        if resume is True and Path(self.model).suffix == ".safetensors":
            kwargs["resume"] = self.model  # Ultralytics' YOLO("…/last.pt").train(resume=True)
        elif resume not in (None, False):
            kwargs["resume"] = resume
        else:
            kwargs["model"] = self.model
        out = run("train", **kwargs, json=True)
        summary = json.loads(out.strip().splitlines()[-1])
        self.model = summary["best"]
        self.trainer = SimpleNamespace(**summary)
        if "data" in kwargs:
            self.overrides["data"] = kwargs["data"]
        self.metrics = summary["metrics"]
        return self.metrics

    def val(self, **kwargs) -> dict:
        """Validates on a dataset split (`data=`, else the last training's); returns its metrics."""
        kwargs.setdefault("data", self.overrides.get("data"))
        if kwargs["data"] is None:
            raise ValueError("val needs data= (a data.yaml) unless this model was trained here")
        self.metrics = json.loads(run("val", model=self.model, **kwargs, json=True))
        return self.metrics

    def predict(self, source, **kwargs) -> List[Results]:
        """Detections in an image or a folder of images, one Results per image."""
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source is a path to an image or a folder, not {type(source).__name__}")
        out = run("predict", model=self.model, source=os.fspath(source), **kwargs, json=True)
        return [Results.from_json(line) for line in out.splitlines() if line.strip()]

    __call__ = predict

    def export(self, format: str = "onnx", **kwargs) -> str:
        """Writes the model as `format` (onnx, or safetensors fused); returns the file's path."""
        out = run("export", model=self.model, format=format, **kwargs, json=True)
        return json.loads(out)["file"]

    def info(self) -> str:
        """The layer table, parameter count and GFLOPs."""
        return run("info", model=self.model)
