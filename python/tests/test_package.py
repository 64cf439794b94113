"""The Python package against the command it wraps: train, val, predict, export, errors, Ctrl-C.

Run by scripts/python_check.sh (from .ci/run) in a fresh virtual environment holding the wheel.
Needs ../shared (BCCD images and the BCCD teacher).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import yolodistill
from yolodistill import YOLO, CommandError

SHARED = Path(os.environ.get("YOLODISTILL_SHARED", Path(__file__).resolve().parents[2] / "../shared"))
TEACHER = SHARED / "fixtures/teacher_v8s_bccd.pt"
BCCD_TRAIN = SHARED / "data/bccd/images/train"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data.yaml over eight BCCD training images, used for both train and val."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED} is missing under CI=true")
        pytest.skip(f"{SHARED} is missing")
    folder = tmp_path_factory.mktemp("data")
    images = sorted(BCCD_TRAIN.iterdir())[:8]
    (folder / "list.txt").write_text("\n".join(str(i) for i in images))
    yaml = folder / "data.yaml"
    yaml.write_text(f"path: {folder}\ntrain: list.txt\nval: list.txt\nnames: [RBC, WBC, Platelets]\n")
    return yaml


def cli(*args):
    """The installed command itself, for comparison."""
    return subprocess.run([str(yolodistill.binary()), *args], capture_output=True, text=True)


def test_the_wheel_put_the_command_next_to_python():
    assert Path(yolodistill.binary()).parent == Path(sys.executable).parent
    assert cli("--version").stdout.startswith("yolodistill ")


def test_train_returns_metrics_and_becomes_the_best_weights(data, tmp_path):
    model = YOLO(TEACHER)  # fine-tuned: its metrics are not zeros
    metrics = model.train(data=data, epochs=2, imgsz=160, batch=4, project=tmp_path, name="toy")
    assert {"mAP50", "mAP50-95", "precision", "recall", "per_class"} <= metrics.keys()
    assert model.trainer.save_dir == str(tmp_path / "toy") and model.trainer.epochs == 2
    assert model.model == str(tmp_path / "toy/weights/best.safetensors")
    assert metrics["mAP50-95"] > 0, "a test of equal zeros would show nothing"
    again = model.val(project=tmp_path, plots=False)  # the training's data and image size
    assert again["images"] == 8 and again["instances"] == metrics["instances"]
    assert again["mAP50-95"] == pytest.approx(metrics["mAP50-95"], abs=1e-6)


def test_val_returns_the_commands_metrics(data, tmp_path):
    ours = YOLO(TEACHER).val(data=data, project=tmp_path, plots=False)
    theirs = cli("val", f"model={TEACHER}", f"data={data}", f"project={tmp_path}", "plots=False", "--json")
    assert theirs.returncode == 0, theirs.stderr
    assert ours == json.loads(theirs.stdout)
    assert ours["mAP50-95"] > 0.3, ours


def test_predict_gives_the_commands_boxes_as_numpy(data):
    image = sorted(BCCD_TRAIN.iterdir())[0]
    results = YOLO(TEACHER).predict(image, conf=0.25)
    assert len(results) == 1 and results[0].path == str(image)
    boxes = results[0].boxes
    assert boxes.xyxy.dtype == np.float32 and boxes.xyxy.shape == (len(boxes), 4) and len(boxes) > 5
    lines = cli("predict", f"model={TEACHER}", f"source={image}", "conf=0.25", "--json").stdout.splitlines()
    want = yolodistill.Results.from_json(lines[0]).boxes
    raw = json.loads(lines[0])["boxes"]
    assert np.array_equal(boxes.xyxy, np.array([b["xyxy"] for b in raw], dtype=np.float32))
    assert np.array_equal(boxes.conf, np.array([b["conf"] for b in raw], dtype=np.float32))
    assert boxes.cls.tolist() == [b["cls"] for b in raw] and boxes.name == want.name


def test_export_returns_the_file(tmp_path):
    path = YOLO(TEACHER).export(format="onnx", imgsz=64, output=tmp_path / "t.onnx")
    assert path == str(tmp_path / "t.onnx") and Path(path).stat().st_size > 1_000_000


@pytest.mark.parametrize("arguments", [{"epoch": 1}, {"imgsz": -1}, {"cos_lr": "maybe"}])
def test_errors_raise_the_commands_message(data, tmp_path, arguments):
    with pytest.raises(CommandError) as raised:
        YOLO("yolov8n.yaml").train(data=data, project=tmp_path, **arguments)
    words = [f"{k}={v}" for k, v in arguments.items()]
    direct = cli("train", "model=yolov8n.yaml", f"data={data}", f"project={tmp_path}", *words, "--json")
    assert direct.returncode == 1 and direct.stderr.strip() == f"error: {raised.value}"


def test_a_missing_model_is_named():
    with pytest.raises(CommandError, match="nowhere.pt"):
        YOLO("nowhere.pt").predict(BCCD_TRAIN)


def test_ctrl_c_stops_training_and_keeps_resumable_checkpoints(data, tmp_path):
    epochs = 40  # seconds longer than the wait for the first checkpoint, even on a loaded machine
    script = (
        "from yolodistill import YOLO\n"
        f"YOLO('yolov8n.yaml').train(data={str(data)!r}, epochs={epochs}, imgsz=64, batch=4, "
        f"project={str(tmp_path)!r}, name='run')\n"
    )
    # its own session: the SIGINT goes to Python alone, which must pass it on (as in a notebook)
    # SIGINT at its default, as in a terminal or a notebook: a runner started in the background
    # (`cmd &` in a script) passes SIGINT on ignored, and Python then installs no KeyboardInterrupt
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    python = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=default_sigint
    )
    last = tmp_path / "run/weights/last.safetensors"
    deadline = time.time() + 300
    while not last.exists() and python.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), "no checkpoint before the deadline"
    python.send_signal(signal.SIGINT)
    _, stderr = python.communicate(timeout=120)
    assert python.returncode != 0 and "KeyboardInterrupt" in stderr, stderr
    assert "Results in" not in stderr, "the run finished before Ctrl-C; nothing was tested"
    assert not commands_running_in(tmp_path), "the command outlived Python"

    model = YOLO(last)
    assert model.val(data=data, project=tmp_path, plots=False)["images"] == 8  # readable
    model.train(resume=True)
    assert model.trainer.epochs == epochs and model.trainer.first_epoch > 1
    assert model.trainer.save_dir == str(tmp_path / "run")


def commands_running_in(folder: Path):
    """Processes whose command line names `folder`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text and "yolodistill" in text and str(os.getpid()) != cmdline.parent.name:
            found.append(text)
    return found
