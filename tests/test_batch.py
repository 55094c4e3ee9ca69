"""Batch runs on Dask: same products as ``gsprep prepare``, failures recorded, resumable, kill-safe."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from gsprep import batch
from gsprep.batch import read_manifest, read_targets, run_batch, target_configs
from gsprep.cli import main
from gsprep.pipeline import load_config
from gsprep.simulate import demo_frame

BANDS = (("g", 2.6), ("r", 3.2))
OPTIONS = ["oversampling = 2", "stamp_size = 21", "sky_order = 1"]


def make_targets(folder, n=4, corrupt=None):
    """``n`` targets, two bands each, frames in ``folder/frames``; ``corrupt`` names a target whose r frame is junk."""
    (folder / "frames").mkdir(exist_ok=True)
    rows = []
    for t in range(n):
        name, ra = f"t{t}", 150.0 + 0.05 * t
        for i, (band, fwhm) in enumerate(BANDS):
            data, header = demo_frame(fwhm=fwhm, seed=10 * t + i, shape=(300, 300), n_stars=30, ra=ra)
            fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(folder / "frames" / f"{name}_{band}.fits",
                                                                            overwrite=True)
        rows.append((name, ra, 2.2))
    if corrupt:
        path = folder / "frames" / f"{corrupt}_r.fits"
        path.write_bytes(path.read_bytes()[:5000])  # cut short mid-header: unreadable
    Table(rows=rows, names=("name", "ra", "dec")).write(folder / "targets.csv", overwrite=True)
    lines = ["[target]", "r = 20.0", "", "[options]", *OPTIONS, ""]
    for band, fwhm in BANDS:
        lines += [f"[bands.{band}]", f'file = "frames/{{name}}_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    (folder / "bands.toml").write_text("\n".join(lines))
    return folder / "targets.csv", folder / "bands.toml"


def prepare_config(folder, name, ra):
    """The ``gsprep prepare`` config of one target of ``make_targets``."""
    lines = ["[target]", f'name = "{name}"', f"ra = {ra}", "dec = 2.2", "r = 20.0", "", "[options]", *OPTIONS, ""]
    for band, fwhm in BANDS:
        lines += [f"[bands.{band}]", f'file = "frames/{name}_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def assert_same_fits(a, b):
    with fits.open(a) as ha, fits.open(b) as hb:
        assert len(ha) == len(hb)
        for x, y in zip(ha, hb, strict=True):
            assert x.name == y.name
            assert list(x.header.items()) == list(y.header.items())
            if x.data is None:
                assert y.data is None
            elif x.data.dtype.names:  # table HDU
                assert x.data.tobytes() == y.data.tobytes()
            else:
                np.testing.assert_array_equal(x.data, y.data)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # the folder the in-process command line uses too (tests/conftest.py), so that the workers load
    # the fits that an earlier `gsprep prepare` in this process compiled instead of compiling them again
    return os.environ.get("GSPREP_COMPILE_CACHE") or str(tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def test_batch_matches_prepare_records_failure_and_resumes(tmp_path, client, cache_dir):
    targets, bands = make_targets(tmp_path, n=4, corrupt="t3")
    out = tmp_path / "out"
    tab = read_targets(targets)

    def prepare_alone(row):
        single = tmp_path / f"single-{row['name']}"
        if not single.exists():
            assert main(["prepare", str(prepare_config(tmp_path, row["name"], row["ra"])), "--out", str(single),
                         "--no-figures", "--quiet"]) == 0
        return single

    prepare_alone(tab[0])  # first, in this process: its compiled fits land in the shared compile cache
    seen = []
    res = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir,
                    progress=lambda rec, c: seen.append((rec["name"], dict(c))))
    assert (res.total, res.done, res.failed, res.ran, res.skipped) == (4, 3, 1, 4, 0)
    # progress counted the whole batch down to zero remaining
    assert sorted(n for n, _ in seen) == ["t0", "t1", "t2", "t3"]
    assert seen[-1][1] == {"total": 4, "done": 3, "failed": 1, "remaining": 0}
    man = read_manifest(out)
    status = dict(zip(man["name"], man["status"], strict=True))
    assert status == {"t0": "done", "t1": "done", "t2": "done", "t3": "failed"}
    err = man["error"][list(man["name"]).index("t3")]
    assert err.startswith("r: ") and "t3_r.fits" in err
    # the readable band of the failed target is still written, like `gsprep prepare` does
    assert (out / "t3" / "t3_g.fits").exists() and not (out / "t3" / "t3_r.fits").exists()

    # every finished target: byte-for-byte the products of `gsprep prepare` run on that target alone
    for row in tab[:3]:
        name = row["name"]
        single = prepare_alone(row)
        got = sorted(os.listdir(out / name))
        assert got == sorted(os.listdir(single)) == sorted(
            [f"{name}_g.fits", f"{name}_g_psf.fits", f"{name}_r.fits", f"{name}_r_psf.fits", f"{name}_images.lyric"])
        for f in got:
            if f.endswith(".fits"):
                assert_same_fits(out / name / f, single / f)
            else:
                assert (out / name / f).read_text() == (single / f).read_text()

    # second run: no work for the finished targets, the failed one is retried (and fails again)
    stamp = {f: os.stat(out / f).st_mtime_ns for f in files_under(out) if f.startswith(("t0", "t1", "t2"))}
    res2 = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir)
    assert (res2.ran, res2.skipped, res2.done, res2.failed) == (1, 3, 3, 1)
    assert [r["name"] for r in res2.records] == ["t3"]
    assert {f: os.stat(out / f).st_mtime_ns for f in stamp} == stamp

    # mend the frame and lose one product of t0: the third run redoes exactly those two
    make_targets(tmp_path, n=4)
    os.remove(out / "t0" / "t0_r_psf.fits")
    # (through the scheduler's address this time, as `gsprep batch --scheduler` does)
    res3 = run_batch(targets, bands, out, scheduler=client.scheduler.address, figures=False, compile_cache=cache_dir)
    assert sorted(r["name"] for r in res3.records) == ["t0", "t3"]
    assert (res3.done, res3.failed) == (4, 0)
    assert (out / "t0" / "t0_r_psf.fits").exists() and (out / "t3" / "t3_r.fits").exists()
    # nothing temporary is left, and the manifest is one row per target
    assert [f for f in files_under(out) if ".gsprep-" in f and "jax-cache" not in f] == []
    assert len(read_manifest(out)) == 4


def test_killed_batch_leaves_no_partial_products_and_resumes(tmp_path, client, cache_dir):
    targets, bands = make_targets(tmp_path, n=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gsprep.cli", "batch", str(targets), "--config", str(bands), "--out", str(out),
           "--workers", "1", "--no-figures"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.csv").exists() and len(read_manifest(out)) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the batch finished before it could be killed"
        assert len(read_manifest(out)) >= 1, "no target finished in time"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its scheduler and its worker, mid-batch
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = read_manifest(out)
    assert len(before) < 3
    # whatever target folder exists is complete: every FITS file in it reads and verifies
    for name in ("t0", "t1", "t2"):
        if (out / name).exists():
            for f in os.listdir(out / name):
                if f.endswith(".fits"):
                    with fits.open(out / name / f) as h:
                        h.verify("exception")
                        assert h[0].data is not None
    res = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir)
    assert (res.done, res.failed) == (3, 0)
    assert res.ran == 3 - len(before)  # finished ones were not redone
    man = read_manifest(out)
    assert list(man["status"]) == ["done"] * 3
    for row in before:
        assert man["finished"][list(man["name"]).index(row["name"])] == row["finished"]
    left = [f for f in files_under(out) if ".gsprep-" in f and "jax-cache" not in f]
    assert left == []
    for name in ("t0", "t1", "t2"):
        assert sorted(os.listdir(out / name)) == sorted(
            [f"{name}_g.fits", f"{name}_g_psf.fits", f"{name}_r.fits", f"{name}_r_psf.fits", f"{name}_images.lyric"])


def test_manifest_ignores_a_row_cut_short(tmp_path):
    rec = {"name": "a", "status": "done", "error": "", "outputs": ["a/x.fits"], "bytes": 3, "time_s": 1.5,
           "worker": "h:1", "finished": "2026-11-24T10:00:00Z"}
    path = tmp_path / batch.MANIFEST
    batch._append(str(path), rec)
    with open(path, "a") as f:
        f.write('b,done,,b/x.fits,3,1.0,h:1,2026-11-24T10:0')  # a kill mid-write
    assert list(read_manifest(tmp_path)["name"]) == ["a"]
    batch._append(str(path), dict(rec, name="c", error="r: bad, very bad"))
    man = read_manifest(tmp_path)
    assert list(man["name"]) == ["a", "c"] and man["error"][1] == "r: bad, very bad"
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    os.replace(tmp_path / "other.csv", path)
    with pytest.raises(ValueError, match="not a gsprep batch manifest"):
        read_manifest(tmp_path)


def test_bad_targets_and_configs(tmp_path):
    targets, bands = make_targets(tmp_path, n=1)
    cfg = load_config(bands, batch=True)

    def table(**cols):
        return Table(dict({"name": ["a", "b"], "ra": [10.0, 11.0], "dec": [1.0, 2.0]}, **cols))

    with pytest.raises(ValueError, match=r"missing column\(s\) \['dec'\]"):
        read_targets(Table({"name": ["a"], "ra": [1.0]}))
    with pytest.raises(ValueError, match=r"duplicate name\(s\) \['a'\]"):
        read_targets(table(name=["a", "a"]))
    with pytest.raises(ValueError, match="cannot be folder names"):
        read_targets(table(name=["a", "../b"]))
    with pytest.raises(ValueError, match=r"dec out of \[-90, 90\] degrees or missing for \['b'\]"):
        read_targets(table(dec=[1.0, 95.0]))
    with pytest.raises(FileNotFoundError, match="targets: no such file"):
        read_targets(tmp_path / "nope.csv")
    bad_template = load_config(bands, batch=True)
    bad_template = type(bad_template)(**{**bad_template.__dict__, "bands": {
        "g": type(cfg.bands["g"])(**{**cfg.bands["g"].__dict__, "file": "frames/{field}_g.fits"})}})
    with pytest.raises(ValueError, match=r"names \{field\}, which is not a column"):
        target_configs(read_targets(table()), bad_template)
    # a file_<band> column wins over the template; r comes from the table when given
    confs = target_configs(read_targets(table(file_g=["x.fits", "/abs/y.fits"], r=[5.0, 6.0])), cfg,
                           targets_dir="/data")
    assert confs[0].bands["g"].file == "/data/x.fits" and confs[1].bands["g"].file == "/abs/y.fits"
    assert confs[0].bands["r"].file.endswith("frames/a_r.fits") and (confs[0].r, confs[1].r) == (5.0, 6.0)
    (tmp_path / "b2.toml").write_text(bands.read_text().replace("r = 20.0", 'name = "x"'))
    with pytest.raises(ValueError, match="takes name, ra and dec from the targets table"):
        load_config(tmp_path / "b2.toml", batch=True)
    (tmp_path / "b3.toml").write_text(bands.read_text().replace("r = 20.0", ""))
    with pytest.raises(ValueError, match="no 'r' column and no \\[target\\] r"):
        target_configs(read_targets(table()), load_config(tmp_path / "b3.toml", batch=True))
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_batch(targets, bands, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


def test_second_batch_on_the_same_folder_is_refused(tmp_path):
    targets, bands = make_targets(tmp_path, n=1)
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / batch.LOCK).write_text(f"{socket.gethostname()}:{sleeper.pid}")
        with pytest.raises(RuntimeError, match="another gsprep batch"):
            run_batch(targets, bands, out, workers=1)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["batch", str(targets), "--config", str(bands), "--out", str(out), "--workers", "0"]) == 2


@pytest.mark.parametrize("holder", ["node17.cluster:4242", "node17.cluster:1"])
def test_a_lock_held_on_another_host_is_refused_not_taken_over(tmp_path, capsys, holder):
    targets, bands = make_targets(tmp_path, n=1)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / batch.LOCK
    lock.write_text(holder)  # pid 1 is alive here, 4242 may not be: neither may matter for another host
    with pytest.raises(RuntimeError, match=rf"locked by a gsprep batch on host node17.cluster \(pid {holder[15:]}\)"
                                           rf".*delete '{lock}' and run again"):
        run_batch(targets, bands, out, workers=1)
    assert lock.read_text() == holder and sorted(os.listdir(out)) == [batch.LOCK]
    assert main(["batch", str(targets), "--config", str(bands), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gsprep: error: --out: ") and "on host node17.cluster" in err[0]
    assert lock.read_text() == holder


def test_a_stale_lock_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / batch.LOCK).write_text(f"{socket.gethostname()}:{dead.pid}")
    with batch._lock(str(out)):
        assert (out / batch.LOCK).read_text() == f"{socket.gethostname()}:{os.getpid()}"
    assert not (out / batch.LOCK).exists()
