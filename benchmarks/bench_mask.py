"""Masks against SExtractor's algorithms (``sep``) on real frames, and mask fractions, before and after.

Issue 14 item 1.  For the real frames shipped in ``tests/data`` (M13, NGC 1316,
a DSS star field, 47 Tuc, EY UMa) the reference catalogue is ``sep`` with
SExtractor's defaults (mesh background 32 px, 3x3 filter, 1.5 sigma, 5 px,
32 levels, contrast 0.005); an object's SNR is its flux in a circle of radius
one FWHM over the rms of such circles placed on empty sky (so correlated
noise, as on photographic plates, does not inflate it).  Reported:

1. completeness: of the reference's objects with SNR > 5, the fraction
   gsprep's mask detection finds with its defaults: *own* (a gsprep object's
   centroid within max(1.5 FWHM, 2 px)) and *in segment* (the object's pixel
   lies in a gsprep segment, so a mask covers it);
2. target cutouts on the real frames: every reference object (SNR > 5)
   inside the cutout other than the target, is it masked (at its centroid
   pixel)? and the masked fraction of the cutout;
3. the demo's cutouts (``gsprep demo``: g, r, i) and generated fields: the
   masked fraction, the reference objects masked, the number of neighbours;
   and the wall time.

"before" is the code at ``--before`` (default 81cca38, the commit before
issue 14's masks), run from a temporary ``git worktree``; "after" is this
checkout.  Needs ``sep`` (``pip install sep``), a benchmark extra.

    python benchmarks/bench_mask.py                # writes benchmarks/results_mask.txt too
    python benchmarks/bench_mask.py --before HEAD~3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data")
# name: (file, hdu, PSF FWHM in pixels (from sep's bright isolated objects), target (x, y) or None, half-size px)
FRAMES = {
    "M13": ("m13.fits", 0, 3.5, (250, 40), 40),
    "NGC1316": ("comp.fits", 1, 2.0, None, 100),  # None: the brightest pixel (the galaxy)
    "DSS": ("dss.14.29.56-62.41.05.fits.gz", 0, 3.0, (50, 50), 30),
    "47Tuc": ("dist_lookup.fits.gz", 1, 2.0, (50, 50), 35),
    "EYUMa": ("thumbnail-image.fit.gz", 0, 1.5, None, 40),
}
DEMO_BANDS = {"g": 2.4, "r": 3.0, "i": 3.8}
SNR_MIN = 5.0


def read_frame(name):
    from astropy.io import fits

    f, hdu, fwhm, target, half = FRAMES[name]
    d = np.ascontiguousarray(fits.getdata(os.path.join(DATA, f), hdu).astype(np.float64))
    return d, fwhm, target, half


def reference(data, fwhm, seed=0):
    """sep catalogue (SExtractor defaults) with the empty-aperture SNR; rows with SNR > SNR_MIN."""
    import sep
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    bkg = sep.Background(data, bw=32, bh=32, fw=3, fh=3)
    sub = data - bkg
    obj, seg = sep.extract(sub, 1.5, err=bkg.globalrms, minarea=5, segmentation_map=True)
    r = fwhm
    flux, _, _ = sep.sum_circle(sub, obj["x"], obj["y"], r)
    ny, nx = data.shape
    rng = np.random.default_rng(seed)
    xs, ys = rng.uniform(r, nx - 1 - r, 4000), rng.uniform(r, ny - 1 - r, 4000)
    busy = ndimage.binary_dilation(seg > 0, iterations=int(2 * fwhm))
    empty = ~busy[ys.astype(int), xs.astype(int)]
    fe, _, _ = sep.sum_circle(sub, xs[empty], ys[empty], r)
    snr = flux / sigma_clipped_stats(fe)[2]
    keep = snr > SNR_MIN
    return {"x": obj["x"][keep], "y": obj["y"][keep], "snr": snr[keep], "n_all": len(obj)}


def _pix(v, n):
    return np.clip(np.round(v).astype(int), 0, n - 1)


# ---------------------------------------------------------------------------
# measurements with one version of gsprep (imported from sys.path)


def _twopass():
    from gsprep import detection

    return hasattr(detection, "detect_twopass")


def frame_detection(gs, data, fwhm):
    """Segmentation a version of gsprep uses for masks, with its defaults."""
    from gsprep import detection

    if _twopass():
        return detection.detect_twopass(data, fwhm=fwhm)
    return gs.detect(data, fwhm=fwhm, nsigma=3.0, npixels=5, deblend=True)  # cutout_mask's defaults, deblended


def sky_subtracted(gs, data, fwhm):
    sky = gs.fit_sky(data, gs.sky_mask(data, fwhm=fwhm), order=1)
    return data - np.asarray(sky.background)


def mask_of(gs, cut, fwhm, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gs.cutout_mask(cut, fwhm=fwhm, **kw)


def measure(out_path):
    import gsprep as gs

    res = {"completeness": {}, "targets": {}, "demo": {}, "generated": {}}
    refs = {}
    for name in FRAMES:
        data, fwhm, target, half = read_frame(name)
        ref = reference(data, fwhm)
        refs[name] = ref
        t0 = time.perf_counter()
        seg = frame_detection(gs, data, fwhm)
        dt = time.perf_counter() - t0
        tx, ty = np.asarray(seg.table["x"]), np.asarray(seg.table["y"])
        ny, nx = data.shape
        if len(tx):
            d = np.hypot(ref["x"][:, None] - tx[None], ref["y"][:, None] - ty[None]).min(1)
        else:
            d = np.full(len(ref["x"]), np.inf)
        own = d <= max(1.5 * fwhm, 2.0)
        inseg = seg.labels[_pix(ref["y"], ny), _pix(ref["x"], nx)] > 0
        res["completeness"][name] = {"n_ref": len(ref["x"]), "n_sep_all": ref["n_all"], "n_gsprep": len(tx),
                                     "own": int(own.sum()), "in_segment": int(inseg.sum()), "time_s": dt}

        # a target cutout: the frame sky-subtracted, a square of half-size `half` around the target
        clean = sky_subtracted(gs, data, fwhm)
        if target is None:
            sm = np.nan_to_num(data)
            iy, ix = np.unravel_index(np.argmax(sm), sm.shape)
        else:
            ix, iy = target
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        cut = clean[y0:y1, x0:x1]
        center = (ix - x0, iy - y0)
        t0 = time.perf_counter()
        m = mask_of(gs, cut, fwhm, center=center, target_radius=max(2 * fwhm, 5.0), require_target=False)
        dt = time.perf_counter() - t0
        cx, cy = ref["x"] - x0, ref["y"] - y0
        inside = (cx >= 0) & (cx <= x1 - x0 - 1) & (cy >= 0) & (cy <= y1 - y0 - 1)
        cx, cy = cx[inside], cy[inside]
        k = int(np.argmin(np.hypot(cx - center[0], cy - center[1]))) if len(cx) else -1
        others = np.ones(len(cx), bool)
        if k >= 0:
            others[k] = False  # the reference's target
        hit = m.mask[_pix(cy[others], y1 - y0), _pix(cx[others], x1 - x0)] == 1
        missed = [(round(float(a) + x0, 1), round(float(b) + y0, 1)) for a, b in
                  zip(cx[others][~hit], cy[others][~hit], strict=True)]
        res["targets"][name] = {"shape": list(cut.shape), "n_others": int(others.sum()), "masked": int(hit.sum()),
                                "mask_frac": float(m.mask.mean()), "target_kept": bool(m.mask[center[1], center[0]] == 0),
                                "missed_xy": missed[:8], "time_s": dt}

    # the demo's cutouts, as `gsprep demo` makes them (sky order 2, r = 40", 0.4"/px)
    from astropy.wcs import WCS

    from gsprep.simulate import demo_frame

    for i, (band, fwhm) in enumerate(DEMO_BANDS.items()):
        data, header = demo_frame(fwhm=fwhm, seed=i)
        w = WCS(header)
        sky = gs.fit_sky(data, gs.sky_mask(data, fwhm=fwhm), order=2)
        cut = gs.cutout(data - np.asarray(sky.background), w, 150.1, 2.2, 40.0)
        t0 = time.perf_counter()
        m = mask_of(gs, cut, fwhm, nsigma=None, deblend=True) if _twopass() else \
            mask_of(gs, cut, fwhm, nsigma=3.0, npixels=5, deblend=True)  # what the pipeline passed before
        dt = time.perf_counter() - t0
        ref = reference(np.ascontiguousarray(np.asarray(cut.data, dtype=np.float64)), fwhm)
        n = cut.n
        others = np.hypot(ref["x"] - n, ref["y"] - n) > 2 * fwhm
        ny, nx = cut.data.shape
        hit = m.mask[_pix(ref["y"][others], ny), _pix(ref["x"][others], nx)] == 1
        res["demo"][band] = {"shape": list(cut.data.shape), "mask_frac": float(m.mask.mean()),
                             "n_neighbours": m.n_neighbours, "n_others": int(others.sum()), "masked": int(hit.sum()),
                             "target_kept": bool(m.mask[n, n] == 0), "time_s": dt}

    rng = np.random.default_rng(1)
    for size in (512, 2048):
        img = generated_field(size, rng)
        t0 = time.perf_counter()
        m = mask_of(gs, img, 3.0, target_radius=15)
        res["generated"][f"{size}x{size}"] = {"mask_frac": float(m.mask.mean()), "n_neighbours": m.n_neighbours,
                                              "time_s": time.perf_counter() - t0}
    with open(out_path, "w") as f:
        json.dump(res, f)


def growth_field(seed, n=201, fwhm=3.0):
    """A target (Sersic n=1.5) with 40 Moffat stars (flux 20-1e4) and 8 galaxies (Sersic n=1-4), unit noise;
    returns the image and each neighbour's noiseless image."""
    from gsprep.simulate import add_stars, sersic_image

    rng = np.random.default_rng(seed)
    target = sersic_image((n, n), 100, 100, flux=2e4, r_eff=8, n=1.5, q=0.7, theta=0.3)
    comps = []
    pos = rng.uniform(5, n - 5, size=(40, 2))
    for p, f in zip(pos, 10 ** rng.uniform(1.3, 4, 40), strict=True):
        comps.append((p, add_stars(np.zeros((n, n)), p[None], [f], fwhm=fwhm)))
    for _ in range(8):
        x, y = rng.uniform(5, n - 5, 2)
        comps.append(((x, y), sersic_image((n, n), x, y, flux=10 ** rng.uniform(2, 4), r_eff=rng.uniform(1.5, 6),
                                            n=float(rng.choice([1.0, 2.5, 4.0])), q=rng.uniform(0.3, 1),
                                            theta=rng.uniform(0, 3))))
    img = target + sum(c for _, c in comps) + rng.normal(0, 1.0, (n, n))
    return img, comps


def growth_rules(seeds=range(6)):
    """Mask fraction and the light of the masked (detected) neighbours left outside the mask, per growth rule."""
    import gsprep as gs

    rules = {"isophote (default)": {}, "magnification 2": {"magnification": 2.0}}
    out = {k: [] for k in rules}
    for seed in seeds:
        img, comps = growth_field(seed)
        for name, kw in rules.items():
            m = mask_of(gs, img, 3.0, require_target=False, **kw).mask.astype(bool)
            det = [c for (x, y), c in comps if m[int(round(y)), int(round(x))]]
            light = sum(det)
            left = light * ~m
            out[name].append((m.mean(), left.sum() / light.sum(), left.max()))
    return {k: np.asarray(v) for k, v in out.items()}


def generated_field(n, rng):
    from gsprep.simulate import add_stars, sersic_image

    img = sersic_image((n, n), n / 2, n / 2, flux=3e5, r_eff=n / 40, n=1.5, q=0.7, theta=0.3)
    k = n * n // 4000
    pos = rng.uniform(10, n - 10, size=(k, 2))
    img = add_stars(img, pos, 10 ** rng.uniform(2.3, 5, k), fwhm=3.0)
    for _ in range(k // 20):
        x, y = rng.uniform(20, n - 20, 2)
        img += sersic_image((n, n), x, y, flux=10 ** rng.uniform(3, 4.5), r_eff=rng.uniform(2, 6), n=1.0,
                            q=rng.uniform(0.3, 1), theta=rng.uniform(0, 3), oversample=1)
    return img + rng.normal(0, 1.0, (n, n))


# ---------------------------------------------------------------------------


def run_version(src_root, out_path):
    env = dict(os.environ, PYTHONPATH=src_root, JAX_PLATFORMS="cpu")
    code = (f"import sys; sys.path.insert(0, {src_root!r}); sys.path.insert(0, {HERE!r}); "
            f"import bench_mask; bench_mask.measure({out_path!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=HERE)
    with open(out_path) as f:
        return json.load(f)


def report(before, after, before_ref):
    lines = [f"gsprep masks vs sep (SExtractor's algorithms); before = {before_ref}, after = this checkout",
             "", ("1. Completeness on real frames: reference objects (sep, SNR > 5) that the mask detection finds "
             "with its defaults"), ("   own: a gsprep object within max(1.5 FWHM, 2 px); in seg: inside a gsprep "
             "segment (masked when not the target)"),
             (f"   {'frame':<8} {'ref':>4} {'sep all':>7} | {'before: own':>11} {'in seg':>7} {'n':>5} | "
             f"{'after: own':>10} {'in seg':>7} {'n':>5} {'time s':>6}")]
    tot = np.zeros(5)
    for name in FRAMES:
        b, a = before["completeness"][name], after["completeness"][name]
        n = a["n_ref"]
        tot += [n, b["own"], b["in_segment"], a["own"], a["in_segment"]]
        lines.append(f"   {name:<8} {n:4d} {a['n_sep_all']:7d} | {b['own'] / n:11.1%} {b['in_segment'] / n:7.1%} "
                     f"{b['n_gsprep']:5d} | {a['own'] / n:10.1%} {a['in_segment'] / n:7.1%} {a['n_gsprep']:5d} "
                     f"{a['time_s']:6.2f}")
    lines.append(f"   {'all':<8} {int(tot[0]):4d} {'':7} | {tot[1] / tot[0]:11.1%} {tot[2] / tot[0]:7.1%} {'':5} | "
                 f"{tot[3] / tot[0]:10.1%} {tot[4] / tot[0]:7.1%}")
    lines += ["", ("2. Target cutouts on real frames (sky-subtracted by each version's own sky): reference objects "
              "(SNR > 5) other than the target, masked; masked fraction"), (f"   {'frame':<8} {'cutout':>8} "
              f"{'others':>6} | {'before: masked':>14} {'frac':>6} {'kept':>5} | {'after: masked':>13} {'frac':>6} "
              f"{'kept':>5}  after: missed (frame x, y)")]
    for name in FRAMES:
        b, a = before["targets"][name], after["targets"][name]
        shape = "x".join(str(s) for s in a["shape"])
        lines.append(f"   {name:<8} {shape:>8} {a['n_others']:6d} | {b['masked']:8d}/{b['n_others']:<5d} "
                     f"{b['mask_frac']:6.1%} {b['target_kept']!s:>5} | {a['masked']:7d}/{a['n_others']:<5d} "
                     f"{a['mask_frac']:6.1%} {a['target_kept']!s:>5}  {a['missed_xy']}")
    lines += ["", ("3. The demo's cutouts (gsprep demo, 201x201 px) and generated fields: masked fraction, reference "
              "objects (sep on the cutout) other than the target masked, neighbours"),
              (f"   {'case':<12} | {'before: frac':>12} {'masked':>8} {'nbrs':>5} {'time s':>6} | {'after: frac':>11} "
              f"{'masked':>8} {'nbrs':>5} {'time s':>6}")]
    for band in DEMO_BANDS:
        b, a = before["demo"][band], after["demo"][band]
        lines.append(f"   demo {band:<7} | {b['mask_frac']:12.1%} {b['masked']:4d}/{b['n_others']:<3d} "
                     f"{b['n_neighbours']:5d} {b['time_s']:6.2f} | {a['mask_frac']:11.1%} "
                     f"{a['masked']:4d}/{a['n_others']:<3d} {a['n_neighbours']:5d} {a['time_s']:6.2f}")
    for case in after["generated"]:
        b, a = before["generated"][case], after["generated"][case]
        lines.append(f"   {case:<12} | {b['mask_frac']:12.1%} {'':>8} {b['n_neighbours']:5d} {b['time_s']:6.2f} | "
                     f"{a['mask_frac']:11.1%} {'':>8} {a['n_neighbours']:5d} {a['time_s']:6.2f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="81cca38", help="git revision of the 'before' code")
    ap.add_argument("--out", default=os.path.join(HERE, "results_mask.txt"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gsprep-bench-mask-") as tmp:
        old = os.path.join(tmp, "before")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", old, args.before], check=True)
        try:
            before = run_version(old, os.path.join(tmp, "before.json"))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old], check=False)
        after = run_version(ROOT, os.path.join(tmp, "after.json"))
    text = report(before, after, args.before)
    rules = growth_rules()
    text += ("\n\n4. Growth rules on 6 simulated 201x201 cutouts (a Sersic target, 40 Moffat stars, 8 Sersic galaxies, "
             "FWHM 3, unit noise; this checkout): masked fraction, and of the neighbours the mask reaches, the share "
             "of their light left unmasked and the brightest unmasked pixel of it (noise units)\n"
             f"   {'rule':<20} {'masked':>8} {'light left':>10} {'max left':>9}")
    for name, v in rules.items():
        text += (f"\n   {name:<20} {v[:, 0].mean():8.1%} {v[:, 1].mean():10.2%} {v[:, 2].mean():9.2f}"
                 f"   (per field: {', '.join(f'{x:.0%}' for x in v[:, 0])})")
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n\n(python benchmarks/bench_mask.py; sep " + _sep_version() + ")\n")


def _sep_version():
    try:
        import sep

        return sep.__version__
    except ImportError:
        return "?"


if __name__ == "__main__":
    main()
