"""Show how a build progresses: a tqdm bar per split on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) each split gets a tqdm bar when its first
images are done. Anywhere else (a batch job's log, a pipe, CI) redraws and
escape codes would only clutter the file, so each split gets a plain line when
its first images are done, every ``PLAIN_SECONDS`` while it runs, and when it is
complete (or the build stops)::

    train: 1024/39000 images (2%), 312 images/s
"""
import sys
import time

PLAIN_SECONDS = 10.0


class Progress:
    """``with Progress({"train": 39000, "val": 1500}) as progress: progress.update("train", 32)``.

    Leaving the block closes every bar (and writes each split's last plain
    line), also when the build stops with an error or a Ctrl-C.
    """

    def __init__(self, totals: dict[str, int], enabled: bool = True, stream=None):
        self.totals = totals
        self.done = {split: 0 for split in totals}
        self._stream = stream if stream is not None else sys.stderr
        self._mode = ("bars" if is_terminal(self._stream) else "lines") if enabled else "off"
        self._bars: dict = {}
        self._started: dict[str, float] = {}
        self._last_line: dict[str, float] = {}
        self._shown: dict[str, int] = {}  # the count each split's last plain line showed
        self._last_result = time.monotonic()

    def __enter__(self) -> "Progress":
        if self._mode == "bars":
            from tqdm import tqdm

            self._earlier_bars = set(getattr(tqdm, "_instances", ()))
        return self

    def update(self, split: str, count: int) -> None:
        """``count`` more images of ``split`` are done."""
        now = time.monotonic()
        first = split not in self._started
        if first:  # its first images began when the previous result came in
            self._started[split] = self._last_result
        self._last_result = now
        self.done[split] += count
        if self._mode == "bars":
            if first:
                from tqdm import tqdm

                self._bars[split] = tqdm(total=self.totals[split], desc=split, unit="img", dynamic_ncols=True,
                                         file=self._stream)
            self._bars[split].update(count)
        elif self._mode == "lines" and (first or self.done[split] == self.totals[split]
                                        or now - self._last_line[split] >= PLAIN_SECONDS):
            self._print_line(split, now)

    def __exit__(self, *exc) -> None:
        if self._mode == "bars":
            from tqdm import tqdm

            # every bar of this build, also one whose constructor a Ctrl-C interrupted after drawing it
            for bar in set(self._bars.values()) | (set(getattr(tqdm, "_instances", ())) - self._earlier_bars):
                bar.close()
        elif self._mode == "lines":
            now = time.monotonic()
            for split in self._started:
                if self._shown[split] != self.done[split]:
                    self._print_line(split, now)

    def _print_line(self, split: str, now: float) -> None:
        self._last_line[split], self._shown[split] = now, self.done[split]
        done, total = self.done[split], self.totals[split]
        percent = 100 * done // total if total else 100
        seconds = now - self._started[split]
        rate = f", {done / seconds:.0f} images/s" if seconds >= 0.5 else ""
        print(f"{split}: {done}/{total} images ({percent}%){rate}", file=self._stream, flush=True)


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
