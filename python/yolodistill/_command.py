"""Finding and running the `yolodistill` command the wheel carries."""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

NAME = "yolodistill" + (".exe" if os.name == "nt" else "")


class CommandError(RuntimeError):
    """A command that failed; the message is the command's own error message."""


def binary() -> Path:
    """The command: $YOLODISTILL_BIN, else the one installed next to this Python, else the PATH's."""
    if os.environ.get("YOLODISTILL_BIN"):
        chosen = Path(os.environ["YOLODISTILL_BIN"])
        if not chosen.is_file():
            raise FileNotFoundError(f"YOLODISTILL_BIN names {chosen}, which is not a file; unset it or name the yolodistill command")
        return chosen
    schemes = [sysconfig.get_path("scripts")]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        schemes.append(sysconfig.get_path("scripts", user_scheme))
    for folder in schemes:
        candidate = Path(folder) / NAME
        if candidate.is_file():
            return candidate
    found = shutil.which(NAME)
    if found:
        return Path(found)
    raise FileNotFoundError(f"the {NAME} command is not installed next to {sys.executable} nor on the PATH; "
                            "install the yolodistill wheel, or set YOLODISTILL_BIN")


def argument(key: str, value) -> str:
    """One `key=value` argument: True/False as Ultralytics writes them, lists joined by commas."""
    if isinstance(value, bool):
        value = "True" if value else "False"
    elif isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"{key}={value}"


def run(mode: str, **kwargs) -> str:
    """Runs `yolodistill <mode> key=value …` and returns its stdout.

    Its stderr (progress, warnings) goes where this process's goes. A failure raises CommandError
    with the command's message; Ctrl-C stops the command (a training keeps its checkpoints, which
    are only ever replaced whole) and raises KeyboardInterrupt once it has ended.
    """
    args = [argument(k, v) for k, v in kwargs.items() if v is not None]
    with tempfile.TemporaryDirectory(prefix="yolodistill-") as tmp:
        error_file = Path(tmp) / "error.txt"
        env = dict(os.environ, YOLODISTILL_ERROR_FILE=str(error_file))
        child = subprocess.Popen([str(binary()), mode, *args], stdout=subprocess.PIPE, env=env, text=True)
        try:
            out, _ = child.communicate()
        except KeyboardInterrupt:
            stop(child)
            raise
        if child.returncode != 0:
            message = error_file.read_text() if error_file.exists() else f"exit status {child.returncode}"
            raise CommandError(message)
    return out


def stop(child: subprocess.Popen) -> None:
    """Ctrl-C for the command too (a terminal sends it to both; a notebook only to Python)."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_C_EVENT)
    while True:
        try:
            child.wait()
            return
        except KeyboardInterrupt:
            continue  # a second Ctrl-C while the command ends: still wait, never leave it orphaned
