"""A map stopped by SIGTERM leaves no partial cache file behind and exits cleanly."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from hf_prune.embed._base import Embedder

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")

CHILD = textwrap.dedent('''
    import os, signal, sys, time
    import numpy as np
    from datasets import load_from_disk
    from hf_prune.embed._base import Embedder

    class Slow(Embedder):
        def __init__(self):
            super().__init__(input_columns=["x"], device="cpu", batch_size=2)

        def _output_dims(self):
            return {"y": None}

        def _embed(self, batch, device):
            x = np.asarray(batch["x"], np.float32)
            if x[0] == 4:  # two batches are already written to the temporary cache file
                print("busy", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
                time.sleep(1.0)
            return {"y": 2 * x}

    if sys.argv[2] == "handler":  # the program handles SIGTERM itself: the map leaves that alone
        signal.signal(signal.SIGTERM, lambda *args: sys.exit(7))
    try:
        Slow().map(load_from_disk(sys.argv[1]), batch_size=2)
    finally:
        print("finally ran", flush=True)
    print("finished", flush=True)
''')


class Double(Embedder):
    def __init__(self):
        super().__init__(input_columns=["x"], device="cpu", batch_size=2)

    def _output_dims(self):
        return {"y": None}

    def _embed(self, batch, device):
        return {"y": 2 * np.asarray(batch["x"], np.float32)}


def run_and_terminate(tmp_path, mode="default"):
    Dataset.from_dict({"x": list(range(12))}).save_to_disk(str(tmp_path / "ds"))
    before = sorted(os.listdir(tmp_path / "ds"))
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "ds"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    busy = proc.stdout.readline()
    assert busy.startswith("busy"), busy + proc.communicate(timeout=60)[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    left = sorted(set(os.listdir(tmp_path / "ds")) - set(before))
    return busy, proc.returncode, busy + out, err, left


def test_sigterm_during_map_removes_the_partial_file_and_exits_143(tmp_path):
    busy, code, out, err, left = run_and_terminate(tmp_path)
    assert left == []  # no tmpXXXX (and no cache file) in the dataset's folder
    assert code == 128 + signal.SIGTERM, err  # the shell's status for "terminated", as a clean SystemExit
    assert busy.split()[1] == "True"  # the guard was installed for the map
    assert "finally ran" in out and "finished" not in out  # the caller's cleanup ran; it did not carry on
    # The next run computes the column from scratch and is complete.
    ds = load_from_disk(str(tmp_path / "ds"))
    np.testing.assert_array_equal(Double().map(ds)["y"], 2 * np.arange(12.0))


def test_a_program_with_its_own_sigterm_handler_keeps_it(tmp_path):
    busy, code, out, err, left = run_and_terminate(tmp_path, "handler")
    assert busy.split()[1] == "True" and code == 7, err  # its handler ran, as without hf_prune


def test_the_handler_is_restored_after_map():
    previous = signal.getsignal(signal.SIGTERM)
    ds = Dataset.from_dict({"x": [1.0, 2.0, 3.0]})
    assert Double().map(ds)["y"] == [2.0, 4.0, 6.0]
    assert signal.getsignal(signal.SIGTERM) is previous
    with pytest.raises(ValueError):
        Double().map(Dataset.from_dict({"x": [1.0, float("nan")]}))  # a failing map restores it too
    assert signal.getsignal(signal.SIGTERM) is previous
