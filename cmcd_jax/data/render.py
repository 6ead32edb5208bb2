"""Procedural renderer for the embedded ``cmcd_shapes`` dataset (pure numpy).

One call to :func:`render_scene` draws a random scene -- a main object of one of
``NUM_CLASSES`` 3-D shapes, optional smaller distractors of other classes, a light
and a textured background -- and returns paired modalities of the same view:

* ``image``  uint8 (R, R, 3): shaded, coloured, textured RGB (the rich source). As with
  real objects, appearance goes with the class: with probability ``typical_colour`` the main
  object wears its class's typical hue (``class_hue``), else a random one; backgrounds are
  low-saturation. Only the image sees colour, so it carries what no target does.
* ``depth``  float32 (R, R): depth along the camera axis in scene units; pixels
  that hit nothing hold ``DEPTH_FAR``. Objects lie well inside
  ``[DEPTH_NEAR, DEPTH_FAR)``.
* ``sketch`` uint8 (R, R): 255 on strokes, 0 elsewhere. Strokes are silhouettes,
  occlusion contours and creases found from id/depth/normal discontinuities, then
  jittered and broken up (no colour, no texture).
* ``audio``  float32 (AUDIO_LENGTH,): impact sound in [-1, 1] by modal synthesis:
  the class fixes the modal frequency ratios, the main object's size the pitch,
  its material the decay; white noise is added at ``audio_snr_db``.
* ``mask``   uint8 (R, R): ``label + 1`` where the main object is visible, else 0
  (distractors count as background).
* ``label``  int: class index of the main object.

Camera: pinhole at the origin looking along +z, image rows top to bottom (+y up),
horizontal/vertical field of view ``2 * atan(TAN_HALF_FOV)``. Geometry is ray cast
at ``SUPERSAMPLE`` x the output resolution against implicit surfaces (dense samples
inside each object's bounding sphere, then regula falsi) and reduced per output
pixel: the image is averaged; a pixel is object (depth < DEPTH_FAR) or main object
(mask) when at least half of its subsamples are, its depth being the mean over the
subsamples that hit; a pixel is a stroke when any subsample is.

Output is bit-identical for the same generator state on one machine; numpy's SIMD
float32 sin/exp may differ in the last bit across CPU types.
"""

import functools
import zlib

import numpy as np

CLASS_NAMES = ('sphere', 'cube', 'cylinder', 'cone', 'torus', 'capsule',
               'octahedron', 'pyramid', 'hex_prism', 'ellipsoid')
NUM_CLASSES = len(CLASS_NAMES)
MATERIALS = ('metal', 'wood', 'plastic', 'rubber')
AUDIO_SAMPLE_RATE = 8000
AUDIO_SECONDS = 0.5
AUDIO_LENGTH = int(AUDIO_SAMPLE_RATE * AUDIO_SECONDS)
DEPTH_NEAR = 2.0
DEPTH_FAR = 8.0
TAN_HALF_FOV = 0.42
SUPERSAMPLE = 2
TYPICAL_COLOUR = 0.9       # chance that the main object wears its class's typical hue

_MARCH_SAMPLES = 24        # samples along each ray's chord through a bounding sphere
_BOUND_RADIUS = 1.05       # object-space bounding sphere (every shape fits in radius 1)
_DEPTH_EDGE = 0.08         # relative depth jump that makes an occlusion contour
_CREASE_COS = 0.8          # normals closer than ~37 degrees do not make a crease
_STROKE_CELL = 3           # dropout cell size in supersampled pixels
_STROKE_JITTER = 0.9       # std of the smooth stroke displacement, supersampled pixels
_TEXTURES = ('plain', 'stripes', 'checker', 'noise', 'rings')
_HUE_SPREAD = 0.02         # std of a typical hue around its class's
_BACKGROUND_SATURATION = 0.15
_MARCH = np.linspace(0.0, 1.0, _MARCH_SAMPLES, dtype=np.float32)
_TETRA = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], np.float32)

# Modal frequency ratios per class (fundamental = 1); pitch scales them.
_MODE_RATIOS = (
    (1.00, 1.53, 2.07, 2.62),   # sphere
    (1.00, 1.41, 1.73, 2.24),   # cube
    (1.00, 2.76, 5.40),         # cylinder
    (1.00, 1.83, 2.95, 4.30),   # cone
    (1.00, 2.00, 3.00, 4.00),   # torus
    (1.00, 1.29, 3.10, 3.45),   # capsule
    (1.00, 1.62, 2.62, 4.24),   # octahedron
    (1.00, 2.30, 2.70, 5.10),   # pyramid
    (1.00, 1.15, 2.10, 3.60),   # hex_prism
    (1.00, 3.50, 6.20),         # ellipsoid
)
_PITCH_HZ = 240.0          # fundamental of a main object of scale 1 (scales are 0.8-1.2)
_DECAY_S = {'metal': 0.30, 'wood': 0.05, 'plastic': 0.10, 'rubber': 0.025}
# (specular strength, shininess, diffuse gain, specular tinted by albedo)
_SHINE = {'metal': (0.9, 40.0, 0.55, True), 'wood': (0.08, 8.0, 1.0, False),
          'plastic': (0.5, 30.0, 0.9, False), 'rubber': (0.03, 4.0, 1.0, False)}


def _sphere(x, y, z):
    return np.sqrt(x * x + y * y + z * z) - 0.8


def _cube(x, y, z):
    return np.maximum(np.maximum(np.abs(x), np.abs(y)), np.abs(z)) - 0.52


def _cylinder(x, y, z):
    return np.maximum(np.sqrt(x * x + z * z) - 0.5, np.abs(y) - 0.65)


def _cone(x, y, z):
    return np.maximum(np.sqrt(x * x + z * z) - 0.5 * (0.7 - y), -0.7 - y)


def _torus(x, y, z):
    ring = np.sqrt(x * x + z * z) - 0.66
    return np.sqrt(ring * ring + y * y) - 0.2


def _capsule(x, y, z):
    yy = np.maximum(np.abs(y) - 0.5, 0.0)
    return np.sqrt(x * x + yy * yy + z * z) - 0.38


def _octahedron(x, y, z):
    return (np.abs(x) + np.abs(y) + np.abs(z) - 0.95) * 0.577


def _pyramid(x, y, z):
    return np.maximum(np.maximum(np.abs(x), np.abs(z)) - 0.58 * (0.7 - y) / 1.2, -0.5 - y)


def _hex_prism(x, y, z):
    ax, az = np.abs(x), np.abs(z)
    hexagon = np.maximum(az, 0.866 * ax + 0.5 * az) - 0.52
    return np.maximum(hexagon, np.abs(y) - 0.6)


def _ellipsoid(x, y, z):
    return (np.sqrt((x / 0.5) ** 2 + (y / 0.95) ** 2 + (z / 0.36) ** 2) - 1.0) * 0.36


_SHAPES = (_sphere, _cube, _cylinder, _cone, _torus, _capsule, _octahedron, _pyramid,
           _hex_prism, _ellipsoid)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Deterministic generator for record ``index`` of ``split`` under ``seed``."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _hsv(h, s, v):
    """HSV in [0, 1] to an RGB array."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _rotation(rng):
    """Uniformly random 3x3 rotation (object -> world)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _texture_frame(rng):
    """Axes, frequency and phases of an object's solid texture."""
    return {'axes': _rotation(rng).astype(np.float32), 'freq': np.float32(rng.uniform(6.0, 12.0)),
            'phase': rng.uniform(0.0, 2 * np.pi, 3).astype(np.float32)}


def _random_look(rng):
    """Material, two albedo colours and a solid texture in object coordinates."""
    material = MATERIALS[rng.integers(len(MATERIALS))]
    if material == 'wood':
        base = _hsv(rng.uniform(0.04, 0.12), rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.85))
        texture = 'rings'
    else:
        value = rng.uniform(0.2, 0.6) if material == 'rubber' else rng.uniform(0.5, 1.0)
        base = _hsv(rng.uniform(), rng.uniform(0.2, 1.0), value)
        texture = _TEXTURES[rng.integers(4)]
    other = _hsv(rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
    second = base * rng.uniform(0.35, 0.7) if rng.random() < 0.5 else other
    return {'material': material, 'colours': (base.astype(np.float32), second.astype(np.float32)),
            'texture': texture, **_texture_frame(rng)}


def class_hue(label: int) -> float:
    """The typical hue (HSV, in [0, 1)) of class ``label``'s objects."""
    return label / NUM_CLASSES


def _typical_look(rng, label, typical_colour):
    """Material (drawn as in ``_random_look``), and a base colour of the class's typical hue
    with probability ``typical_colour`` (else a random hue), its darker shade second."""
    material = MATERIALS[rng.integers(len(MATERIALS))]
    typical = rng.random() < typical_colour
    hue = (class_hue(label) + rng.normal(0.0, _HUE_SPREAD)) % 1.0 if typical else rng.uniform()
    if material == 'wood':
        value, texture = rng.uniform(0.45, 0.85), 'rings'
    else:
        value = rng.uniform(0.2, 0.6) if material == 'rubber' else rng.uniform(0.5, 1.0)
        texture = _TEXTURES[rng.integers(4)]
    base = _hsv(hue, rng.uniform(0.6, 1.0), value).astype(np.float32)
    return {'material': material, 'colours': (base, base * np.float32(rng.uniform(0.35, 0.7))),
            'texture': texture, **_texture_frame(rng)}


def _random_object(rng, label, scale_range, z_range, spread, typical_colour=None):
    """Shape, pose and look of one object whose centre projects within ``spread``; with
    ``typical_colour`` its colour goes with its class (``_typical_look``)."""
    z = rng.uniform(*z_range)
    x, y = rng.uniform(-spread, spread, 2) * z * TAN_HALF_FOV
    pose = {'label': label, 'rot': _rotation(rng).astype(np.float32),
            'centre': np.array([x, y, z], np.float32), 'scale': rng.uniform(*scale_range)}
    look = _random_look(rng) if typical_colour is None else _typical_look(rng, label,
                                                                           typical_colour)
    return {**pose, **look}


def _random_distractor(rng, label, main, tries=8):
    """A small object of class ``label`` whose bounding sphere misses the main object's."""
    for _ in range(tries):
        obj = _random_object(rng, label, (0.22, 0.42), (2.8, 6.0), 0.85)
        gap = np.linalg.norm(obj['centre'] - main['centre']) - obj['scale'] - main['scale']
        if gap > 0.0:
            break
    return obj


def _random_distractors(rng, main):
    """0-2 distractors of classes other than the main object's."""
    labels = (main['label'] + rng.integers(1, NUM_CLASSES, rng.integers(3))) % NUM_CLASSES
    return [_random_distractor(rng, int(k), main) for k in labels]


def _camera_dirs(n):
    """Ray directions (n*n, 3) with unit z, so the ray parameter is camera-axis depth."""
    u = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0) * np.float32(TAN_HALF_FOV)
    return np.stack([np.tile(u, n), np.repeat(-u, n), np.ones(n * n, np.float32)], axis=1)


def _trace(obj, dirs):
    """First hits of rays ``t * dirs`` with one object's surface.

    Samples each ray's chord through the bounding sphere, then refines the first
    sign change by regula falsi. Returns (ray indices, depth t, object-space hit
    points, world unit normals).
    """
    shape, rot = _SHAPES[obj['label']], obj['rot']
    a = dirs @ rot / np.float32(obj['scale'])
    b = -(obj['centre'] @ rot) / np.float32(obj['scale'])
    qa = np.einsum('ij,ij->i', a, a)
    qb = a @ b
    disc = qb * qb - qa * (b @ b - np.float32(_BOUND_RADIUS ** 2))
    idx = np.flatnonzero(disc > 0.0)
    a, qa, qb, root = a[idx], qa[idx], qb[idx], np.sqrt(disc[idx])
    t0 = (-qb - root) / qa
    ts = t0[:, None] + (2.0 * root / qa)[:, None] * _MARCH
    inside = shape(*(ts * a[:, i:i + 1] + b[i] for i in range(3))) < 0.0
    hit = inside.any(axis=1)
    idx, a, ts = idx[hit], a[hit], ts[hit]
    rows = np.arange(idx.size)
    k = np.maximum(inside[hit].argmax(axis=1), 1)
    lo, hi = ts[rows, k - 1], ts[rows, k]
    at = lambda t: shape(*(t * a[:, i] + b[i] for i in range(3)))
    flo, fhi = at(lo), at(hi)
    for _ in range(2):
        mid = lo + (hi - lo) * flo / (flo - fhi)
        fmid = at(mid)
        out = fmid >= 0.0
        lo, flo = np.where(out, mid, lo), np.where(out, fmid, flo)
        hi, fhi = np.where(out, hi, mid), np.where(out, fhi, fmid)
    t = lo + (hi - lo) * flo / (flo - fhi)
    p = t[:, None] * a + b
    return idx, t, p, _normals(shape, p) @ rot.T


def _normals(shape, p, eps=1e-3):
    """Unit gradient of ``shape`` at points p (m, 3) by tetrahedral differences."""
    f = shape(*(p[:, i] + np.float32(eps) * _TETRA[:, i:i + 1] for i in range(3)))
    g = f.T @ _TETRA
    return g / np.maximum(np.sqrt(np.einsum('ij,ij->i', g, g)), 1e-12)[:, None]


def _texture(obj, p):
    """Blend weight in [0, 1] between the two albedo colours at object points p."""
    kind = obj['texture']
    if kind == 'plain':
        return np.zeros(len(p), np.float32)
    u = p @ obj['axes']
    f, ph = obj['freq'], obj['phase']
    if kind == 'stripes':
        m = np.sin(f * u[:, 0] + ph[0])
    elif kind == 'checker':
        m = 4.0 * np.prod(np.sin(f * u + ph), axis=1)
    elif kind == 'noise':
        m = (np.sin(f * u[:, 0] + ph[0]) + np.sin(1.7 * f * u[:, 1] + ph[1])
             + np.sin(2.3 * f * u[:, 2] + 2.0 * np.sin(f * u[:, 0]) + ph[2]))
    else:
        radius = np.sqrt(u[:, 0] ** 2 + u[:, 1] ** 2)
        m = np.sin(2.0 * f * radius + 1.5 * np.sin(3.0 * u[:, 2] + ph[0]))
    return 0.5 + 0.5 * np.tanh(3.0 * m)


def _shade(obj, p, normal, dirs, light):
    """Ambient + Lambert + Blinn-Phong colour (m, 3) of hits on one object.

    A mild facing-ratio falloff darkens grazing surfaces so outlines read clearly.
    """
    base, second = obj['colours']
    albedo = base + (second - base) * _texture(obj, p)[:, None]
    ks, shininess, kd, tinted = _SHINE[obj['material']]
    direction, ambient = light
    view = -dirs / np.sqrt(np.einsum('ij,ij->i', dirs, dirs))[:, None]
    half = view + direction
    half /= np.sqrt(np.einsum('ij,ij->i', half, half))[:, None]
    facing = np.maximum(np.einsum('ij,ij->i', normal, view), 0.0)
    lambert = np.maximum(normal @ direction, 0.0)
    diffuse = (ambient + kd * (1.0 - ambient) * lambert) * (0.6 + 0.4 * facing)
    spec = ks * np.maximum(np.einsum('ij,ij->i', normal, half), 0.0) ** shininess
    return albedo * diffuse[:, None] + spec[:, None] * (albedo if tinted else 1.0)


def _cast(objects, dirs, light):
    """Nearest-hit colour, depth (DEPTH_FAR = none), object id (-1 = none), normal per ray."""
    m = len(dirs)
    depth = np.full(m, DEPTH_FAR, np.float32)
    ident = np.full(m, -1, np.int8)
    normal = np.zeros((m, 3), np.float32)
    colour = np.zeros((m, 3), np.float32)
    for k, obj in enumerate(objects):
        idx, t, p, nrm = _trace(obj, dirs)
        near = t < depth[idx]
        idx, t, p, nrm = idx[near], t[near], p[near], nrm[near]
        depth[idx], ident[idx], normal[idx] = t, k, nrm
        colour[idx] = _shade(obj, p, nrm, dirs[idx], light)
    return colour, depth, ident, normal


def _smooth_field(rng, n, cells, channels):
    """Bilinearly upsampled (n, n, channels) standard-normal noise from a cells^2 grid."""
    grid = rng.normal(size=(channels, cells, cells)).astype(np.float32)
    pos = (np.arange(n) + 0.5) / n * (cells - 1)
    lo = np.minimum(pos.astype(int), cells - 2)
    w = np.zeros((n, cells), np.float32)
    w[np.arange(n), lo] = 1.0 - (pos - lo)
    w[np.arange(n), lo + 1] = pos - lo
    return (w @ grid @ w.T).transpose(1, 2, 0)


def _background(rng, n):
    """Low-saturation colour gradient plus coarse and medium-scale colour noise, (n, n, 3)."""
    c0 = _hsv(rng.uniform(), rng.uniform(0.0, _BACKGROUND_SATURATION), rng.uniform(0.25, 0.9))
    c1 = _hsv(rng.uniform(), rng.uniform(0.0, _BACKGROUND_SATURATION), rng.uniform(0.25, 0.9))
    angle = rng.uniform(0.0, 2 * np.pi)
    u = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    ramp = np.clip(0.5 + np.cos(angle) * u[None, :] + np.sin(angle) * u[:, None], 0.0, 1.0)
    bg = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * ramp[..., None]
    bg += np.float32(rng.uniform(0.0, 0.1)) * _smooth_field(rng, n, 6, 3)
    return bg + np.float32(rng.uniform(0.0, 0.05)) * _smooth_field(rng, n, n // 8, 3)


def _edges(ident, depth, normal):
    """Boolean stroke map: id changes, depth jumps and creases, on the nearer pixel."""
    edges = np.zeros(ident.shape, bool)
    for a, b in (((slice(None, -1),), (slice(1, None),)),
                 ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):
        ia, ib, da, db = ident[a], ident[b], depth[a], depth[b]
        crease = (ia >= 0) & (np.einsum('ijc,ijc->ij', normal[a], normal[b]) < _CREASE_COS)
        line = crease | (ia != ib) | (np.abs(da - db) > _DEPTH_EDGE * np.minimum(da, db))
        a_near = da <= db
        edges[a] |= line & a_near
        edges[b] |= line & ~a_near
    return edges


def _sketch(rng, ident, depth, normal, dropout):
    """Jittered line drawing (n, n) bool with a ``dropout`` fraction of cells removed."""
    n = ident.shape[0]
    shift = np.float32(_STROKE_JITTER) * _smooth_field(rng, n, 5, 2)
    grid = np.arange(n, dtype=np.float32)
    rows = np.clip(np.rint(grid[:, None] + shift[..., 0]), 0, n - 1).astype(np.intp)
    cols = np.clip(np.rint(grid[None, :] + shift[..., 1]), 0, n - 1).astype(np.intp)
    cells = n // _STROKE_CELL + 2
    keep = rng.random((cells, cells)) >= dropout
    cell = (np.arange(n) + rng.integers(_STROKE_CELL, size=2)[:, None]) // _STROKE_CELL
    return _edges(ident, depth, normal)[rows, cols] & keep[cell[0][:, None], cell[1][None, :]]


def _block_sum(x):
    """Sum over SUPERSAMPLE x SUPERSAMPLE pixel blocks (logical or for bool arrays)."""
    s = SUPERSAMPLE
    return functools.reduce(np.add, [x[i::s, j::s] for i in range(s) for j in range(s)])


def _audio(rng, label, size, material, snr_db):
    """Modal-synthesis impact sound of the main object with white noise at snr_db."""
    t = np.arange(AUDIO_LENGTH, dtype=np.float32) / np.float32(AUDIO_SAMPLE_RATE)
    ratios = np.asarray(_MODE_RATIOS[label], np.float32)
    freqs = (_PITCH_HZ / size * ratios * rng.uniform(0.985, 1.015, ratios.size)).astype(np.float32)
    amps = (ratios ** -0.5 * rng.lognormal(0.0, 0.4, ratios.size)).astype(np.float32)
    decay = _DECAY_S[material] * ratios ** -0.5 * rng.uniform(0.8, 1.25, ratios.size)
    decay = decay.astype(np.float32)
    onset = np.float32(rng.uniform(0.0, 0.03))
    tt = np.maximum(t - onset, 0.0)
    cycles = (freqs[:, None] * tt) % 1.0
    envelope = np.exp(-np.minimum(tt / decay[:, None], 20.0))  # floor avoids underflow
    modes = envelope * np.sin(np.float32(2 * np.pi) * cycles)
    click = rng.normal(size=t.size).astype(np.float32) * np.exp(-np.minimum(tt / 0.002, 20.0))
    wave = amps @ modes + np.float32(0.3) * amps.max() * click * (t >= onset)
    wave /= np.abs(wave).max()
    sigma = np.sqrt(np.mean(wave ** 2)) * np.float32(10 ** (-snr_db / 20))
    wave += sigma * rng.normal(size=t.size).astype(np.float32)
    return wave / max(np.float32(1.0), np.abs(wave).max())


def _random_light(rng):
    """Unit direction towards a light on the camera side, and an ambient level."""
    direction = np.array([*rng.uniform(-0.8, 0.8, 2), -rng.uniform(0.5, 1.2)])
    ambient = np.float32(rng.uniform(0.15, 0.3))
    return (direction / np.linalg.norm(direction)).astype(np.float32), ambient


def _image(rng, colour, hit):
    """Objects over a random background, block-averaged, plus pixel noise, as uint8."""
    image = np.where(hit[..., None], colour, _background(rng, len(hit)))
    image = _block_sum(image) / SUPERSAMPLE ** 2
    image += np.float32(rng.uniform(0.0, 0.03)) * rng.normal(size=image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _depth(rng, depth, hit, noise):
    """Mean hit depth of pixels at least half covered, else DEPTH_FAR, plus object noise."""
    hits = _block_sum(hit.astype(np.uint8))
    mean = _block_sum(np.where(hit, depth, 0.0)) / np.maximum(hits, 1)
    mean += noise * (DEPTH_FAR - DEPTH_NEAR) * rng.normal(size=mean.shape)
    mean = np.clip(mean, DEPTH_NEAR, DEPTH_FAR - 1e-3)
    return np.where(hits * 2 >= SUPERSAMPLE ** 2, mean, DEPTH_FAR).astype(np.float32)


def render_scene(rng: np.random.Generator, resolution: int = 32, *, sketch_dropout: float = 0.15,
                 depth_noise: float = 0.0, audio_snr_db: float = 10.0,
                 distractors: bool = True, typical_colour: float = TYPICAL_COLOUR) -> dict:
    """Renders one random scene; see the module docstring for the returned fields.

    ``depth_noise`` is the std of Gaussian noise added to object pixels of the depth
    map only, relative to ``DEPTH_FAR - DEPTH_NEAR``. Each modality draws from its
    own child generator, so these knobs change only their own output; colour (and
    ``typical_colour``) is drawn after everything else and touches the image only.
    """
    g_main, g_dist, g_scene, g_sketch, g_audio, g_depth = rng.spawn(6)
    label = int(g_main.integers(NUM_CLASSES))
    main = _random_object(g_main, label, (0.8, 1.2), (3.4, 4.4), 0.3, typical_colour)
    objects = [main] + (_random_distractors(g_dist, main) if distractors else [])
    n = resolution * SUPERSAMPLE
    colour, depth, ident, normal = _cast(objects, _camera_dirs(n), _random_light(g_scene))
    colour, depth, ident, normal = (colour.reshape(n, n, 3), depth.reshape(n, n),
                                    ident.reshape(n, n), normal.reshape(n, n, 3))
    sketch = _block_sum(_sketch(g_sketch, ident, depth, normal, sketch_dropout))
    main_px = _block_sum((ident == 0).astype(np.uint8)) * 2 >= SUPERSAMPLE ** 2
    return {
        'image': _image(g_scene, colour, ident >= 0),
        'depth': _depth(g_depth, depth, ident >= 0, depth_noise),
        'sketch': sketch.astype(np.uint8) * np.uint8(255),
        'mask': main_px.astype(np.uint8) * np.uint8(label + 1),
        'audio': _audio(g_audio, label, main['scale'], main['material'], audio_snr_db),
        'label': label,
    }


def render_fields(task: tuple) -> dict:
    """The `fields` of scene `index` of `split`, for `task` = (seed, split, index, resolution,
    fields): one work item of a process pool (this module imports only numpy)."""
    seed, split, index, resolution, fields = task
    scene = render_scene(scene_rng(seed, split, index), resolution)
    return {k: scene[k] for k in fields}
