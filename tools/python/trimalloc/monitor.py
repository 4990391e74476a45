"""Run a program while sampling its resident set size; write the series as CSV and plot it.

Used by tools/trimalloc-run and bench/compare. Times are CLOCK_MONOTONIC seconds (time.monotonic()),
the clock the benchmark programs print their events with, so events and samples line up.
"""
import csv
import os
import subprocess
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024.0 * 1024.0


def rss_of(pid):
    """RSS of a live process in bytes, or None once it is gone."""
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def rss_and_hwm_of(pid):
    """(RSS, high-water mark VmHWM) of a live process in bytes, or None once it is gone."""
    rss = hwm = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
    except (OSError, IndexError, ValueError):
        return None
    return (rss, hwm) if rss is not None and hwm is not None else None


class Run:
    """What run_sampled saw: exit code (negative: killed by that signal), RSS samples
    [(t, bytes)], peak RSS in bytes (the kernel's high-water mark at the last sample; None if the
    process ended before the first sample), wall seconds, start time."""

    def __init__(self, returncode, samples, peak_rss, wall, start):
        self.returncode, self.samples, self.peak_rss = returncode, samples, peak_rss
        self.wall, self.start = wall, start

    @property
    def final_rss(self):
        """The last RSS sampled before the process exited."""
        return self.samples[-1][1] if self.samples else 0


def run_sampled(argv, env=None, interval=0.005, stdout=None, stderr=None, on_start=None):
    """Runs argv, sampling its RSS every `interval` seconds until it exits.

    Raises FileNotFoundError/PermissionError when argv[0] cannot be executed. `on_start(pid)` is
    called once the process runs. The peak is the kernel's VmHWM of the program, so it also counts
    peaks between samples (wait4's ru_maxrss would not do: it includes the forked copy of this
    process from before the exec)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
    samples = []
    hwm = None
    if on_start:
        on_start(proc.pid)
    status = None
    try:
        while True:
            pid, st, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status = st
                break
            got = rss_and_hwm_of(proc.pid)
            if got is not None and got[0] > 0:  # 0: exiting, memory already gone
                samples.append((time.monotonic(), got[0]))
                hwm = got[1]
            time.sleep(interval)
    except BaseException:
        proc.kill()
        os.wait4(proc.pid, 0)
        proc.returncode = -9
        raise
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here: keep Popen from waiting again
    peak = max([hwm or 0] + [rss for _, rss in samples]) if samples else None
    return Run(code, samples, peak, wall, start)


def write_csv(path, samples, start, extra=None):
    """RSS series as CSV: t_s (from `start`), rss_bytes[, extra columns (constant per file)]."""
    extra = extra or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(extra) + ["t_s", "rss_bytes"])
        for t, rss in samples:
            w.writerow(list(extra.values()) + ["%.4f" % (t - start), rss])


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plotting needs matplotlib: run with Debian's /usr/bin/python3 "
                           "(apt-get install python3-matplotlib): %s" % e)
    return plt


# The moments worth marking on an RSS plot (others, such as checkpoints, are left out).
_EVENT_MARKERS = {"allocated": "^", "loaded": "^", "churned": "o", "freed": "v", "deleted": "v",
                  "reallocated": "D", "idle": "s", "release": "X"}


def plot_rss(path, title, series, events=None):
    """One line per name: series = {name: (samples [(t, bytes)], start)}; events =
    {name: [(t, label, rss)]} are drawn as markers on that line, one marker shape per label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    events = events or {}
    labels_seen = {}
    for name, (samples, start) in series.items():
        if not samples:
            continue
        xs = [t - start for t, _ in samples]
        ys = [rss / MiB for _, rss in samples]
        (line,) = ax.plot(xs, ys, label=name, linewidth=1.4)
        for t, label, rss in events.get(name, []):
            marker = _EVENT_MARKERS.get(label)
            if marker is None:
                continue
            ax.plot([t - start], [rss / MiB], marker=marker, color=line.get_color(), markersize=8,
                    markeredgecolor="black", linestyle="none")
            labels_seen[label] = marker
    # A legend of the event markers, beside the one of the lines.
    handles, names = ax.get_legend_handles_labels()
    for label, marker in labels_seen.items():
        (h,) = ax.plot([], [], marker=marker, color="grey", markeredgecolor="black", linestyle="none")
        handles.append(h)
        names.append(label)
    ax.legend(handles, names, fontsize=8, loc="best")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bars(path, title, groups, values, ylabel, log=False, hline=None):
    """Grouped bar chart: groups (x labels), values = {series name: [value or None per group]}."""
    plt = _pyplot()
    width = 0.8 / max(1, len(values))
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.5 * len(groups) + 3)), 5.5), dpi=100)
    for i, (name, vals) in enumerate(values.items()):
        xs = [g + i * width for g in range(len(groups)) if vals[g] is not None]
        ys = [v for v in vals if v is not None]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    if hline is not None:
        ax.axhline(hline, color="black", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
