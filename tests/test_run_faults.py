"""Two faults a user met by trying inputs: a metadata.jsonl that is not UTF-8, and two runs into one output folder.

Each ends in one ``error:`` line naming the problem and the fix, a non-zero exit, and nothing written; a run that
crashed never leaves its folder locked.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnhelpers.data import check_metadata
from cnhelpers.run_lock import LOCK_FILE, OutputDirInUseError, OutputDirLock

pytestmark = pytest.mark.colab  # datasets reads the metadata; the CLI runs on Colab's accelerate too


def run_cli(*argv, timeout=240):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cnhelpers.train", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def cli_flags(base, data, output_dir, steps=2, data_flag="--train_data_dir"):
    return ["--pretrained_model_name_or_path", base, data_flag, data, "--output_dir", output_dir,
            "--resolution", "64", "--train_batch_size", "4", "--max_train_steps", steps, "--report_to", "none"]


def copy_imagefolder(source, target, metadata: bytes):
    import shutil

    shutil.copytree(source, target)
    (target / "metadata.jsonl").write_bytes(metadata)
    return target


@pytest.mark.parametrize("data_flag", ["--train_data_dir", "--dataset_name"])  # a local folder either way
def test_a_metadata_line_that_is_not_utf8_is_one_line_naming_the_file_the_line_and_the_fix(fill_dir, tiny_base,
                                                                                             tmp_path, data_flag):
    lines = (fill_dir / "metadata.jsonl").read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"text": "', b'"text": "caf\xe9 ')  # latin-1, as an editor on Windows may save it
    data = copy_imagefolder(fill_dir, tmp_path / "data", b"\n".join(lines) + b"\n")
    result = run_cli(*cli_flags(tiny_base, data, tmp_path / "out", data_flag=data_flag))
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "metadata.jsonl line 3 is not UTF-8" in error and "iconv" in error
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "train_log.jsonl").exists()


def test_a_metadata_line_that_is_not_json_names_its_line(fill_dir, tmp_path):
    lines = (fill_dir / "metadata.jsonl").read_bytes().splitlines()
    lines[4] = lines[4][:-1]  # the closing brace lost
    data = copy_imagefolder(fill_dir, tmp_path / "data", b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl line 5 is not a JSON object"):
        check_metadata(data)
    check_metadata(fill_dir)  # the intact folder passes


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_run_that_holds_it(fill_dir, tiny_base, tmp_path):
    out = tmp_path / "out"
    with OutputDirLock(out):  # this process trains into it (as a notebook's cell would)
        result = run_cli(*cli_flags(tiny_base, fill_dir, out))
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert f"{out} is in use by another run (process {os.getpid()}" in error and "another --output_dir" in error
    assert not (out / "train_log.jsonl").exists()  # the refused run wrote nothing


def test_the_lock_is_refused_in_the_same_process_and_free_again_once_released(tmp_path):
    with OutputDirLock(tmp_path):
        with pytest.raises(OutputDirInUseError, match="is in use by another run"):
            with OutputDirLock(tmp_path):
                pass
    assert not (tmp_path / LOCK_FILE).exists()  # a finished run leaves only its outputs
    with OutputDirLock(tmp_path):  # released: the next run takes it
        pass


def test_a_run_killed_while_holding_the_lock_leaves_the_folder_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom cnhelpers.run_lock import OutputDirLock\n"
        f"with OutputDirLock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError):
            OutputDirLock(tmp_path).__enter__()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with OutputDirLock(tmp_path):  # the kernel dropped the dead process's lock
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        holder.kill()


def test_a_finished_run_frees_its_folder_for_the_next(fill_dir, tiny_base, tmp_path):
    from cnhelpers.config import training_args
    from cnhelpers.training import train

    flags = dict(pretrained_model_name_or_path=tiny_base, train_data_dir=fill_dir, output_dir=tmp_path / "out",
                 resolution=64, train_batch_size=4, max_train_steps=1, report_to="none")
    train(training_args(**flags))
    start = time.monotonic()
    with OutputDirLock(tmp_path / "out"):  # free at once
        assert time.monotonic() - start < 5
