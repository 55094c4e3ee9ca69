"""cutout_mask on generated cutouts of 512^2 and 2048^2 pixels (and the real M13 / NGC 1316 frames).

Reports masked fraction, number of neighbours and wall time (warm, best of 3),
next to photutils' own detect_sources + SourceCatalog on the same frame (the
detection step a user would otherwise run, without the growth).

    python benchmarks/bench_mask.py
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from _timing import best_time


def field(n, rng):
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


def main():
    import gsprep
    from photutils.segmentation import SourceCatalog, detect_sources

    rng = np.random.default_rng(1)
    here = os.path.join(os.path.dirname(__file__), "..", "tests", "data")
    cases = [(f"generated {n}x{n}", field(n, rng), None) for n in (512, 2048)]
    m13 = gsprep.read_image(os.path.join(here, "m13.fits"))
    cases.append(("M13 300x300 (target off-core)", m13.data - np.nanmedian(m13.data), (250.0, 40.0)))
    print(f"{'case':<32} {'masked_frac':>11} {'neighbours':>10} {'gsprep_s':>9} {'photutils_detect_s':>18}")
    for name, img, center in cases:
        t, m = best_time(lambda img=img, center=center: gsprep.cutout_mask(
            img, fwhm=3.0, nsigma=3.0, deblend=True, center=center, target_radius=15))

        def phot(img=img):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from scipy import ndimage

                sm = ndimage.gaussian_filter(img, 3.0 / 2.355)
                seg = detect_sources(sm, 3.0 * np.nanstd(img), npixels=5)
                return SourceCatalog(img, seg, convolved_data=sm).to_table()

        tp, _ = best_time(phot)
        print(f"{name:<32} {m.mask.mean():11.3f} {m.n_neighbours:10d} {t:9.3f} {tp:18.3f}")


if __name__ == "__main__":
    main()
