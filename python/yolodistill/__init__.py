"""yolodistill from Python, in Ultralytics' shape.

    from yolodistill import YOLO
    model = YOLO("yolov8n.yaml")
    metrics = model.train(data="data.yaml", epochs=50, teacher="yolov8s.pt", distill="cwd")
    results = model.predict("images/")

Every method runs the `yolodistill` command that the wheel installed, with the keyword arguments
as its `key=value` arguments (Ultralytics' names), so options, checks, messages and progress bars
are the command's own.
"""

from ._command import CommandError, binary, run
from .model import YOLO, Boxes, Results

__all__ = ["YOLO", "Results", "Boxes", "CommandError", "binary", "run"]
