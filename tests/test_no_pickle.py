"""Nothing in the project may unpickle: not on the wire, not from files another machine could write."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = re.compile(
    r"import pickle|from pickle|cPickle|cloudpickle|dill\b|recv_pyobj|send_pyobj|msgpack_numpy|allow_pickle=True"
)
TORCH_LOAD = re.compile(r"torch\.load\(")


def _violates(line: str) -> bool:
    return bool(FORBIDDEN.search(line)) or (bool(TORCH_LOAD.search(line)) and "weights_only=True" not in line)


def _tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / line for line in out.stdout.split()]
    this = Path(__file__).resolve()
    return [f for f in files if f.resolve() != this and f.exists()]


def test_no_pickle_style_serialization_anywhere() -> None:
    files = _tracked_python_files()
    assert len(files) > 20, "the scan found too few files to mean anything"
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _violates(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "pickle-style deserialization found:\n" + "\n".join(hits)


def test_the_scan_would_catch_a_violation() -> None:
    load = "torch." + "load(path)"  # spelled in two parts so that this file itself stays clean
    bad = ["import pickle", "sock.recv_pyobj()", load, "np.load(f, allow_pickle=True)"]
    assert all(_violates(line) for line in bad)
    assert not _violates("torch.load(path, map_location='cpu', weights_only=True)")
