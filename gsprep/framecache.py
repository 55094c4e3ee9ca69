"""Frame-level products of a batch, computed once per frame and reused by every target on it.

A survey puts many targets on one frame.  Per (frame file, HDU, band) the
sky fit and the PSF stars (catalogue and stamps) do not depend on the
target, nor does the PSF fit of the bands a target is prepared in, so
``gsprep batch`` computes them once and stores them under
``OUT/frames/<key>/`` (:class:`FrameCache`), where every target on the frame,
and the next run, reads them back.

Keys are content hashes: a sky entry's key hashes the frame file's bytes,
its HDU, the band's options that the sky depends on and the content of its
noise / DQ / user-mask files; a stars entry's key hashes the sky key and the
star options; a PSF entry's key hashes the stars keys of the bands fitted
together and the oversampling.  A changed frame, map or option therefore
gives new keys for exactly the products that depend on it, and the old
entries are simply not used again.

Each entry is a folder holding its payload (a pickle: the
:class:`~gsprep.sky.SkyFit`, star table and :class:`~gsprep.stars.Stamps`, or
:class:`~gsprep.psf.EPSFResult` with whatever spatial model it carries; a sky's
frame-sized background is kept apart as ``background.npy`` and read back
memory-mapped, so that a target reads only the part under its cut) and a
``meta.json`` with the SHA-256 of each file, written last.  An entry is written
into a temporary folder and renamed into place, so a killed run leaves no
half-written entry (only a ``.tmp-*`` folder, removed by the next run); an
entry whose checksum or unpickling fails is treated as missing and
recomputed (so the files are not fsynced: what a crash of the machine
damages is detected that way).  Errors a frame gives deterministically (a sky that cannot be
fitted, no PSF star) are stored too, so every target gets the same message
``gsprep prepare`` gives, without computing it again.

The products read back are the very objects ``prepare_target`` computes, so
a target prepared from the cache is identical to ``gsprep prepare`` on that
target alone (on the CPU; on a GPU ``prepare`` fits the skies of same-shape
bands in one stacked call, which agrees to float32 rounding).  A target
whose bands' sky and stars are cached reads only the pixels of each frame
under its cut (:meth:`CachedFrames.read_bands`, :class:`FrameSection`) and
computes the sigma image there alone, with the same element-wise arithmetic,
so its products are the same as from the whole frame.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import pickle
import shutil
import socket
import time
import uuid

import numpy as np

from . import __version__

__all__ = ["SCHEMA", "WORK", "CachedFrames", "FrameCache", "FrameSection", "cached_keys", "field_task",
           "file_digest", "frame_task"]

SCHEMA = 2  # 2: a sky's background stored apart (background.npy, memory-mapped when read)
#: frame-level computations done in this process, by kind ("sky", "stars", "psf"): the tests count them
WORK = collections.Counter()

# options of a band / of the config that only the target's own products depend on (never the frame's)
_TARGET_ONLY_BAND = frozenset({"file", "filter", "zeropoint", "pixel_scale", "cut_center"})
_TARGET_ONLY_CONFIG = frozenset({"name", "ra", "dec", "x", "y", "r", "redshift", "bands", "lyric_psf", "mask_nsigma",
                                 "mask_npixels", "deblend", "addgrow", "require_target", "oversampling", "psf_degree",
                                 "magnification", "wing_level", "mask_detection", "recenter", "target_radius",
                                 "star_nsigma", "star_npixels", "stamp_size", "criteria", "psf", "star_catalog",
                                 "stars_from"})
_STAR_OPTIONS = ("star_nsigma", "star_npixels", "stamp_size", "criteria", "psf", "star_catalog", "stars_from")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_digests = {}
_BACKGROUND = "background.npy"


def _now():
    return datetime.datetime.now(datetime.UTC).strftime(_TIME_FORMAT)


def file_digest(path):
    """SHA-256 of a file's bytes (remembered in this process while its size and mtime stay the same)."""
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    memo = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    if memo in _digests:
        return _digests[memo]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    _digests[memo] = h.hexdigest()
    return _digests[memo]


def _canon(obj):
    """A JSON-able, deterministic form of an option value (dataclasses, tuples, arrays, numbers)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _canon(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _canon(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_canon(v) for v in obj]
        return sorted(items, key=repr) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, np.ndarray):
        return {"array": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _hash(*parts):
    text = json.dumps([_canon(p) for p in parts], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _map_digests(spec):
    """Digests of the band's noise / DQ / user-mask / exposure files (other files than the frame)."""
    from .config import _split_ref

    out = {}
    for key in ("noise", "dq", "user_mask", "exposure"):
        ref = getattr(spec, key, None)
        if ref is None:
            continue
        path, _ = _split_ref(ref)
        try:
            out[key] = file_digest(path)
        except OSError as exc:
            out[key] = f"unreadable: {exc}"
    return out


def frame_keys(config, spec, digest):
    """``(sky_key, stars_key)`` of a band's frame whose file has content ``digest``."""
    band_opts = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in _TARGET_ONLY_BAND}
    cfg_opts = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in _TARGET_ONLY_CONFIG}
    sky_key = "sky-" + _hash(SCHEMA, __version__, digest, band_opts, cfg_opts, _map_digests(spec))
    catalog = getattr(config, "star_catalog", None)  # the user's star list: its content counts, not its name only
    try:
        catalog = catalog and file_digest(catalog)
    except OSError as exc:
        catalog = f"unreadable: {exc}"
    stars_key = "stars-" + _hash(sky_key, {k: getattr(config, k, None) for k in _STAR_OPTIONS}, catalog)
    return sky_key, stars_key


def psf_key(stars_keys, oversampling, degree=0):
    """Key of the PSF fit of the bands with these stars entries (band -> key, in band order)."""
    return "psf-" + _hash(SCHEMA, __version__, list(stars_keys.items()), int(oversampling), degree)


class CorruptEntry(Exception):
    """A cache entry that is there but cannot be read back (checksum, JSON or unpickling failed)."""


class FrameCache:
    """The folder ``OUT/frames/`` of entries ``<key>/{payload.pkl, meta.json}``.

    ``get(key)`` returns the payload, or None when the entry is missing or
    corrupt (a corrupt one is deleted); ``put(key, payload, info)`` writes an
    entry atomically.  A few recently read entries are kept in memory (a
    sky's background memory-mapped, so a few frames' worth costs little), so
    that targets on one frame that run on the same worker read it once.
    """

    def __init__(self, root, *, keep=24):
        self.root = os.fspath(root)
        self.keep = keep
        self._mem = collections.OrderedDict()

    def path(self, key):
        return os.path.join(self.root, key)

    def info(self, key):
        """The entry's ``meta.json`` (dict) or None."""
        try:
            with open(os.path.join(self.path(key), "meta.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def get(self, key):
        folder = self.path(key)
        meta_path = os.path.join(folder, "meta.json")
        try:
            stamp = os.stat(meta_path).st_mtime_ns
        except OSError:
            return None
        mem = self._mem.get(key)
        if mem is not None and mem[0] == stamp:
            self._mem.move_to_end(key)
            return mem[1]
        try:
            payload = self._read(folder, meta_path, key)
        except CorruptEntry:
            self.drop(key)
            return None
        self._mem[key] = (stamp, payload)
        while len(self._mem) > self.keep:
            self._mem.popitem(last=False)
        return payload

    @staticmethod
    def _read(folder, meta_path, key):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            with open(os.path.join(folder, "payload.pkl"), "rb") as f:
                blob = f.read()
        except (OSError, ValueError) as exc:
            raise CorruptEntry(str(exc)) from None
        if meta.get("schema") != SCHEMA or meta.get("key") != key or meta.get("sha256") != hashlib.sha256(
                blob).hexdigest():
            raise CorruptEntry(f"{key}: checksum or schema does not match")
        try:
            payload = pickle.loads(blob)  # our own cache folder, checksummed
        except Exception as exc:  # noqa: BLE001 - unpickling a stale class, a truncated stream, ...
            raise CorruptEntry(f"{key}: {exc}") from None
        if _BACKGROUND in meta.get("arrays", {}):
            path = os.path.join(folder, _BACKGROUND)
            try:
                if file_digest(path) != meta["arrays"][_BACKGROUND]:
                    raise CorruptEntry(f"{key}: {_BACKGROUND} checksum does not match")
                background = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CorruptEntry(f"{key}: {exc}") from None
            payload = {**payload, "sky": dataclasses.replace(payload["sky"], background=background)}
        return payload

    def drop(self, key):
        """Remove an entry (moved aside first, so no reader sees half of it)."""
        self._mem.pop(key, None)
        folder = self.path(key)
        if not os.path.exists(folder):
            return
        trash = os.path.join(self.root, f".tmp-drop-{key}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def put(self, key, payload, info=None):
        """Write the entry ``key`` atomically (temporary folder, then rename); keeps an existing valid one."""
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, f".tmp-{key}-{uuid.uuid4().hex[:8]}")
        os.mkdir(tmp)
        try:
            stored, arrays = payload, {}
            sky = payload.get("sky") if isinstance(payload, dict) else None
            if isinstance(getattr(sky, "background", None), np.ndarray):  # the frame-sized array apart, mappable
                data = _npy_bytes(sky.background)
                _write_file(os.path.join(tmp, _BACKGROUND), data)
                arrays[_BACKGROUND] = hashlib.sha256(data).hexdigest()
                stored = {**payload, "sky": dataclasses.replace(sky, background=None)}
            blob = pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL)
            _write_file(os.path.join(tmp, "payload.pkl"), blob)
            meta = {"schema": SCHEMA, "key": key, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
                    "arrays": arrays, "gsprep": __version__, "written": _now(), **(info or {})}
            _write_file(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1, default=repr).encode())
            final = self.path(key)
            if os.path.exists(final):
                if self.get(key) is not None:  # written meanwhile by another task: keep that one
                    return
                self.drop(key)
            try:
                os.rename(tmp, final)
            except OSError:  # another task renamed its copy in first
                if self.get(key) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._mem[key] = (os.stat(os.path.join(final, "meta.json")).st_mtime_ns, payload)

    def clean(self):
        """Remove the temporary folders a killed run left."""
        if os.path.isdir(self.root):
            for name in os.listdir(self.root):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)


def _npy_bytes(arr):
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write_file(path, data):
    """Write ``data`` to ``path`` (not fsynced: an entry damaged by a crash of the machine fails its checksum when
    read and is computed again, so a sync per file would only slow every target that fills the cache)."""
    with open(path, "wb") as f:
        f.write(data)


_caches = {}


def cache_at(root):
    """One :class:`FrameCache` per folder and process (its in-memory entries shared by the tasks of a worker)."""
    root = os.path.abspath(os.fspath(root))
    if root not in _caches:
        _caches[root] = FrameCache(root)
    return _caches[root]


# --------------------------------------------------------------------------
# computing the entries (on the worker that needs them)

_READ_ERRORS = (OSError, ValueError, TypeError, IndexError, KeyError)


def _open_band(config, spec, band):
    """The band's frame, exposure time, gain and maps, read as ``run_target`` reads them; raises on a bad one."""
    from .io import read_image
    from .pipeline import _band_inputs, _band_maps, _in_section

    image = read_image(spec.file, spec.hdu, unit=spec.unit, band=band)
    exptime, gain = _band_inputs(image, spec, band)
    maps = _in_section(f"bands.{band}", lambda: _band_maps(spec, image))
    return image, exptime, gain, maps


def band_spec(config, band):
    """The band's spec with its preset filled in from its file, as ``run_target`` does (its warnings said there)."""
    import warnings

    from .presets import PresetWarning, resolve_band

    spec = config.bands[band]
    if getattr(spec, "preset", None) is None:
        return spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetWarning)
        return resolve_band(spec, band)


def ensure_frame(cache, config, spec, band, keys=None, *, opened=None):
    """Make sure the sky and stars entries of a band's frame exist; returns ``(keys, computed)``.

    ``computed`` lists what was computed now ("sky", "stars"); empty when
    both were in the cache.  Deterministic failures (sky cannot be fitted,
    no PSF star) are stored as ``{"error": message}``.  A frame that cannot
    be opened raises (nothing is stored).  ``opened``: the band's
    ``(image, exptime, gain, maps)`` already read (or a function giving
    them, or None), used instead of reading the frame again when an entry
    has to be computed.
    """
    from .pipeline import band_frame_sky, band_frame_stars

    if keys is None:
        keys = frame_keys(config, spec, file_digest(spec.file))
    sky_key, stars_key = keys
    sky = cache.get(sky_key)
    stars = cache.get(stars_key) if config.psf else {"skipped": True}
    if sky is not None and stars is not None:
        return keys, []
    opened = opened() if callable(opened) else opened
    image, exptime, gain, maps = opened or _open_band(config, spec, band)
    computed = []
    info = {"band": band, "file": os.fspath(spec.file), "hdu": spec.hdu}
    if sky is None:
        try:
            sky = {"sky": band_frame_sky(image, config, spec, maps, band=band)}
        except (ValueError, TypeError) as exc:
            sky = {"error": str(exc)}
        WORK["sky"] += 1
        computed.append("sky")
        cache.put(sky_key, sky, info)
    if stars is None:
        if "error" in sky:
            stars = {"error": sky["error"]}
        else:
            try:
                stars = {"stars": band_frame_stars(image, config, spec, sky["sky"], exptime=exptime, gain=gain,
                                                   maps=maps)}
            except (ValueError, TypeError) as exc:
                stars = {"error": str(exc)}
        WORK["stars"] += 1
        computed.append("stars")
        cache.put(stars_key, stars, info)
    return keys, computed


def ensure_psfs(cache, stars_keys, stamps, oversampling, degree=0):
    """The PSF fits of the bands of ``stamps`` (band -> Stamps, band order), from the cache or fitted now.

    ``degree``: the config's ``psf_degree`` (a PSF varying across the
    frame; the whole result is stored, its spatial model included).
    Returns ``(results, key, computed)``: band -> EPSFResult or ValueError.
    """
    from .pipeline import band_psfs

    key = psf_key(stars_keys, oversampling, degree)
    entry = cache.get(key)
    computed = entry is None
    if computed:
        fits = band_psfs(stamps, oversampling, degree) if degree else band_psfs(stamps, oversampling)
        entry = {b: ({"error": str(r)} if isinstance(r, Exception) else {"psf": r}) for b, r in fits.items()}
        WORK["psf"] += 1
        cache.put(key, entry, {"bands": list(stamps)})
    return {b: (ValueError(e["error"]) if "error" in e else e["psf"]) for b, e in entry.items()}, key, computed


_MAP_KEYS = ("noise", "noise_hdu", "dq", "dq_hdu", "user_mask", "user_mask_hdu", "exposure", "exposure_hdu", "preset")


class FrameSection:
    """The pixels of a plain 2-D float image HDU, read by window: ``window(ys, xs)`` reads ``frame[ys, xs]``.

    As :func:`gsprep.read_image` gives them: float64, inf made NaN.  Only
    the window's bytes are read (``astropy.io.fits`` section of a
    memory-mapped file).
    """

    ndim = 2

    def __init__(self, path, hdu, shape):
        self.path, self.hdu, self.shape = os.fspath(path), hdu, tuple(shape)

    def window(self, ys, xs):
        from astropy.io import fits

        with fits.open(self.path, memmap=True) as hdul:
            data = np.array(hdul[self.hdu].section[ys, xs], dtype=np.float64)
        data[~np.isfinite(data)] = np.nan
        return data


def _header_image(spec, band):
    """The band's frame as an :class:`~gsprep.io.Image` whose ``data`` is a :class:`FrameSection`, or None.

    None (read the whole frame instead) unless the HDU is a plain, unscaled
    2-D float image, whose section reads give exactly ``read_image``'s pixels.
    Header, WCS, exposure time and gain as ``read_image`` reads them, its
    header warnings included.
    """
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS

    from .io import Image, _header_exptime, _header_number, _pass_on
    from .wcs import pixel_scale

    path = os.fspath(spec.file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(path, memmap=True) as hdul:
            h = hdul[spec.hdu]
            hdr = h.header
            if (type(h) not in (fits.PrimaryHDU, fits.ImageHDU) or hdr.get("NAXIS") != 2
                    or hdr.get("BITPIX") not in (-32, -64) or any(k in hdr for k in ("BSCALE", "BZERO", "BLANK"))):
                return None
            header = hdr.copy()
            full = WCS(header, fobj=hdul)
    _pass_on(caught, path)
    wcs = full.celestial if full.has_celestial else None
    if wcs is not None and wcs.naxis != 2:
        wcs = None
    return Image(data=FrameSection(path, spec.hdu, (header["NAXIS2"], header["NAXIS1"])), wcs=wcs, header=header,
                 unit=spec.unit, band=band, pixel_scale=None if wcs is None else pixel_scale(wcs),
                 exptime=_header_exptime(header, path), gain=_header_number(header, ("GAIN", "CCDGAIN"), path))


class CachedFrames:
    """The frame products of one target's bands, read from the cache (``prepare_target(frames=...)``).

    ``keys``: band -> ``(sky_key, stars_key)`` from the frame tasks.  An
    entry missing or corrupt by now is computed here (and stored), so the
    products are the same whichever way.
    """

    def __init__(self, cache, config, keys):
        self.cache, self.config, self.keys = cache, config, dict(keys)
        self.computed = []
        #: per band: what was computed here ("sky", "stars") and the seconds spent getting its entries;
        #: ``"psf"``: the PSF entry's key, whether it was fitted here, seconds (:meth:`records`)
        self.work = {}
        self.opened = {}  # band -> Image read whole by read_bands: an entry computed here uses it (no second read)

    def _opened(self, band, spec):
        """``(image, exptime, gain, maps)`` of a band that ``read_bands`` read whole, for ``ensure_frame``."""
        image = self.opened.get(band)
        if image is None:
            return None
        from .pipeline import _band_inputs, _band_maps, _in_section

        try:
            exptime, gain = _band_inputs(image, spec, band)
            maps = _in_section(f"bands.{band}", lambda: _band_maps(spec, image))
        except _READ_ERRORS:
            return None  # ensure_frame opens it itself, with the error it gives
        return image, exptime, gain, maps

    def _frame(self, band, which):
        spec = band_spec(self.config, band)
        keys = self.keys.get(band)
        entry = None
        for _ in range(2):  # an entry gone again right after it was checked (a concurrent clean-up): once more
            t0 = time.perf_counter()
            keys, done = ensure_frame(self.cache, self.config, spec, band, keys,
                                      opened=lambda: self._opened(band, spec))
            work = self.work.setdefault(band, {"computed": [], "time_s": 0.0})
            work["computed"] += done
            work["time_s"] += time.perf_counter() - t0
            self.keys[band] = keys
            self.computed += done
            entry = self.cache.get(keys[which])
            if entry is not None:
                break
        if entry is None:
            msg = f"frame cache: the products of {spec.file} could not be stored in {self.cache.root}"
            raise ValueError(msg)
        if "error" in entry:
            raise ValueError(entry["error"])
        return entry

    def read_bands(self, config, *, windows=True):
        """``pipeline.read_bands(config)``, a band's frame read by window (:class:`FrameSection`) where it can be.

        That is where the band's sky and stars are cached (not an error),
        it has no noise, DQ, exposure or user-mask map nor preset, the cut
        is not recentred and the frame is a plain float image: its target
        then needs only the pixels under its cut.  Other bands are read
        whole, with ``read_bands``' errors; ``windows=False`` reads every
        band whole (figures need whole frames).  A frame read whole is kept
        for the frame products computed here, so that it is read once.
        """
        from .pipeline import read_bands

        images, whole = {}, []
        for band, spec in config.bands.items():
            image = None
            if (windows and band in self.keys and getattr(config, "recenter", None) is None
                    and all(getattr(spec, k, None) is None for k in _MAP_KEYS)
                    and all(_usable(self.cache.get(k)) for k in self.keys[band][: 2 if config.psf else 1])):
                try:
                    image = _header_image(spec, band)
                except _READ_ERRORS:
                    image = None
            if image is None:
                whole.append(band)
            images[band] = image
        read, errors = read_bands(dataclasses.replace(config, bands={b: config.bands[b] for b in whole})) if whole \
            else ({}, {})
        self.opened.update({b: im for b, im in read.items() if isinstance(im.data, np.ndarray)})
        images = {b: images[b] or read[b] for b in config.bands if images[b] is not None or b in read}
        return images, errors

    def sky(self, band):
        return self._frame(band, 0)["sky"]

    def stars(self, band):
        return self._frame(band, 1)["stars"]

    def psfs(self, stamps):
        t0 = time.perf_counter()
        res, key, computed = ensure_psfs(self.cache, {b: self.keys[b][1] for b in stamps}, stamps,
                                         self.config.oversampling, getattr(self.config, "psf_degree", 0))
        if computed:
            self.computed.append("psf")
        self.work["psf"] = {"key": key, "bands": list(stamps), "computed": computed,
                            "time_s": time.perf_counter() - t0}
        return res

    def records(self, idents, errors=None):
        """Frames-manifest rows of what this object computed or read: one per band of ``idents["frames"]``
        (band -> ident) and one for the PSF fit (``idents["psf"]``), as ``frame_task`` and ``field_task`` give.

        For a target prepared in one task (:func:`gsprep.batch.solo_task`).  A band whose entries were never
        asked for (its frame could not be read, the target is off it, ...): a ``failed`` row when its frame
        cannot be opened (the message ``frame_task`` gives), else no row (nothing was computed or stored
        for it).  ``errors``: the target's band -> message, to tell these bands apart without reading
        a frame that was fine.
        """
        errors = errors or {}
        rows = []
        for band, ident in idents["frames"].items():
            spec = self.config.bands[band]
            if band in self.work:
                w = self.work[band]
                rows.append(_record("frame", ident, band, spec.file, spec.hdu, time.perf_counter() - w["time_s"],
                                    keys=";".join(self.keys[band]), computed=";".join(w["computed"])))
                continue
            if band not in errors:
                continue
            t0 = time.perf_counter()
            try:
                _open_band(self.config, band_spec(self.config, band), band)
            except _READ_ERRORS as exc:
                rows.append(_record("frame", ident, band, spec.file, spec.hdu, t0, status="failed",
                                    error=" ".join(f"{type(exc).__name__}: {exc}".split())))
        psf = self.work.get("psf")
        t0 = time.perf_counter() - (psf["time_s"] if psf else 0.0)
        if psf is None:  # nothing to fit (no band with stars, or psf = false): as field_task records it
            rows.append(_record("psf", idents["psf"], "", "", "", t0))
        else:
            rows.append(_record("psf", idents["psf"], ",".join(psf["bands"]), "", "", t0, keys=psf["key"],
                                computed="psf" if psf["computed"] else ""))
        return rows


def _usable(entry):
    return entry is not None and "error" not in entry


def cached_keys(cache, config):
    """band -> ``(sky_key, stars_key)`` of the bands whose entries are all in ``cache`` already.

    For a target prepared in one task: those bands are then read by
    window (:meth:`CachedFrames.read_bands`), the others read whole, their
    entries computed from that very read.  A band whose frame cannot be
    hashed or resolved is left out (its error comes where it is read).
    """
    keys = {}
    for band in config.bands:
        try:
            spec = band_spec(config, band)
            k = frame_keys(config, spec, file_digest(spec.file))
        except _READ_ERRORS:
            continue
        if all(cache.get(x) is not None for x in k[: 2 if config.psf else 1]):
            keys[band] = k
    return keys


# --------------------------------------------------------------------------
# the Dask tasks of the frame level


def _record(kind, ident, band, file, hdu, t0, **kw):
    rec = {"kind": kind, "frame": ident, "band": band, "file": os.fspath(file) if file else "", "hdu": str(hdu),
           "status": "done", "error": "", "keys": "", "computed": "", "time_s": 0.0,
           "worker": f"{socket.gethostname()}:{os.getpid()}", "finished": _now()}
    rec.update(kw)
    rec["time_s"] = round(time.perf_counter() - t0, 3)
    return rec


def frame_task(root, config, band, ident, compile_cache=None):
    """Dask task: the sky and stars entries of one band's frame (read on this worker); returns its record.

    A frame that cannot be opened (missing, corrupt, no EXPTIME, a bad
    map) is a ``failed`` record: each target on it reports the same error
    for that band, as ``gsprep prepare`` does.
    """
    from .batch import _use_compile_cache

    t0 = time.perf_counter()
    _use_compile_cache(compile_cache)
    spec = config.bands[band]
    cache = cache_at(root)
    try:
        spec = band_spec(config, band)
        keys, computed = ensure_frame(cache, config, spec, band)
    except _READ_ERRORS as exc:
        return _record("frame", ident, band, spec.file, spec.hdu, t0, status="failed",
                       error=" ".join(f"{type(exc).__name__}: {exc}".split()))
    return _record("frame", ident, band, spec.file, spec.hdu, t0, keys=";".join(keys), computed=";".join(computed))


def field_task(root, config, frames, ident, compile_cache=None):
    """Dask task: the PSF fit of the bands of one set of frames (after their frame tasks); returns its record.

    ``frames``: the frame tasks' records, in band order.  The bands fitted
    together are those whose stars entry holds stamps, as ``prepare_target``
    fits the bands of a target in one call; a target for which a band
    drops out (off that frame) fits its own set when it runs.
    """
    from .batch import _use_compile_cache

    t0 = time.perf_counter()
    rec = {"frames": list(frames)}
    if not config.psf:
        return {**_record("psf", ident, "", "", "", t0), **rec}
    _use_compile_cache(compile_cache)
    cache = cache_at(root)
    stamps, keys = {}, {}
    for fr in frames:
        if fr["status"] != "done":
            continue
        stars_key = fr["keys"].split(";")[1]
        entry = cache.get(stars_key)
        if entry is None:  # lost since its frame task: recompute it here
            (_, stars_key), _ = ensure_frame(cache, config, band_spec(config, fr["band"]), fr["band"])
            entry = cache.get(stars_key)
        if entry is not None and "stars" in entry:
            stamps[fr["band"]] = entry["stars"][1]
            keys[fr["band"]] = stars_key
    if not stamps:
        return {**_record("psf", ident, ",".join(keys), "", "", t0), **rec}
    _, key, computed = ensure_psfs(cache, keys, stamps, config.oversampling, getattr(config, "psf_degree", 0))
    return {**_record("psf", ident, ",".join(keys), "", "", t0, keys=key, computed="psf" if computed else ""), **rec}
