"""Batch runs on Dask: same products as ``gsprep prepare``, frame work once per frame, resumable, kill-safe."""

import dataclasses
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from gsprep import batch, framecache
from gsprep.batch import (
    read_frame_manifest,
    read_manifest,
    read_targets,
    run_batch,
    target_configs,
)
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
    # the folder the in-process command line uses too (tests/conftest.py)
    return os.environ.get("GSPREP_COMPILE_CACHE") or str(tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="module")
def client():
    # an in-process cluster (threads): the tasks share this process's compiled fits and framecache.WORK counts
    # their frame-level work; what is tested here is the task graph and the cache, not process workers
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def write_field(folder, field, *, ra=150.0, edit=(), only=None):
    """Frames ``folder/frames/<field>_<band>.fits``: the same pixels for every field (so every PSF fit has one
    shape and compiles once), told apart by their WCS; bands in ``edit`` get one header card more; ``only``:
    write just these bands."""
    (folder / "frames").mkdir(exist_ok=True)
    for i, (band, fwhm) in enumerate(BANDS):
        if only is not None and band not in only:
            continue
        data, header = demo_frame(fwhm=fwhm, seed=i, shape=(300, 300), n_stars=30, ra=ra)
        if band in edit:
            header["HISTORY"] = "edited"
        fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(folder / "frames" / f"{field}_{band}.fits",
                                                                        overwrite=True)
    return header


def field_targets(folder, rows):
    """A targets table with ``file_<band>`` columns: rows of ``(name, field, where)``, where = "centre" or
    "neighbour" (the second galaxy of ``demo_frame``); returns the table and the bands config."""
    out = []
    for name, field, where in rows:
        path = folder / "frames" / f"{field}_g.fits"
        with fits.open(path) as h:
            from astropy.wcs import WCS

            w = WCS(h[0].header)
        x, y = (149.5, 149.5) if where == "centre" else (149.5 + 45, 149.5 - 35)
        c = w.pixel_to_world(x, y)
        out.append((name, float(c.ra.deg), float(c.dec.deg), f"frames/{field}_g.fits", f"frames/{field}_r.fits"))
    Table(rows=out, names=("name", "ra", "dec", "file_g", "file_r")).write(folder / "targets.csv", overwrite=True)
    lines = ["[target]", "r = 12.0", "", "[options]", *OPTIONS, ""]
    for band, fwhm in BANDS:
        lines += [f"[bands.{band}]", 'file = "unused"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    (folder / "bands.toml").write_text("\n".join(lines))
    return folder / "targets.csv", folder / "bands.toml"


def single_config(folder, name, ra, dec, field):
    lines = ["[target]", f'name = "{name}"', f"ra = {float(ra)!r}", f"dec = {float(dec)!r}", "r = 12.0", "", "[options]", *OPTIONS,
             ""]
    for band, fwhm in BANDS:
        lines += [f"[bands.{band}]", f'file = "frames/{field}_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def assert_same_products(got, want, name):
    files = sorted(os.listdir(want))
    assert sorted(os.listdir(got)) == files == sorted(
        [f"{name}_g.fits", f"{name}_g_psf.fits", f"{name}_r.fits", f"{name}_r_psf.fits", f"{name}_images.lyric"])
    for f in files:
        if f.endswith(".fits"):
            assert_same_fits(got / f, want / f)
        else:
            assert (got / f).read_text() == (want / f).read_text()


def work():
    return dict(framecache.WORK)


def work_since(before):
    return {k: v - before.get(k, 0) for k, v in framecache.WORK.items() if v - before.get(k, 0)}


def test_frame_reuse_matches_prepare_counts_work_and_resumes(tmp_path, client, cache_dir):
    write_field(tmp_path, "A")
    (tmp_path / "frames" / "junk_g.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    (tmp_path / "frames" / "junk_r.fits").write_bytes(b"not a FITS file")
    targets, bands = field_targets(tmp_path, [("a0", "A", "centre"), ("a1", "A", "neighbour")])
    tab = read_targets(targets)
    tab.add_row(("bad", 150.0, 2.2, "frames/junk_g.fits", "frames/junk_r.fits"))  # on two unreadable frames
    tab.write(targets, overwrite=True)
    # `gsprep prepare` on the second target of field A alone (in this process: the batch reuses its compiled fits)
    single = tmp_path / "single-a1"
    cfg = single_config(tmp_path, "a1", tab["ra"][1], tab["dec"][1], "A")
    assert main(["prepare", str(cfg), "--out", str(single), "--no-figures", "--quiet"]) == 0

    out = tmp_path / "out"
    before = work()
    seen, frames_seen = [], []
    res = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir,
                    progress=lambda rec, c: seen.append((rec["name"], dict(c))),
                    frame_progress=lambda rec, c: frames_seen.append(dict(c)))
    assert (res.total, res.done, res.failed, res.ran) == (3, 2, 1, 3)
    # frame-level work once per frame (2 bands) and once for their PSFs, not once per target
    assert work_since(before) == {"sky": 2, "stars": 2, "psf": 1}
    assert all(r["frame_work"] == [] for r in res.records)  # no target did any frame-level work itself
    assert seen[-1][1] == {"total": 3, "done": 2, "failed": 1, "remaining": 0}
    # 4 frames and 2 PSF sets: the junk frames failed; junk's PSF set had nothing to fit
    assert frames_seen[-1] == {"total": 6, "done": 4, "failed": 2, "remaining": 0}
    # the target on the broken frames failed with the frames' errors, the others are unaffected
    man = read_manifest(out)
    status = dict(zip(man["name"], man["status"], strict=True))
    assert status == {"a0": "done", "a1": "done", "bad": "failed"}
    err = man["error"][list(man["name"]).index("bad")]
    assert err.startswith("g: ") and "junk_g.fits" in err and "; r: " in err and "junk_r.fits" in err
    fm = read_frame_manifest(out)
    assert sorted(fm["status"]) == ["done"] * 4 + ["failed"] * 2
    assert sorted(c for c in fm["computed"] if c) == ["psf", "sky;stars", "sky;stars"]
    # products through the frame cache: identical to `gsprep prepare` on that target alone
    assert_same_products(out / "a1", single, "a1")

    # a re-run: finished targets and their frames are not touched; the failed one is retried (its frames again)
    before = work()
    res2 = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir)
    assert (res2.ran, res2.skipped, res2.done, res2.failed) == (1, 2, 2, 1)
    assert work_since(before) == {}

    # one frame edited (A's r band) and a new target on A: exactly r's sky and stars and the PSFs are redone
    write_field(tmp_path, "A", edit=("r",), only=("r",))
    tab = read_targets(targets)
    tab.add_row(("a2", *field_targets_row(tmp_path, "A")))
    tab.write(targets, overwrite=True)
    before = work()
    res3 = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir, retry_failed=False)
    assert [r["name"] for r in res3.records] == ["a2"] and res3.records[0]["status"] == "done"
    assert work_since(before) == {"sky": 1, "stars": 1, "psf": 1}
    assert [f for f in files_under(out) if ".gsprep-" in f or "/.tmp-" in f] == []
    assert len(read_manifest(out)) == 4


def test_a_lone_target_does_its_frames_in_its_own_task_and_fills_the_cache(tmp_path, client, cache_dir):
    # one target on its frames: no frame or PSF task, the target's own task computes them (as the per-target path)
    # from the frames it reads, stores them in the cache and records them in the frames manifest
    write_field(tmp_path, "A")
    targets, bands = field_targets(tmp_path, [("a0", "A", "centre")])
    tab = read_targets(targets)
    single = tmp_path / "single-a0"
    cfg = single_config(tmp_path, "a0", tab["ra"][0], tab["dec"][0], "A")
    assert main(["prepare", str(cfg), "--out", str(single), "--no-figures", "--quiet"]) == 0
    out = tmp_path / "out"
    before, frames_seen = work(), []
    res = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir,
                    frame_progress=lambda rec, c: frames_seen.append((rec["kind"], dict(c))))
    assert (res.ran, res.done) == (1, 1)
    assert work_since(before) == {"sky": 2, "stars": 2, "psf": 1}
    assert sorted(res.records[0]["frame_work"]) == ["psf", "sky", "sky", "stars", "stars"]  # in the target's task
    assert "frames" not in res.records[0]
    assert_same_products(out / "a0", single, "a0")
    assert [k for k, _ in frames_seen] == ["frame", "frame", "psf"]
    assert frames_seen[-1][1] == {"total": 3, "done": 3, "failed": 0, "remaining": 0}
    fm = read_frame_manifest(out)
    assert sorted(zip(fm["kind"], fm["band"], fm["computed"], fm["status"], strict=True)) == [
        ("frame", "g", "sky;stars", "done"), ("frame", "r", "sky;stars", "done"), ("psf", "g,r", "psf", "done")]
    stored = {k for row in fm["keys"] for k in row.split(";")}
    assert len(stored) == 5 and stored <= set(os.listdir(out / "frames"))
    # a second run with a target more on that frame: its frame products all come from the cache
    tab.add_row(("a1", *field_targets_row(tmp_path, "A")))
    tab.write(targets, overwrite=True)
    before = work()
    res2 = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir)
    assert (res2.ran, res2.skipped, res2.done) == (1, 1, 2)
    assert work_since(before) == {} and res2.records[0]["frame_work"] == []
    fm = read_frame_manifest(out)
    assert list(fm["computed"]) == ["", "", ""] and set(fm["status"]) == {"done"}


def test_a_target_with_figures_reads_each_frame_once_while_it_fills_the_cache(tmp_path, monkeypatch):
    # figures need whole frames: the frame read for them is the one the frame products are computed from
    import gsprep.io
    import gsprep.pipeline
    from gsprep.pipeline import run_target

    write_field(tmp_path, "A")
    cfg = dataclasses.replace(one_target_config(tmp_path), psf=False)  # the sky alone: no PSF fit to compile
    reads, real = [], gsprep.io.read_image

    def counting(path, *args, **kwargs):
        reads.append(os.path.basename(os.fspath(path)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gsprep.io, "read_image", counting)
    monkeypatch.setattr(gsprep.pipeline, "read_image", counting)
    frames = framecache.CachedFrames(framecache.cache_at(tmp_path / "cache"), cfg, {})
    run = run_target(cfg, tmp_path / "out", figures=True, frames=frames)
    assert run.ok, run.errors
    assert sorted(frames.computed) == ["sky", "sky"]
    assert sorted(reads) == ["A_g.fits", "A_r.fits"]
    assert any(f.endswith(".png") for f in os.listdir(tmp_path / "out"))


def field_targets_row(folder, field):
    with fits.open(folder / "frames" / f"{field}_g.fits") as h:
        from astropy.wcs import WCS

        c = WCS(h[0].header).pixel_to_world(149.5 + 45, 149.5 - 35)
    return float(c.ra.deg), float(c.dec.deg), f"frames/{field}_g.fits", f"frames/{field}_r.fits"


def one_target_config(folder, field="A"):
    targets, bands = field_targets(folder, [("a0", field, "centre")])
    return target_configs(read_targets(targets), load_config(bands, batch=True), targets_dir=str(folder))[0]


def test_cache_keys_follow_exactly_what_each_product_depends_on(tmp_path):
    write_field(tmp_path, "A")
    cfg = one_target_config(tmp_path)

    def keys(c):
        return {b: framecache.frame_keys(c, c.bands[b], framecache.file_digest(c.bands[b].file)) for b in c.bands}

    def band(c, b, **kw):
        return dataclasses.replace(c, bands={**c.bands, b: dataclasses.replace(c.bands[b], **kw)})

    base = keys(cfg)
    assert base["g"] != base["r"]
    # target-only options: no frame product changes
    assert keys(dataclasses.replace(cfg, name="x", ra=1.0, r=30.0, mask_nsigma=5.0, deblend=False, addgrow=2.0,
                                    oversampling=3)) == base
    assert keys(band(cfg, "g", zeropoint=20.0, filter="x", pixel_scale=0.5)) == base
    # a star option: the stars (and so the PSFs) of every band, not the skies
    new = keys(dataclasses.replace(cfg, star_nsigma=7.0))
    assert all(new[b][0] == base[b][0] and new[b][1] != base[b][1] for b in "gr")
    # the user's star list: the stars, and its content too
    (tmp_path / "stars.csv").write_text("x,y\n10,20\n")
    listed = dataclasses.replace(cfg, star_catalog=str(tmp_path / "stars.csv"), stars_from="catalog")
    new = keys(listed)
    assert all(new[b][0] == base[b][0] and new[b][1] != base[b][1] for b in "gr")
    (tmp_path / "stars.csv").write_text("x,y\n10,21\n")
    assert all(keys(listed)[b][1] != new[b][1] for b in "gr")
    assert keys(dataclasses.replace(cfg, recenter="peak", target_radius=5.0)) == base
    assert keys(band(cfg, "g", cut_center=(100.0, 100.0))) == base
    # a sky option: everything; a band's option: that band only
    new = keys(dataclasses.replace(cfg, sky_order=2))
    assert all(new[b][0] != base[b][0] and new[b][1] != base[b][1] for b in "gr")
    new = keys(band(cfg, "g", fwhm=2.7))
    assert new["r"] == base["r"] and new["g"][0] != base["g"][0] and new["g"][1] != base["g"][1]
    # an edited frame: its own products only
    write_field(tmp_path, "A", edit=("r",), only=("r",))
    new = keys(cfg)
    assert new["g"] == base["g"] and new["r"][0] != base["r"][0] and new["r"][1] != base["r"][1]
    # a noise map, and an edit of it
    fits.PrimaryHDU(np.ones((300, 300), np.float32)).writeto(tmp_path / "noise.fits")
    noisy = band(cfg, "g", noise=str(tmp_path / "noise.fits"), noise_kind="rms")
    k1 = keys(noisy)["g"]
    fits.PrimaryHDU(2 * np.ones((300, 300), np.float32)).writeto(tmp_path / "noise.fits", overwrite=True)
    k2 = keys(noisy)["g"]
    assert len({k1, k2, new["g"]}) == 3
    # the PSF of a set of bands: its bands' stars and the oversampling
    p = framecache.psf_key({"g": new["g"][1], "r": new["r"][1]}, 2)
    assert p != framecache.psf_key({"g": new["g"][1], "r": base["r"][1]}, 2)
    assert p != framecache.psf_key({"g": new["g"][1], "r": new["r"][1]}, 3)
    assert p != framecache.psf_key({"g": new["g"][1]}, 2)


def test_interrupted_frame_task_leaves_nothing_half_written_and_the_next_run_completes(tmp_path, client, cache_dir,
                                                                                        monkeypatch):
    write_field(tmp_path, "A")
    targets, bands = field_targets(tmp_path, [("a0", "A", "centre"), ("a1", "A", "neighbour")])
    cfg = target_configs(read_targets(targets), load_config(bands, batch=True), targets_dir=str(tmp_path))[0]
    out = tmp_path / "out"
    cache = framecache.FrameCache(out / "frames")
    write = framecache._write_file

    def dying(path, data):  # the frame task is killed while it writes its second entry (the stars)
        if os.path.basename(os.path.dirname(path)).startswith(".tmp-stars-"):
            write(path, data[: len(data) // 2])
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(framecache, "_write_file", dying)
    with pytest.raises(KeyboardInterrupt):
        framecache.ensure_frame(cache, cfg, cfg.bands["g"], "g")
    monkeypatch.undo()
    sky_key, _ = framecache.frame_keys(cfg, cfg.bands["g"], framecache.file_digest(cfg.bands["g"].file))
    assert sorted(os.listdir(out / "frames")) == [sky_key]  # the finished entry only, no temporary folder
    assert framecache.FrameCache(out / "frames").get(sky_key) is not None
    # what a SIGKILL would leave: a temporary folder; and an entry whose payload was damaged since
    (out / "frames" / ".tmp-stars-dead").mkdir()
    (out / "frames" / ".tmp-stars-dead" / "payload.pkl").write_bytes(b"\x80\x05half")
    before = work()
    res = run_batch(targets, bands, out, client=client, figures=False, compile_cache=cache_dir)
    assert (res.done, res.failed) == (2, 0)
    # the g sky was resumed from the cache; the rest of the frame work done once for both targets
    assert work_since(before) == {"sky": 1, "stars": 2, "psf": 1}
    assert [f for f in os.listdir(out / "frames") if f.startswith(".tmp-")] == []
    # a damaged entry is detected (checksum) and recomputed, and nothing else is
    payload = out / "frames" / sky_key / "payload.pkl"
    payload.write_bytes(payload.read_bytes()[:-10] + b"0123456789")
    fresh = framecache.FrameCache(out / "frames")
    assert fresh.get(sky_key) is None and not (out / "frames" / sky_key).exists()
    before = work()
    framecache.ensure_frame(fresh, cfg, cfg.bands["g"], "g")
    assert work_since(before) == {"sky": 1} and fresh.get(sky_key) is not None
    # the sky's background, stored apart (memory-mapped when read), is checksummed too
    background = out / "frames" / sky_key / "background.npy"
    blob = bytearray(background.read_bytes())
    blob[-8:] = b"\x00" * 8
    background.write_bytes(bytes(blob))
    assert framecache.FrameCache(out / "frames").get(sky_key) is None and not (out / "frames" / sky_key).exists()


def test_cli_batch_progress_dashboard_and_a_varying_psf(tmp_path, client, capsys):
    write_field(tmp_path, "A")
    targets, bands = field_targets(tmp_path, [("a0", "A", "centre"), ("a1", "A", "neighbour")])
    out = tmp_path / "out"
    # through the scheduler's address, as on a cluster
    assert main(["batch", str(targets), "--config", str(bands), "--out", str(out), "--scheduler",
                 client.scheduler.address, "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "Dask dashboard" in text  # its address, or why there is none
    assert "[frames 3/3] psf fit psf:g:" in text and "[2/2] a" in text
    assert "targets 2/2 done, 0 failed, 0 left" in text and "2 targets: 2 done, 0 failed" in text
    # on a terminal: one bar redrawn in place, with the rate and the time left
    import io

    buf = io.StringIO()
    bar = batch.BatchProgress(buf, tty=True, width=120, min_interval=0.0)
    bar.frame({"kind": "frame", "frame": "g:x.fits[0]", "status": "done", "computed": "sky;stars", "time_s": 1.0},
              {"total": 2, "done": 1, "failed": 0, "remaining": 1})
    bar.target({"name": "a0", "status": "done", "error": "", "time_s": 1.0},
               {"total": 4, "done": 1, "failed": 0, "remaining": 3})
    bar.target({"name": "a1", "status": "failed", "error": "g: off the frame", "time_s": 1.0},
               {"total": 4, "done": 1, "failed": 1, "remaining": 2})
    bar.close()
    shown = buf.getvalue()
    assert shown.count("\n") == 2 and "\r" in shown and "a1: failed (1.0 s): g: off the frame\n" in shown
    assert "frames 1/2" in shown and "targets 1/4 done, 1 failed, 2 left" in shown and "/min | ETA " in shown

    # a PSF that varies across the frame is evaluated at the target's frame pixel; a constant one is kept
    from types import SimpleNamespace

    from gsprep.pipeline import _psf_at_target
    from gsprep.psf import EPSFResult

    @dataclasses.dataclass(frozen=True)
    class Varying:
        psf: np.ndarray
        degree: int = 1
        spatial: object = "model"

        def psf_at(self, x, y):
            return np.full((3, 3), x + 10 * y)

    cut = SimpleNamespace(origin=(100, 200), center=(5.0, 6.0))
    assert _psf_at_target(Varying(np.zeros((3, 3))), cut).psf[0, 0] == 105 + 2060
    assert _psf_at_target(Varying(np.zeros((3, 3)), degree=0), cut).psf[0, 0] == 0
    const = EPSFResult(np.ones((3, 3)) / 9, np.zeros((1, 2)), np.ones(1), np.zeros(1), np.ones(1), np.zeros(0),
                       np.zeros(1, int))
    assert _psf_at_target(const, cut) is const
    # the cache keeps the whole result, spatial model included
    cache = framecache.FrameCache(tmp_path / "c")
    cache.put("psf-x", {"g": {"psf": dataclasses.replace(const, degree=1, spatial={"coeffs": np.arange(3.0)})}})
    got = framecache.FrameCache(tmp_path / "c").get("psf-x")["g"]["psf"]
    assert got.degree == 1 and np.array_equal(got.spatial["coeffs"], np.arange(3.0))


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
