"""Many targets on Dask: ``run_batch`` (``gsprep batch``) and its manifest.

Frame-level work first, once per frame: one Dask task per (band, frame
file, HDU) fits its sky and finds its PSF stars, one task per set of frames
that targets share fits their PSFs (:mod:`gsprep.framecache`: stored under
``OUT/frames/<key>/``, keyed by the frame's content hash and the options,
reused by every target on the frame and by the next run).  Then one task
per target (all its bands), depending on its frames' tasks: the worker opens
the target's frames itself, runs :func:`gsprep.pipeline.run_target` with the
cached frame products into a private folder under ``OUT/.gsprep-partial/``
and renames it to ``OUT/<name>/`` only when every file is written, so a
killed run never leaves a half-written product where a finished one
belongs.  A target whose frames no other target of the run uses (one
target per frame) gets no frame or PSF task: its own task computes its
frames' products from the frames it reads, as the per-target path does,
and stores them in the cache too (:func:`solo_task`), so it costs no more
than that path and a later target on those frames reuses them.  Tasks get
paths and keys, never images: each frame is read by the worker that needs
it.  The driver appends one row per
finished target to ``OUT/manifest.csv`` as results arrive (flushed and
synced), so a crash loses at most the targets in flight; the next run skips
targets whose products are all present and unchanged and retries the
failed ones.  Frame tasks are recorded in ``OUT/frames/manifest.csv``, and
so is the frame work a lone target did in its own task (one row per band
whose products it computed or read, a failed row for a frame it could not
open, one for its PSF fit; a band it never got to, the target being off
that frame, has no row).

The output folder must be visible to every worker (a shared file system on
a cluster), and so must the frames.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import datetime
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ._checks import read_table
from .pipeline import PrepareConfig, load_config, run_target

__all__ = ["FRAME_COLUMNS", "MANIFEST_COLUMNS", "BatchProgress", "BatchResult", "read_frame_manifest", "read_manifest",
           "read_targets", "run_batch", "target_configs"]

MANIFEST = "manifest.csv"
FRAMES = "frames"  # the frame cache, OUT/frames/<key>/, and its manifest OUT/frames/manifest.csv
FRAME_COLUMNS = ("kind", "frame", "band", "file", "hdu", "status", "error", "keys", "computed", "time_s", "worker",
                 "finished")
PARTIAL = ".gsprep-partial"
LOCK = ".gsprep-batch.lock"
MANIFEST_COLUMNS = ("name", "status", "error", "outputs", "bytes", "time_s", "worker", "finished")
_STATUSES = ("done", "failed")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*")


# --------------------------------------------------------------------------
# targets


def read_targets(targets):
    """Read and check a targets table (CSV, ECSV, FITS, ... or an astropy Table).

    Columns: ``name`` (used for the output folder and file names: letters,
    digits, ``_ . + -``), ``ra`` and ``dec`` (ICRS degrees) or, for frames
    without a WCS, ``x`` and ``y`` (0-based pixels; the bands then need
    ``pixel_scale`` in the config); optionally
    ``r`` (cutout half-size, arcsec) and ``file_<band>`` (that band's frame,
    overriding the config's file template).  Names must be unique.
    """
    if isinstance(targets, Table):
        tab = targets.copy(copy_data=True)
    else:
        tab = read_table("targets", targets)
    sky = {"ra", "dec"} & set(tab.colnames)
    pix = {"x", "y"} & set(tab.colnames)
    if sky and pix:
        msg = (f"targets: columns ra, dec (degrees) or x, y (pixels), not both; the table has {sorted(sky | pix)}")
        raise ValueError(msg)
    pair = ("x", "y") if pix else ("ra", "dec")
    missing = [c for c in ("name", *pair) if c not in tab.colnames]
    if missing:
        msg = (f"targets: missing column(s) {missing} (a target is ra, dec in degrees or x, y in 0-based pixels); "
               f"the table has {tab.colnames}")
        raise ValueError(msg)
    if len(tab) == 0:
        msg = "targets: the table has no rows"
        raise ValueError(msg)
    names = [str(n).strip() for n in tab["name"]]
    bad = [n for n in names if not _SAFE_NAME.fullmatch(n)]
    if bad:
        msg = (f"targets: name(s) {bad[:5]} cannot be folder names; use letters, digits and _ . + - "
               "(not starting with '.')")
        raise ValueError(msg)
    seen, dup = set(), []
    for n in names:
        if n in seen:
            dup.append(n)
        seen.add(n)
    if dup:
        msg = f"targets: duplicate name(s) {sorted(set(dup))[:5]}; each target needs its own name"
        raise ValueError(msg)
    tab["name"] = names
    limits = ((("x", -np.inf, np.inf), ("y", -np.inf, np.inf)) if pix
              else (("ra", 0.0, 360.0), ("dec", -90.0, 90.0)))
    what = "pixels" if pix else "degrees"
    for col, lo, hi in limits:
        try:
            v = np.asarray(tab[col], float)
        except (TypeError, ValueError):
            msg = f"targets: column {col!r} must be numbers ({what})"
            raise ValueError(msg) from None
        wrong = ~np.isfinite(v) | (v < lo) | (v > hi)
        if wrong.any():
            bad_rows = [n for n, b in zip(names, wrong, strict=True) if b][:5]
            rng = "not a finite number" if pix else f"out of [{lo:g}, {hi:g}] degrees"
            msg = f"targets: {col} {rng} or missing for {bad_rows}"
            raise ValueError(msg)
    if "r" in tab.colnames:
        r = np.asarray(tab["r"], float)
        if not np.all(np.isfinite(r) & (r > 0)):
            msg = "targets: column 'r' (half-size, arcsec) must be positive numbers"
            raise ValueError(msg)
    return tab


def target_configs(targets, config, *, targets_dir=None):
    """One :class:`PrepareConfig` per row of ``targets`` (from ``read_targets``).

    An optional ``redshift`` column goes to the ``.lyric``'s ``R3)``.
    Band files come from a ``file_<band>`` column when the table has one
    (relative to ``targets_dir``), else from the config's file template,
    filled with the row (``"frames/{name}_g.fits"``).
    """
    base = targets_dir or os.getcwd()
    cols = targets.colnames
    out = []
    for row in targets:
        values = {c: row[c] for c in cols}
        bands = {}
        for band, spec in config.bands.items():
            col = f"file_{band}"
            if col in cols:
                f = str(row[col])
                f = f if os.path.isabs(f) else os.path.join(base, f)
            else:
                try:
                    f = spec.file.format(**values)
                except KeyError as exc:
                    msg = (f"config: [bands.{band}] file {spec.file!r} names {{{exc.args[0]}}}, which is not a column "
                           f"of the targets table {cols}")
                    raise ValueError(msg) from None
                except (IndexError, ValueError) as exc:
                    msg = f"config: [bands.{band}] file {spec.file!r} is not a valid template ({exc})"
                    raise ValueError(msg) from None
            bands[band] = dataclasses.replace(spec, file=f)
        r = float(row["r"]) if "r" in cols else config.r
        if not np.isfinite(r):
            msg = "targets: no 'r' column and no [target] r (half-size, arcsec) in the config"
            raise ValueError(msg)
        z = float(row["redshift"]) if "redshift" in cols else None
        if z is not None and np.isfinite(z) and z < 0:
            msg = f"targets: redshift of {row['name']} must be >= 0, got {z}"
            raise ValueError(msg)
        z = z if z is not None and np.isfinite(z) else None  # blank: the .lyric says it is unknown
        if "x" in cols and "ra" not in cols:  # a target in pixels (frames without a WCS)
            where = {"ra": None, "dec": None, "x": float(row["x"]), "y": float(row["y"])}
        else:
            where = {"ra": float(row["ra"]), "dec": float(row["dec"]), "x": None, "y": None}
        out.append(dataclasses.replace(config, name=str(row["name"]), r=r, bands=bands, redshift=z, **where))
    return out


# --------------------------------------------------------------------------
# manifest


def _clean(text):
    return " ".join(str(text).split())


def _parse_row(row):
    if len(row) != len(MANIFEST_COLUMNS):
        return None
    rec = dict(zip(MANIFEST_COLUMNS, row, strict=True))
    try:
        rec["bytes"] = int(rec["bytes"])
        rec["time_s"] = float(rec["time_s"])
        datetime.datetime.strptime(rec["finished"], _TIME_FORMAT)
    except ValueError:
        return None
    if rec["status"] not in _STATUSES or not rec["name"]:
        return None
    rec["outputs"] = [p for p in rec["outputs"].split(";") if p]
    return rec


def _manifest_records(out_dir):
    """name -> latest record; rows cut short by a crash are ignored."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != MANIFEST_COLUMNS:
        msg = f"out_dir: {path!r} is not a gsprep batch manifest (expected columns {list(MANIFEST_COLUMNS)})"
        raise ValueError(msg)
    recs = {}
    for row in rows[1:]:
        rec = _parse_row(row)
        if rec is not None:
            recs[rec["name"]] = rec
    return recs


def read_manifest(out_dir):
    """The batch manifest of ``out_dir`` as a Table, one row per target (latest run).

    Columns: ``name``, ``status`` (done / failed), ``error`` (per-band
    messages, ``band: message; ...``), ``outputs`` (paths relative to
    ``out_dir``, ``;``-separated), ``bytes`` (their total size), ``time_s``
    (wall time of the target on its worker), ``worker`` and ``finished``
    (UTC).
    """
    recs = _manifest_records(os.fspath(out_dir))
    rows = [[r[c] if c != "outputs" else ";".join(r[c]) for c in MANIFEST_COLUMNS] for r in recs.values()]
    dtype = [str, str, str, str, int, float, str, str]
    if not rows:
        return Table(names=MANIFEST_COLUMNS, dtype=dtype)
    return Table(rows=rows, names=MANIFEST_COLUMNS, dtype=dtype)


def read_frame_manifest(out_dir):
    """The frame tasks of ``out_dir``'s batch runs (``OUT/frames/manifest.csv``) as a Table, latest row per frame.

    Columns: ``kind`` (``frame``: sky and stars of one band's frame;
    ``psf``: the PSF fit of a set of frames), ``frame``, ``band``,
    ``file``, ``hdu``, ``status`` (done / failed), ``error``, ``keys`` (the
    cache entries under ``OUT/frames/``), ``computed`` (what this run
    computed: ``sky;stars``, ``psf``; empty when read from the cache),
    ``time_s``, ``worker``, ``finished``.
    """
    path = os.path.join(os.fspath(out_dir), FRAMES, MANIFEST)
    recs = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        for row in rows[1:]:
            if len(row) == len(FRAME_COLUMNS) and row[5] in _STATUSES:
                recs[(row[0], row[1])] = row
    dtype = [str] * 9 + [float, str, str]
    for row in recs.values():
        try:
            row[9] = float(row[9])
        except ValueError:
            row[9] = float("nan")
    if not recs:
        return Table(names=FRAME_COLUMNS, dtype=dtype)
    return Table(rows=list(recs.values()), names=FRAME_COLUMNS, dtype=dtype)


def _row(rec):
    return [";".join(rec[c]) if c == "outputs" else rec[c] for c in MANIFEST_COLUMNS]


def _append(path, rec, columns=MANIFEST_COLUMNS):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a+b") as fb:
        if not new:  # a run killed mid-line leaves no newline: start this row on its own line
            fb.seek(-1, os.SEEK_END)
            if fb.read(1) != b"\n":
                fb.write(b"\n")
    with open(path, "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if new:
            w.writerow(columns)
        w.writerow(_row(rec) if columns is MANIFEST_COLUMNS else [_clean(rec.get(c, "")) for c in columns])
        f.flush()
        os.fsync(f.fileno())


def _compact(out_dir):
    """Rewrite the manifest with one row per target (atomically)."""
    path = os.path.join(out_dir, MANIFEST)
    recs = _manifest_records(out_dir)
    if not recs:
        return
    _rewrite_csv(path, MANIFEST_COLUMNS, (_row(rec) for rec in recs.values()))


def _rewrite_csv(path, columns, rows):
    """Replace the CSV file ``path`` by ``columns`` and ``rows`` atomically (temp file, fsync, rename)."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _valid(out_dir, rec):
    """A finished target's products are all there with the recorded total size."""
    try:
        sizes = [os.path.getsize(os.path.join(out_dir, p)) for p in rec["outputs"]]
    except OSError:
        return False
    return bool(sizes) and sum(sizes) == rec["bytes"]


# --------------------------------------------------------------------------
# the task a worker runs


def _listing(out_dir, name):
    folder = os.path.join(out_dir, name)
    if not os.path.isdir(folder):
        return [], 0
    files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    return [f"{name}/{f}" for f in files], sum(os.path.getsize(os.path.join(folder, f)) for f in files)


def _swap_in(tmp, final, partial):
    """Put the finished folder ``tmp`` at ``final`` (replacing an older one)."""
    old = None
    if os.path.exists(final):
        old = os.path.join(partial, f"old-{os.path.basename(final)}.{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    if os.listdir(tmp):
        os.rename(tmp, final)
    else:
        os.rmdir(tmp)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _use_compile_cache(folder):
    """Point JAX's persistent compilation cache at ``folder`` (once per process)."""
    from ._jaxcache import use_compile_cache

    use_compile_cache(folder)


def prepare_one(config, out_dir, figures=True, compile_cache=None, frames=None):
    """Prepare one target into ``out_dir/<name>/`` and return its manifest record.

    This is the Dask task (it runs on a worker): it reads the frames,
    writes everything into a private folder and renames that into place at
    the end.  It never raises for a bad target: the error is in the record.
    ``compile_cache``: a folder for JAX's persistent compilation cache, so
    that workers reuse each other's compiled fits.  ``frames``: the frame
    products (:class:`gsprep.framecache.CachedFrames`), else computed here.
    """
    return _prepare(config, out_dir, figures, compile_cache, frames)[0]


def _prepare(config, out_dir, figures, compile_cache, frames, t0=None):
    """``prepare_one``; returns ``(record, band errors)`` (band -> message; empty when the target raised)."""
    t0 = time.perf_counter() if t0 is None else t0
    _use_compile_cache(compile_cache)
    partial = os.path.join(out_dir, PARTIAL)
    os.makedirs(partial, exist_ok=True)
    tmp = os.path.join(partial, f"{config.name}.{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    errors = {}
    try:
        run = run_target(config, tmp, figures=figures, overwrite=False, frames=frames)
        errors = dict(run.errors)
        error = "; ".join(f"{b}: {m}" for b, m in run.errors.items())
        _swap_in(tmp, os.path.join(out_dir, config.name), partial)
    except Exception as exc:  # noqa: BLE001 - a bad target must not stop the batch; its message goes in the manifest
        shutil.rmtree(tmp, ignore_errors=True)
        error = f"{type(exc).__name__}: {exc}"
    outputs, nbytes = _listing(out_dir, config.name)
    rec = {"name": config.name, "status": "failed" if error else "done", "error": _clean(error),
           "outputs": outputs, "bytes": nbytes, "time_s": round(time.perf_counter() - t0, 3),
           "worker": f"{socket.gethostname()}:{os.getpid()}",
           "finished": datetime.datetime.now(datetime.UTC).strftime(_TIME_FORMAT)}
    return rec, errors


def target_task(config, out_dir, figures, compile_cache, root, field):
    """The Dask task of one target with frame reuse: ``field`` is its frames' record (from ``field_task``)."""
    from .framecache import CachedFrames, cache_at

    keys = {fr["band"]: tuple(fr["keys"].split(";")) for fr in field["frames"] if fr["status"] == "done"}
    frames = CachedFrames(cache_at(root), config, keys)
    rec = prepare_one(config, out_dir, figures, compile_cache, frames=frames)
    rec["frame_work"] = list(frames.computed)  # frame-level work this target had to do itself (normally none)
    return rec


def solo_task(config, out_dir, figures, compile_cache, root, idents):
    """The Dask task of a target alone on its frames in this run: its frames' work done here, in one task.

    No other target of the run shares its frames, so separate frame and
    PSF tasks would only add tasks, a second read of each frame and the
    cache round trip.  The target is prepared as by ``target_task``, with
    a :class:`~gsprep.framecache.CachedFrames` that starts from the entries
    already cached (those bands read by window) and computes the missing
    ones from the frame it has read, storing them in the cache for a later
    run or target.  ``idents``: ``{"frames": band -> ident, "psf": ident}``;
    the record's ``frames`` are the frames-manifest rows of what was
    computed or read here (:meth:`~gsprep.framecache.CachedFrames.records`),
    ``frame_work`` what was computed.
    """
    from .framecache import CachedFrames, cache_at, cached_keys

    t0 = time.perf_counter()
    cache = cache_at(root)
    frames = CachedFrames(cache, config, cached_keys(cache, config))
    rec, errors = _prepare(config, out_dir, figures, compile_cache, frames, t0=t0)
    rec["frame_work"] = list(frames.computed)
    try:
        rec["frames"] = frames.records(idents, errors)
    except Exception:  # noqa: BLE001 - the target is prepared; a row it cannot give is only missing from the manifest
        rec["frames"] = []
    return rec


# --------------------------------------------------------------------------
# the driver


@dataclass(frozen=True)
class BatchResult:
    """What ``run_batch`` did.

    ``done`` / ``failed``: targets in each state after this run (all of
    the table, earlier runs included); ``skipped``: targets already done
    (or failed, with ``retry_failed=False``) that were not run again;
    ``ran``: targets run now; ``records``: their manifest records;
    ``elapsed_s``: wall time of this run.
    """

    out_dir: str
    manifest: str
    total: int
    done: int
    failed: int
    skipped: int
    ran: int
    elapsed_s: float
    records: tuple

    @property
    def targets_per_minute(self):
        """Targets run per minute of wall time in this run (NaN when none ran)."""
        return 60.0 * self.ran / self.elapsed_s if self.ran and self.elapsed_s > 0 else float("nan")


@contextlib.contextmanager
def _lock(out_dir):
    """Hold ``out_dir``'s lock file (``host:pid``) while a batch writes there.

    A lock left by a dead process on this host is stale and taken over.  A
    lock held on another host is never taken over: this host cannot tell
    whether that batch still runs (a cluster's shared file system), so the
    run is refused with a message naming the host and the file to delete.
    """
    path = os.path.join(out_dir, LOCK)
    here = socket.gethostname()
    me = f"{here}:{os.getpid()}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(path) as f:
            holder = f.read().strip()
        host, _, pid = holder.rpartition(":")
        if not host or not pid.isdigit():
            msg = (f"out_dir: {out_dir!r} is locked by a gsprep batch whose lock file {path!r} names no host "
                   f"({holder!r}); if no batch is writing there, delete that file and run again")
            raise RuntimeError(msg) from None
        if host != here:
            msg = (f"out_dir: {out_dir!r} is locked by a gsprep batch on host {host} (pid {pid}); this host "
                   f"({here}) cannot tell whether it still runs. If no batch runs there any more, delete "
                   f"{path!r} and run again")
            raise RuntimeError(msg) from None
        if _alive(int(pid)):
            msg = f"out_dir: another gsprep batch ({holder}) is writing to {out_dir!r}"
            raise RuntimeError(msg) from None
        os.remove(path)  # left by a run on this host that was killed
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as f:
        f.write(me)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_client(scheduler, workers, dask_logs=logging.CRITICAL, dashboard=False):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    n = int(workers) if workers else max(1, min(os.cpu_count() or 1, 4))
    # the dashboard (it needs bokeh) only when asked for; its HTTP server on a free port either way (no warning
    # that 8787 is taken)
    import warnings

    with warnings.catch_warnings():  # "Port 8787 is already in use ...": Dask then takes another one
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               scheduler_kwargs={"dashboard": bool(dashboard)},
                               env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, silence_logs=dask_logs)
    return Client(cluster), cluster


def dashboard_link(client, *, local=False):
    """The Dask dashboard's address of ``client``'s scheduler, or None when it serves none.

    ``local``: the scheduler runs in this Python (a ``LocalCluster``), whose
    dashboard is there only when bokeh is installed here.
    """
    import importlib.util

    if local and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - an older / unusual scheduler: no address to give
        return None


def run_batch(targets, config, out_dir, *, client=None, scheduler=None, workers=None, figures=True,
              retry_failed=True, progress=None, targets_dir=None, compile_cache="default",
              dask_logs=logging.CRITICAL, reuse_frames=True, frame_progress=None, on_client=None, dashboard=False):
    """Prepare many targets on Dask, resumably; returns a :class:`BatchResult`.

    Parameters
    ----------
    targets : path or Table
        The targets table (see :func:`read_targets`).
    config : path or PrepareConfig
        The bands TOML (``load_config(path, batch=True)``): band files are
        templates filled from each target's row.
    out_dir : path
        Products go to ``out_dir/<name>/`` (the files ``gsprep prepare``
        writes), the manifest to ``out_dir/manifest.csv``, the frame cache
        to ``out_dir/frames/``.
    client : dask.distributed.Client, optional
        Use this client (your own cluster).  Else ``scheduler`` (an address
        such as ``"tcp://host:8786"``) is connected to, else a
        ``LocalCluster`` of ``workers`` processes (default: the number of
        cores, at most 4) is started and closed at the end.
    figures : bool
        Write the PNG figures too (default True, as ``gsprep prepare``).
    retry_failed : bool
        Run targets that failed before again (default True).  Targets done
        before are skipped while their products are all present with the
        recorded size; otherwise they are run again.
    progress : callable, optional
        Called as ``progress(record, counts)`` after each target finishes,
        ``counts`` a dict with ``total``, ``done``, ``failed``, ``remaining``.
    targets_dir : path, optional
        Folder that relative ``file_<band>`` entries of the table are
        relative to (default: the table file's folder, or the current one).
    reuse_frames : bool
        Compute each frame's sky, stars and PSF once, in frame tasks that
        the target tasks depend on, and keep them in ``out_dir/frames/``
        (default True; see :mod:`gsprep.framecache`).  A target alone on
        its frames in this run does that work in its own task (and stores
        it).  False: every target task does its frames' work itself,
        nothing is cached (the products are the same).
    frame_progress : callable, optional
        Called as ``frame_progress(record, counts)`` after each frame-level
        task (a row of :func:`read_frame_manifest`), ``counts`` as for
        ``progress``, over the frame-level tasks of this run.
    on_client : callable, optional
        Called with the Dask client once it is connected (before any task),
        e.g. to print :func:`dashboard_link`.
    dashboard : bool
        Serve Dask's dashboard from the local cluster (needs bokeh).

    Notes
    -----
    The local cluster's workers are new processes that import your script,
    so in a script call ``run_batch`` under ``if __name__ == "__main__":``
    (as for any ``multiprocessing`` or Dask code).
    compile_cache : path or None
        Folder for JAX's persistent compilation cache, shared by the workers
        (default: the command line's, ``~/.cache/gsprep/jax`` or
        ``$GSPREP_COMPILE_CACHE``; None: no cache).  Workers then load the
        PSF fit compiled by an earlier run instead of compiling it again.
    dask_logs : int
        Logging level of the local cluster Dask starts (default
        ``logging.CRITICAL``: quiet, since every failure is in the manifest;
        ``logging.WARNING`` is Dask's own default).

    Raises
    ------
    RuntimeError
        Another batch holds ``out_dir``'s lock: a live process on this host,
        or any process on another host (delete the lock file named in the
        message once no batch runs there).
    """
    t0 = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        msg = f"workers must be an integer >= 1, got {workers!r}"
        raise ValueError(msg)
    if targets_dir is None and not isinstance(targets, Table):
        targets_dir = os.path.dirname(os.path.abspath(os.fspath(targets)))
    tab = read_targets(targets)
    if reuse_frames and FRAMES in list(tab["name"]):
        msg = f"targets: the name {FRAMES!r} is the frame cache's folder; give that target another name"
        raise ValueError(msg)
    if not isinstance(config, PrepareConfig):
        config = load_config(config, batch=True)
    configs = target_configs(tab, config, targets_dir=targets_dir)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, MANIFEST)
    if compile_cache == "default":
        from ._jaxcache import default_cache_dir

        compile_cache = default_cache_dir()
    elif compile_cache is not None:
        compile_cache = os.path.abspath(os.fspath(compile_cache))
    with _lock(out_dir):
        shutil.rmtree(os.path.join(out_dir, PARTIAL), ignore_errors=True)  # leftovers of a killed run
        from .framecache import FrameCache

        FrameCache(os.path.join(out_dir, FRAMES)).clean()  # half-written cache entries of a killed run
        prev = _manifest_records(out_dir)
        status, todo = {}, []
        for cfg in configs:
            rec = prev.get(cfg.name)
            if rec and rec["status"] == "done" and _valid(out_dir, rec):
                status[cfg.name] = "done"
            elif rec and rec["status"] == "failed" and not retry_failed:
                status[cfg.name] = "failed"
            else:
                todo.append(cfg)
        skipped = len(configs) - len(todo)
        records = []
        if todo:
            opts = {"figures": figures, "compile_cache": compile_cache, "progress": progress, "dask_logs": dask_logs,
                    "reuse_frames": reuse_frames, "frame_progress": frame_progress, "on_client": on_client,
                    "dashboard": dashboard}
            records = _run(todo, out_dir, manifest, client, scheduler, workers, status, len(configs), **opts)
        _compact(out_dir)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out_dir, PARTIAL))
    counts = collections.Counter(status.values())
    return BatchResult(out_dir=out_dir, manifest=manifest, total=len(configs), done=counts["done"],
                       failed=counts["failed"], skipped=skipped, ran=len(records),
                       elapsed_s=time.perf_counter() - t0, records=tuple(records))


def _failed_record(name, error):
    return {"name": name, "status": "failed", "error": _clean(error), "outputs": [], "bytes": 0, "time_s": 0.0,
            "worker": "", "finished": datetime.datetime.now(datetime.UTC).strftime(_TIME_FORMAT)}


def _submit(client, todo, out_dir, figures, compile_cache, reuse_frames):
    """Submit every task; returns ``(targets, frame_level, parents, solo)``: future -> name / ident, target ->
    field, target done in one task -> the frames-manifest rows it brings back."""
    token = uuid.uuid4().hex[:8]
    targets, frame_level, parents, solo = {}, {}, {}, {}
    if not reuse_frames:
        for cfg in todo:
            fut = client.submit(prepare_one, cfg, out_dir, figures, compile_cache, key=f"gsprep-{cfg.name}-{token}",
                                pure=False)
            targets[fut] = cfg.name
        return targets, frame_level, parents, solo
    from .framecache import field_task, frame_task

    root = os.path.join(out_dir, FRAMES)
    # a field (set of frames) of one target whose frames no other field uses: that target does its frames' work
    # in its own task (solo_task), as the per-target path does, and stores it in the cache
    uses = collections.Counter(_field(cfg) for cfg in todo)
    sharing = collections.Counter(fid for field in uses for fid in field)
    lone = {field for field, n in uses.items() if n == 1 and all(sharing[fid] == 1 for fid in field)}
    frames, fields = {}, {}
    for cfg in todo:
        if _field(cfg) in lone:
            idents = {"frames": {b: f"{b}:{_rel(f, out_dir)}[{h}]" for b, f, h in _field(cfg)},
                      "psf": "psf:" + "+".join(f"{b}:{_rel(f, out_dir)}[{h}]" for b, f, h in _field(cfg))}
            fut = client.submit(solo_task, cfg, out_dir, figures, compile_cache, root, idents, pure=False,
                                key=f"gsprep-{cfg.name}-{token}")
            targets[fut] = cfg.name
            solo[fut] = len(idents["frames"]) + 1  # frames-manifest rows it brings back (at most)
            continue
        fids = []
        for band, spec in cfg.bands.items():
            fid = (band, os.path.abspath(os.fspath(spec.file)), str(spec.hdu))
            if fid not in frames:  # one task per frame and band: it reads the frame itself (a path, not pixels)
                ident = f"{band}:{_rel(fid[1], out_dir)}[{spec.hdu}]"
                fut = client.submit(frame_task, root, cfg, band, ident, compile_cache, priority=20, pure=False,
                                    key=f"gsprep-frame-{len(frames)}-{token}")
                frames[fid] = fut
                frame_level[fut] = ident
            fids.append(fid)
        field = tuple(fids)
        if field not in fields:  # the PSF fit of the bands fitted together, after their frames
            ident = "psf:" + "+".join(f"{b}:{_rel(f, out_dir)}[{h}]" for b, f, h in field)
            fut = client.submit(field_task, root, cfg, [frames[f] for f in field], ident, compile_cache,
                                priority=10, pure=False, key=f"gsprep-psf-{len(fields)}-{token}")
            fields[field] = fut
            frame_level[fut] = ident
        fut = client.submit(target_task, cfg, out_dir, figures, compile_cache, root, fields[field], pure=False,
                            key=f"gsprep-{cfg.name}-{token}")
        targets[fut] = cfg.name
        parents[fut] = (fields[field], [frames[f] for f in field])
    return targets, frame_level, parents, solo


def _field(cfg):
    """The frames a target is prepared on: ``(band, absolute file, hdu)`` in band order."""
    return tuple((band, os.path.abspath(os.fspath(spec.file)), str(spec.hdu)) for band, spec in cfg.bands.items())


def _rel(path, out_dir):
    rel = os.path.relpath(path, os.path.dirname(out_dir))
    return path if rel.startswith("..") else rel


def _dependency_error(parents, fut, exc):
    """The message of a target whose task did not run: its frame's error when a frame task failed."""
    field, frames = parents.get(fut, (None, []))
    for dep in [*frames, field]:
        if dep is not None and dep.status == "error":
            err = dep.exception()
            return f"frame task failed: {type(err).__name__}: {err}"
    return f"{type(exc).__name__}: {exc}"


def _run(todo, out_dir, manifest, client, scheduler, workers, status, total, *, figures, compile_cache, progress,
         dask_logs, reuse_frames, frame_progress, on_client, dashboard):
    from dask.distributed import as_completed

    made, cluster = client is None, None
    if made:
        client, cluster = _start_client(scheduler, workers, dask_logs, dashboard)
    records = []
    counts = collections.Counter(status.values())  # kept up to date: no pass over every target per result
    frame_manifest = os.path.join(out_dir, FRAMES, MANIFEST)
    try:
        if on_client is not None:
            on_client(client)
        if reuse_frames:
            os.makedirs(os.path.dirname(frame_manifest), exist_ok=True)
        targets, frame_level, parents, solo = _submit(client, todo, out_dir, figures, compile_cache, reuse_frames)
        fcounts = collections.Counter()
        ftotal = len(frame_level) + sum(solo.values())  # frame-level rows expected (a lone target's come with it)

        def frame_done(rec):
            _append(frame_manifest, rec, FRAME_COLUMNS)
            fcounts[rec["status"]] += 1
            if frame_progress is not None:
                frame_progress(rec, {"total": ftotal, "done": fcounts["done"], "failed": fcounts["failed"],
                                     "remaining": ftotal - fcounts["done"] - fcounts["failed"]})

        for fut in as_completed([*frame_level, *targets]):
            if fut in frame_level:
                ident = frame_level[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # noqa: BLE001 - the worker died, or a bug: its targets fail with it
                    rec = {"kind": "psf" if ident.startswith("psf:") else "frame", "frame": ident, "status": "failed",
                           "error": f"{type(exc).__name__}: {exc}",
                           "finished": datetime.datetime.now(datetime.UTC).strftime(_TIME_FORMAT)}
                frame_done(rec)
                continue  # released with the targets that need it
            name = targets[fut]
            try:
                rec = fut.result()
            except Exception as exc:  # noqa: BLE001 - the worker died, the task was lost, its frame task failed
                rec = _failed_record(name, _dependency_error(parents, fut, exc))
            rows = rec.pop("frames", [])  # a lone target's frame work, done in its own task
            ftotal -= solo.pop(fut, 0) - len(rows)
            for row in rows:
                frame_done(row)
            _append(manifest, rec)
            records.append(rec)
            status[name] = rec["status"]  # names here were not in ``status`` before (they were to do)
            counts[rec["status"]] += 1
            if progress is not None:
                progress(rec, {"total": total, "done": counts["done"], "failed": counts["failed"],
                               "remaining": total - counts["done"] - counts["failed"]})
            fut.release()
            parents.pop(fut, None)
        if reuse_frames:
            _compact_frames(frame_manifest)
    finally:
        if made:
            client.close()
        if cluster is not None:
            cluster.close()
    return records


def _compact_frames(path):
    """Rewrite the frames manifest with one row per frame-level task (atomically)."""
    tab = read_frame_manifest(os.path.dirname(os.path.dirname(path)))
    if not len(tab):
        return
    _rewrite_csv(path, FRAME_COLUMNS, ([row[c] for c in FRAME_COLUMNS] for row in tab))


# --------------------------------------------------------------------------
# progress


def _duration(s):
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class BatchProgress:
    """Progress of a batch: a bar redrawn in place on a terminal, one plain line per finished task otherwise.

    Pass ``progress=bar.target, frame_progress=bar.frame`` to
    :func:`run_batch` (``gsprep batch`` does).  The bar shows frames and
    targets done / failed / remaining, targets per minute over this run and
    the time left; a failed target or frame is always printed as a line of
    its own, with its error.
    """

    def __init__(self, stream=None, *, tty=None, width=None, min_interval=0.2):
        import sys

        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width or (shutil.get_terminal_size((100, 20)).columns if self.tty else 100)
        self.min_interval = min_interval
        self.t0 = time.perf_counter()
        self.frames = {"total": 0, "done": 0, "failed": 0, "remaining": 0}
        self.targets = None
        self.ran = 0
        self._drawn = 0.0
        self._line = False

    def say(self, text):
        """Print a line (above the bar on a terminal)."""
        self._clear()
        print(text, file=self.stream, flush=True)
        self._draw(force=True)

    def _clear(self):
        if self.tty and self._line:
            self.stream.write("\r" + " " * (self.width - 1) + "\r")
            self._line = False

    def status(self):
        """The one-line summary the bar shows."""
        parts = []
        f = self.frames
        if f["total"]:
            parts.append(f"frames {f['done']}/{f['total']}" + (f" ({f['failed']} failed)" if f["failed"] else ""))
        t = self.targets
        if t:
            parts.append(f"targets {t['done']}/{t['total']} done, {t['failed']} failed, {t['remaining']} left")
            el = time.perf_counter() - self.t0
            if self.ran and el > 0:
                rate = 60.0 * self.ran / el
                parts.append(f"{rate:.1f}/min")
                if t["remaining"]:
                    parts.append(f"ETA {_duration(t['remaining'] / rate * 60.0)}")
        return " | ".join(parts)

    def _draw(self, force=False):
        if not self.tty:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        t = self.targets
        frac = (t["done"] + t["failed"]) / t["total"] if t and t["total"] else 0.0
        n = 20
        bar = "#" * int(frac * n) + "-" * (n - int(frac * n))
        text = f"[{bar}] {self.status()}"[: self.width - 1]
        self.stream.write("\r" + text.ljust(self.width - 1))
        self.stream.flush()
        self._line = True

    def frame(self, rec, counts):
        """``frame_progress`` for :func:`run_batch`."""
        self.frames = dict(counts)
        what = "psf fit" if rec.get("kind") == "psf" else "frame"
        if rec["status"] == "failed":
            self.say(f"{what} {rec['frame']}: failed: {rec['error']}")
        elif not self.tty:
            how = f"computed {rec.get('computed') or 'nothing'}" if rec.get("computed") else "from the cache"
            print(f"[frames {counts['done'] + counts['failed']}/{counts['total']}] {what} {rec['frame']}: {how} "
                  f"({rec.get('time_s', 0.0):.1f} s)", file=self.stream, flush=True)
        self._draw()

    def target(self, rec, counts):
        """``progress`` for :func:`run_batch`."""
        self.targets = dict(counts)
        self.ran += 1
        n = counts["done"] + counts["failed"]
        line = f"[{n:>{len(str(counts['total']))}}/{counts['total']}] {rec['name']}: {rec['status']} " \
               f"({rec['time_s']:.1f} s)"
        if rec["error"]:
            line += f": {rec['error']}"
        if rec["status"] == "failed":
            self.say(line)
        elif not self.tty:
            print(f"{line}  | {self.status()}", file=self.stream, flush=True)
        self._draw(force=counts["remaining"] == 0)

    def close(self):
        """End the bar's line (on a terminal)."""
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = False
