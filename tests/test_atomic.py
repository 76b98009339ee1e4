"""Nothing half-written: failed and interrupted runs leave earlier outputs byte for byte and no temporary files."""
import os
import re
import signal
import subprocess
import threading
import time

import psutil
import pytest
from PIL import Image

from helpers import A, B, C, D, PYTHON, REPO, SUBSET, build, kaggle_tree, noise, read_npz, subprocess_env, write_list
from packer import UserError
from packer.checking import verify

pytestmark = pytest.mark.slow  # full builds: skipped by pytest -m "not slow"


def snapshot(folder):
    """Every file and folder under ``folder`` (hidden ones too), with the bytes of the files."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


def partial_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".partial")]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("split", ["train", "val"])
def test_failed_run_keeps_earlier_output(tmp_path, compress, workers, split):
    tree = kaggle_tree(tmp_path / "kaggle", counts={A: 40, B: 3, C: 4, D: 2})
    class_list = write_list(tmp_path / "mine.txt", SUBSET)
    out = tmp_path / "out"
    first = build(class_list, tree.data_dir, out, compress=compress, workers=workers)
    before = snapshot(out)
    assert {"mine_cls.npz", "mine_cls_metadata.csv"} <= set(before)
    stamps = {name: (out / name).stat().st_mtime_ns for name in before}
    bad = tree.train_dir / A / f"{A}_9.JPEG" if split == "train" else tree.val_path(12)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        build(class_list, tree.data_dir, out, compress=compress, workers=workers)
    assert snapshot(out) == before  # same names (no .partial left), same bytes
    assert {name: (out / name).stat().st_mtime_ns for name in before} == stamps
    assert not partial_files(out)
    # the earlier archive is still a good one
    assert read_npz(first.archive)["X_train"].shape == (47, 224, 224, 3)


def test_successful_rebuild_replaces_output_and_leaves_no_temporaries(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle")
    class_list = write_list(tmp_path / "mine.txt", SUBSET)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "mine_cls.npz").write_bytes(b"old archive")
    (out / "mine_cls_metadata.csv").write_bytes(b"old csv")
    (out / "unrelated.txt").write_text("keep me")
    result = build(class_list, tree.data_dir, out)
    assert not partial_files(out)
    assert not [name for name in os.listdir(out) if name.startswith(".")]
    assert (out / "unrelated.txt").read_text() == "keep me"
    assert read_npz(result.archive)["y_train"].shape == (18,)
    assert result.metadata.read_text().startswith("subset_label,")


# -- Ctrl-C ---------------------------------------------------------------------------

SLOW_CLASS = "n07000001"


@pytest.fixture(scope="module")
def slow_tree(module_tmp_path_factory):
    """1000 train images of 1600x1200 (hard links to 4 JPEGs): a 2-worker build takes many seconds."""
    root = module_tmp_path_factory.mktemp("slow")
    data_dir = root / "data"
    sources = []
    for k in range(4):
        img = Image.fromarray(noise(200, 150, seed=k)).resize((1600, 1200), Image.BICUBIC)
        path = root / f"source{k}.JPEG"
        img.save(path, "JPEG", quality=90)
        sources.append(path)
    train = data_dir / "train" / SLOW_CLASS
    train.mkdir(parents=True)
    for i in range(1000):
        os.link(sources[i % 4], train / f"{SLOW_CLASS}_{i + 1}.JPEG")
    val = data_dir / "val" / SLOW_CLASS
    val.mkdir(parents=True)
    for n in range(1, 5):
        os.link(sources[n % 4], val / f"ILSVRC2012_val_{n:08d}.JPEG")
    write_list(root / "slow.txt", [SLOW_CLASS])
    return root


# the command line run from a process with a second thread: its workers come from a fork server
THREADED_MAIN = ("import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
                 "import packer.cli; sys.exit(packer.cli.main())")


class SlowBuild:
    """``python main.py`` on the slow tree with 2 workers, in its own process group, stderr collected.

    ``threaded``: the same run from a process with a second thread (fork-server workers).
    """

    def __init__(self, slow_tree, out, threaded: bool = False):
        self.threaded = threaded
        self.proc = subprocess.Popen(
            [PYTHON, *(["-c", THREADED_MAIN] if threaded else ["main.py"]), "--subset_name", str(slow_tree / "slow.txt"),
             "--data_dir", str(slow_tree / "data"), "--out_dir", str(out), "--workers", "2"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(), start_new_session=True)
        self.started = time.monotonic()
        self.stderr = bytearray()
        self.reader = threading.Thread(
            target=lambda: [self.stderr.extend(b) for b in iter(lambda: self.proc.stderr.read1(4096), b"")],
            daemon=True)
        self.reader.start()
        self.seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        self.seen.update((p.pid, p) for p in found)
        return found

    def wait_until(self, condition, what: str) -> None:
        while not condition():
            assert self.proc.poll() is None, f"the build ended before {what}: {bytes(self.stderr)!r}"
            assert time.monotonic() - self.started < 60, f"no {what} after 60 s"
            time.sleep(0.002)

    def __enter__(self) -> "SlowBuild":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def wait_for_workers(self) -> None:
        """Until the 2 workers run (with a fork server, also the server and its resource tracker)."""
        self.wait_until(lambda: len(self.descendants()) >= (4 if self.threaded else 2), "worker processes")

    def interrupt(self, whole_group: bool, timeout: float = 60, signal_number: int = signal.SIGINT) -> tuple[int, str]:
        """Send SIGINT (or ``signal_number``); the exit code and stderr (code None: still running
        ``timeout`` s later)."""
        self.descendants()
        if whole_group:  # what a terminal does on Ctrl-C: the whole foreground process group
            os.killpg(self.proc.pid, signal_number)
        else:
            os.kill(self.proc.pid, signal_number)
        return self.outcome(timeout)

    def outcome(self, timeout: float) -> tuple[int, str]:
        """The exit code and stderr (code None: still running ``timeout`` s later)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            code = None
        self.reader.join(timeout=10)
        return code, self.stderr.decode(errors="replace")

    def workers_gone(self) -> bool:
        return not any(_running(p) for p in self.seen.values())

    def cleanup(self) -> None:
        """Kill whatever of this build is still running (only processes it started)."""
        for process in [*self.seen.values(), psutil.Process(self.proc.pid) if self.proc.poll() is None else None]:
            if process is not None:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
        self.proc.wait(timeout=10)


def _assert_ended_cleanly(code, err, expected_code: int, last_line: str, out, before) -> None:
    """Exit code, one final line starting ``last_line``, no traceback, ``out`` as it was."""
    assert code == expected_code, err
    assert err.rstrip().split("\n")[-1].startswith(last_line), err
    assert "Traceback" not in err, err  # neither the parent nor a worker
    assert snapshot(out) == before


def _earlier_outputs(out):
    out.mkdir()
    (out / "slow_cls.npz").write_bytes(b"earlier archive \x00\x01")
    (out / "slow_cls_metadata.csv").write_text("earlier csv\n")
    return snapshot(out)


@pytest.mark.parametrize("target", ["parent", "process_group"])
def test_ctrl_c(slow_tree, tmp_path, target):
    out = tmp_path / "out"
    before = _earlier_outputs(out)
    with SlowBuild(slow_tree, out) as build_:
        # progress reported (stderr is a pipe: plain lines), so the signal lands while workers run
        moved = re.compile(rb"train: [1-9]\d*/1000 images")
        build_.wait_until(lambda: moved.search(build_.stderr) and time.monotonic() - build_.started > 1.5,
                          "progress bar")
        assert partial_files(out), "no temporary file while building"
        code, err = build_.interrupt(whole_group=target == "process_group")
        _assert_ended_cleanly(code, err, 130, "imagenet-subset: interrupted", out, before)
        # the worker processes do not outlive the build
        deadline = time.monotonic() + 10
        while not build_.workers_gone():
            assert time.monotonic() < deadline, "worker processes still running after the build ended"
            time.sleep(0.1)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("target", ["parent", "process_group"])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_keep_the_work_for_resume(slow_tree, tmp_path, name, target):
    """What ``kill``, a batch scheduler or a container stop (SIGTERM) and a closed terminal (SIGHUP) send:
    workers stopped, every finished chunk journaled, the work folder kept, a line saying how to go on.
    After SIGTERM of the build alone, the same command with --resume finishes the job."""
    out = tmp_path / "out"
    before = _earlier_outputs(out)
    work = out / ".slow_cls.work"
    with SlowBuild(slow_tree, out) as build_:
        build_.wait_until(lambda: (work / "journal.jsonl").is_file() and b"\n" in (work / "journal.jsonl").read_bytes(),
                          "a journaled chunk")
        code, err = build_.interrupt(whole_group=target == "process_group", signal_number=getattr(signal, name))
        assert code == 128 + getattr(signal, name), err
        assert err.rstrip().split("\n")[-1] == (f"imagenet-subset: interrupted ({name}); run the same command with "
                                                 "--resume to continue"), err
        assert "Traceback" not in err, err
        deadline = time.monotonic() + 10
        while not build_.workers_gone():
            assert time.monotonic() - deadline < 0, "worker processes still running after the build ended"
            time.sleep(0.1)
    journaled = (work / "journal.jsonl").read_text().count("\n")
    assert journaled >= 1
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".slow_cls.work")} == before
    if (name, target) != ("SIGTERM", "parent"):
        return
    resumed = subprocess.run([PYTHON, "main.py", "--subset_name", str(slow_tree / "slow.txt"), "--data_dir",
                              str(slow_tree / "data"), "--out_dir", str(out), "--workers", "2", "--quiet", "--resume"],
                             cwd=REPO, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert resumed.returncode == 0, resumed.stderr
    assert f"imagenet-subset: resuming: {journaled} of 33 chunks already done" in resumed.stderr.splitlines()
    assert not work.exists()
    assert verify(out / "slow_cls.npz") == []


@pytest.mark.parametrize("threaded", [False, True], ids=["fork", "forkserver"])
def test_workers_exit_when_the_build_is_killed(slow_tree, tmp_path, threaded):
    """SIGKILL of the build alone (no clean-up can run): its worker processes notice and exit."""
    out = tmp_path / "out"
    out.mkdir()
    with SlowBuild(slow_tree, out, threaded) as build_:
        build_.wait_for_workers()
        workers = list(build_.seen.values())
        os.kill(build_.proc.pid, signal.SIGKILL)
        assert build_.proc.wait(timeout=10) == -signal.SIGKILL
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"processes of the build still running 10 s after it was killed: {alive}"


def test_a_killed_worker_is_one_line_and_keeps_earlier_outputs(slow_tree, tmp_path):
    """A worker killed from outside (as the OOM killer does): one line, exit 1, nothing half-written."""
    out = tmp_path / "out"
    before = _earlier_outputs(out)
    with SlowBuild(slow_tree, out) as build_:
        build_.wait_for_workers()
        build_.descendants()[0].kill()
        code, err = build_.outcome(timeout=60)
        _assert_ended_cleanly(code, err, 1, "imagenet-subset: error: a worker process died (killed by the system, "
                              "e.g. out of memory) or could not start; run again, with fewer --workers if memory "
                              "is short", out, before)


@pytest.mark.parametrize("threaded", [False, True], ids=["fork", "forkserver"])
def test_ctrl_c_while_workers_start(slow_tree, tmp_path, threaded):
    """Ctrl-C at a terminal (SIGINT to the process group) just after the worker processes appear."""
    out = tmp_path / "out"
    before = _earlier_outputs(out)
    with SlowBuild(slow_tree, out, threaded) as build_:
        build_.wait_for_workers()
        code, err = build_.interrupt(whole_group=True, timeout=10)
        _assert_ended_cleanly(code, err, 130, "imagenet-subset: interrupted", out, before)


def test_failure_while_moving_outputs_into_place_keeps_earlier_archive(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle")
    class_list = write_list(tmp_path / "mine.txt", SUBSET)
    out = tmp_path / "out"
    first = build(class_list, tree.data_dir, out)
    earlier = first.archive.read_bytes()
    # the next build makes a different archive ...
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tree.train_dir / f"{A}/{A}_1.JPEG", "JPEG")
    # ... and cannot put its CSV in place: a folder is in the way
    csv = out / "mine_cls_metadata.csv"
    csv.unlink()
    csv.mkdir()
    (csv / "keep.txt").write_text("x")
    with pytest.raises(UserError) as info:
        build(class_list, tree.data_dir, out)
    assert str(csv) in str(info.value)
    assert first.archive.read_bytes() == earlier


def test_an_error_while_the_first_chunks_are_queued_stops_the_workers():
    """The pool is shut down whatever stops the run, even before its first result."""
    from packer.options import TransformSpec
    from packer.work import Chunk, SendDeflated, run_chunks

    def chunks():
        yield Chunk("X_train", 0, (), (SendDeflated(),))
        raise RuntimeError("the chunk source failed")

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(RuntimeError, match="the chunk source failed"):
        list(run_chunks(chunks(), (TransformSpec(),), workers=2))
    # already stopped when the error arrives, not some time later
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid not in before and _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_stop_signal_taken_while_workers_start_waits_then_acts_once():
    """While the workers start, SIGINT and SIGHUP taken by the build (by any of its threads) are
    held: nothing is raised halfway through starting a process, and on leaving each one acts
    once, through the handler the build had."""
    from packer.work import _stop_signals_held

    seen: list[int] = []

    def build_handler(number, _frame):
        seen.append(number)

    previous = {number: signal.signal(number, build_handler) for number in (signal.SIGINT, signal.SIGHUP)}
    try:
        with _stop_signals_held():
            # another thread, which has them unblocked, takes them (as tqdm's or a user's thread would)
            taker = threading.Thread(target=lambda: [os.kill(os.getpid(), signal.SIGHUP),
                                                     os.kill(os.getpid(), signal.SIGINT),
                                                     os.kill(os.getpid(), signal.SIGINT)])
            taker.start()
            taker.join()
            time.sleep(0.05)
            assert seen == []
            assert signal.getsignal(signal.SIGINT) is not build_handler
        assert seen == [signal.SIGHUP, signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is build_handler
        assert signal.getsignal(signal.SIGHUP) is build_handler
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGHUP} == set()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
