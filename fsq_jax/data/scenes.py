"""Procedural scenes: the embedded default dataset, deterministic in (seed, split, index).

Every task trains on these on a laptop CPU, so they are cheap to render (vectorised numpy ray
casting over small bounding boxes), look like simple real scenes (a backdrop, a tiled floor, shaded
objects with soft shadows) and carry exact per-pixel ground truth: depth, panoptic maps and a label.

Scene model (all lengths in metres):

* A pinhole camera at height `CAMERA_HEIGHT` looks along +Z, pitched down by `PITCH`, with the
  principal point at the image centre and a focal length of `FOCAL * image_size` pixels. The camera
  model is independent of the resolution, so one (seed, split, index) is the same scene at 32, 64,
  128 or 256 pixels.
* The backdrop ("sky", the vertical plane z = `BACKDROP_DEPTH`) and the ground plane (y = 0) are
  the two stuff classes. The floor is tiled and fades into the backdrop colour with distance.
* `min_objects` to `max_objects` (default 1 to 4) objects stand on the ground without touching
  each other (an object that finds no free spot in a few tries is left out). An object class is a
  shape (sphere, cube, cylinder, cone) times a material family: `rubber` (matte, warm hues: red to
  yellow), `plastic` (glossy with a white highlight, cool hues: green to violet), `metal` (silver,
  gold or copper, mirror-like reflection of sky and floor). Class id = 3 * shape + material.
* Depth is the z-depth (distance along the optical axis) of the first surface hit by the ray through
  each pixel centre, so it is exact per pixel; the composite is a per-pixel z-buffer, so nearer
  surfaces always occlude farther ones in `image`, `depth` and the panoptic maps alike.

Keys of an example: `image` uint8 [S, S, 3]; `label` int32 [] = class of the object with the
largest visible pixel area (ties, and the corner case of no object covering any pixel centre, go to
the nearest object); `depth` float32 [S, S]; `panoptic_semantic` int32 [S, S] (thing classes 0..11
as the label, `SKY` = 12, `GROUND` = 13); `panoptic_instance` int32 [S, S] (objects numbered 1..n
by the distance of their axis, nearest first; 0 for stuff); `gray` uint8 [S, S, 1] (BT.601
luminance of `image`). Splits draw from disjoint random streams: (seed, split, index) keys a
counter-based hash, so any scene is rendered directly, without generating the ones before it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

SHAPES = ("sphere", "cube", "cylinder", "cone")
MATERIALS = ("rubber", "plastic", "metal")
THING_NAMES = tuple(f"{material} {shape}" for shape in SHAPES for material in MATERIALS)
NUM_CLASSES = len(THING_NAMES)  # 12 object classes, the `label` range
SKY = NUM_CLASSES  # semantic id of the backdrop
GROUND = NUM_CLASSES + 1  # semantic id of the floor
SEMANTIC_NAMES = (*THING_NAMES, "sky", "ground")
IS_THING = tuple([True] * NUM_CLASSES + [False, False])

SPLITS = {"train": 0, "validation": 1, "test": 2}

CAMERA_HEIGHT = 2.0
PITCH = math.radians(14.0)  # the camera looks down by this angle
FOCAL = 1.1  # focal length in units of the image size
BACKDROP_DEPTH = 14.0  # world z of the backdrop plane
MIN_DEPTH, MAX_DEPTH = 3.2, 7.5  # object centre world z range
MIN_RADIUS, MAX_RADIUS = 0.35, 0.6
TILE = 0.7  # floor tile size

_PLACEMENT_TRIES = 4
_SCENE_UNIFORMS = 12
_OBJECT_UNIFORMS = 8 + 2 * _PLACEMENT_TRIES

# (top colour, horizon colour) of the backdrop palettes: day, dusk, overcast, indoor wall.
_BACKDROPS = np.array(
    [
        [[0.30, 0.52, 0.85], [0.75, 0.86, 0.95]],
        [[0.35, 0.30, 0.55], [0.98, 0.70, 0.45]],
        [[0.55, 0.58, 0.62], [0.82, 0.83, 0.84]],
        [[0.72, 0.66, 0.56], [0.90, 0.86, 0.78]],
    ],
    dtype=np.float32,
)
# Floor base colours: grass, sand, concrete, wood.
_FLOORS = np.array(
    [[0.32, 0.50, 0.22], [0.76, 0.66, 0.46], [0.52, 0.52, 0.50], [0.55, 0.38, 0.22]],
    dtype=np.float32,
)
_METALS = ((0.86, 0.87, 0.90), (1.00, 0.80, 0.38), (0.95, 0.58, 0.40))  # silver, gold, copper


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object standing on the ground; `x`, `z` locate its vertical axis, `radius` its width."""

    shape: str
    material: str
    class_id: int
    x: float
    z: float
    radius: float
    height: float
    yaw: float  # rotation about the vertical axis (cubes)
    colour: tuple[float, float, float]  # RGB albedo in [0, 1]


@dataclasses.dataclass(frozen=True)
class SceneLayout:
    """Everything random about a scene; `objects` are sorted nearest first (instance id = i + 1)."""

    backdrop_top: tuple[float, float, float]
    backdrop_horizon: tuple[float, float, float]
    floor: tuple[float, float, float]
    tile_contrast: float
    light: tuple[float, float, float]  # unit vector towards the light
    objects: tuple[SceneObject, ...]


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    i = math.floor(hue * 6.0) % 6
    f = hue * 6.0 - math.floor(hue * 6.0)
    p = value * (1 - saturation)
    q = value * (1 - f * saturation)
    t = value * (1 - (1 - f) * saturation)
    sectors = ((value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value),
               (value, p, q))
    return sectors[i]


_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """SplitMix64 finaliser on a Python int (a bijection of 64-bit integers)."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)


def _uniforms(seed: int, split: str, index: int, count: int) -> list[float]:
    """`count` uniforms in [0, 1), a pure function of (seed, split, index): counter-based hashing.

    A SplitMix64 stream keyed by (seed, split, index); splits use disjoint key ranges, so their
    scenes come from different streams. Cheaper than constructing a numpy Generator per scene.
    """
    if split not in SPLITS:
        raise ValueError(f"scenes split {split!r}: must be one of {', '.join(SPLITS)}")
    if not 0 <= seed < 2**32 or not 0 <= index < 2**48:
        raise ValueError(f"scenes seed ({seed}) must be in [0, 2^32) and index ({index}) in "
                         "[0, 2^48)")
    key = _mix64(_mix64(seed + 0x9E3779B97F4A7C15) ^ ((SPLITS[split] << 48) | index))
    counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = counters + np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)).tolist()


def sample_layout(
    seed: int, split: str, index: int, min_objects: int = 1, max_objects: int = 4
) -> SceneLayout:
    """The random content of scene (seed, split, index), independent of the resolution."""
    if not 1 <= min_objects <= max_objects:
        raise ValueError(
            f"scenes object counts: need 1 <= min_objects ({min_objects}) <= max_objects "
            f"({max_objects})"
        )
    u = _uniforms(seed, split, index, _SCENE_UNIFORMS + max_objects * _OBJECT_UNIFORMS)
    backdrop = (_BACKDROPS[int(u[0] * len(_BACKDROPS))] * (0.9 + 0.2 * u[1])).clip(0, 1).tolist()
    floor = (_FLOORS[int(u[2] * len(_FLOORS))] * (0.85 + 0.3 * u[3])).tolist()
    elevation = math.radians(35 + 30 * u[4])
    azimuth = math.radians(-70 + 140 * u[5])
    light = (
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
        -math.cos(elevation) * math.cos(azimuth),
    )
    count = min_objects + int(u[6] * (max_objects - min_objects + 1))
    objects: list[SceneObject] = []
    for k in range(count):
        v = u[_SCENE_UNIFORMS + k * _OBJECT_UNIFORMS : _SCENE_UNIFORMS + (k + 1) * _OBJECT_UNIFORMS]
        shape_id, material_id = int(v[0] * len(SHAPES)), int(v[1] * len(MATERIALS))
        shape, material = SHAPES[shape_id], MATERIALS[material_id]
        radius = MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * v[2]
        height = {
            "sphere": 2 * radius,
            "cube": 2 * radius * (0.75 + 0.25 * v[3]),
            "cylinder": radius * (1.4 + 1.0 * v[3]),
            "cone": radius * (1.8 + 1.0 * v[3]),
        }[shape]
        if shape == "cube":
            radius *= 0.8  # half width; the diagonal then spans about the same as a sphere
        if material == "rubber":
            colour = _hsv_to_rgb(-0.02 + 0.18 * v[4], 0.65 + 0.3 * v[5], 0.65 + 0.3 * v[6])
        elif material == "plastic":
            colour = _hsv_to_rgb(0.30 + 0.48 * v[4], 0.55 + 0.35 * v[5], 0.55 + 0.35 * v[6])
        else:
            colour = _METALS[int(v[4] * len(_METALS))]
        yaw = v[7] * math.pi / 2
        for t in range(_PLACEMENT_TRIES):
            z = MIN_DEPTH + (MAX_DEPTH - MIN_DEPTH) * v[8 + 2 * t]
            half_view = z * math.cos(PITCH) * 0.5 / FOCAL - radius * 1.2
            x = half_view * (2 * v[9 + 2 * t] - 1)
            if all(
                (x - o.x) ** 2 + (z - o.z) ** 2 > (1.5 * (radius + o.radius)) ** 2 for o in objects
            ):
                objects.append(
                    SceneObject(shape, material, 3 * shape_id + material_id, x, z, radius, height,
                                yaw, colour)
                )
                break
    objects.sort(key=lambda o: o.z)
    return SceneLayout(
        backdrop_top=tuple(backdrop[0]),
        backdrop_horizon=tuple(backdrop[1]),
        floor=tuple(floor),
        tile_contrast=0.05 + 0.25 * u[7],
        light=light,
        objects=tuple(objects),
    )


class _Camera:
    """Precomputed per-resolution pixel grids: ray directions, floor depth and texture, stuff maps.

    The camera at O = (0, CAMERA_HEIGHT, 0) is pitched down by PITCH; the ray through pixel
    (row, col) is d = (dx[col], dy[row], dz[row]) in world coordinates, scaled so that O + t d has
    z-depth t.
    """

    def __init__(self, image_size: int):
        size = image_size
        self.size = size
        focal = FOCAL * size
        self.focal = focal
        self.centre = size / 2.0
        centres = np.arange(size, dtype=np.float64) + 0.5
        slope = (centres - self.centre) / focal  # image-plane offsets: right, and down
        sin, cos = math.sin(PITCH), math.cos(PITCH)
        self.dx = slope
        self.dy = -slope * cos - sin
        self.dz = -slope * sin + cos
        with np.errstate(divide="ignore"):
            floor_t = np.where(self.dy < 0, CAMERA_HEIGHT / -self.dy, np.inf)
        floor_world_z = floor_t * self.dz
        # First floor row: the floor meets the backdrop (the plane z = BACKDROP_DEPTH) there.
        self.floor_row = int(np.argmax(floor_world_z < BACKDROP_DEPTH))
        rows = slice(self.floor_row, size)
        t = floor_t[rows][:, None] * np.ones((1, size))
        x = self.dx[None, :] * t
        z = self.dz[rows][:, None] * t
        self.floor_z, self.floor_x = z.astype(np.float32), x.astype(np.float32)
        depth = np.empty((size, size), dtype=np.float32)
        depth[:] = (BACKDROP_DEPTH / self.dz)[:, None]
        depth[rows] = t
        self.depth = depth
        semantic = np.full((size, size), SKY, dtype=np.int32)
        semantic[rows] = GROUND
        self.semantic = semantic
        # Tiles fade out with distance (they would alias to noise).
        tiles = (np.floor(x / TILE) + np.floor(z / TILE)) % 2 - 0.5
        gradient = np.linspace(0.0, 1.0, self.floor_row) ** 1.5
        # Background colour = features @ [top; horizon; floor; tile_contrast * floor]:
        # the backdrop blends top -> horizon colour, the tiled floor fades into horizon haze.
        haze = (z / BACKDROP_DEPTH) ** 2
        features = np.zeros((size, size, 4))
        features[: self.floor_row, :, 0] = (1.0 - gradient)[:, None]
        features[: self.floor_row, :, 1] = gradient[:, None]
        features[rows, :, 1] = haze
        features[rows, :, 2] = 1.0 - haze
        features[rows, :, 3] = tiles * np.exp(-z / 6.0) * (1.0 - haze)
        self.background_features = features.reshape(size * size, 4).astype(np.float32)
        self.forward = (0.0, -sin, cos)
        self.up = (0.0, cos, sin)
        for array in vars(self).values():
            if isinstance(array, np.ndarray):
                array.flags.writeable = False


@functools.lru_cache(maxsize=8)
def _camera(image_size: int) -> _Camera:
    return _Camera(image_size)


def _pixel_box(
    camera: _Camera, points: list[tuple[float, float, float]], first_row: int
) -> tuple[int, int, int, int] | None:
    """Pixel box (row0, row1, col0, col1) around the projections of world points, None if empty.

    Every point must lie in front of the camera. Plain Python: a handful of points per object is
    cheaper this way than through numpy.
    """
    _, fy, fz = camera.forward
    _, uy, uz = camera.up
    focal, centre, size = camera.focal, camera.centre, camera.size
    cols, rows = [], []
    for x, y, z in points:
        y -= CAMERA_HEIGHT
        inverse_depth = focal / (y * fy + z * fz)
        cols.append(x * inverse_depth)
        rows.append((y * uy + z * uz) * inverse_depth)
    r0 = max(int(min(max(centre - max(rows), -1.0), size + 1.0)), first_row)
    r1 = min(int(min(max(centre - min(rows), -1.0), size + 1.0)) + 2, size)
    c0 = max(int(min(max(centre + min(cols), -1.0), size + 1.0)), 0)
    c1 = min(int(min(max(centre + max(cols), -1.0), size + 1.0)) + 2, size)
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _object_box(camera: _Camera, obj: SceneObject) -> tuple[int, int, int, int] | None:
    """Pixel box containing the object's projection (the corners of its axis-aligned bounds)."""
    reach = obj.radius * (1.5 if obj.shape == "cube" else 1.0)
    corners = [
        (obj.x + sx * reach, y, obj.z + sz * reach)
        for sx in (-1.0, 1.0) for y in (0.0, obj.height) for sz in (-1.0, 1.0)
    ]
    return _pixel_box(camera, corners, 0)


def _shadows(camera: _Camera, layout: SceneLayout, image: np.ndarray) -> None:
    """Darkens the floor of `image` [S, S, 3] in place with each object's soft contact shadow.

    A shadow is a Gaussian blob on the ground under the object, shifted away from the light.
    """
    lx, ly, lz = layout.light
    f0 = camera.floor_row
    for obj in layout.objects:
        cx = obj.x - lx / ly * obj.height * 0.35
        cz = obj.z - lz / ly * obj.height * 0.35
        spread = 1.4 * obj.radius**2
        reach = 2.2 * math.sqrt(spread)  # beyond this a shadow darkens by < 0.5%
        corners = [(cx + sx * reach, 0.0, cz + sz * reach) for sx in (-1, 1) for sz in (-1, 1)]
        box = _pixel_box(camera, corners, f0)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        dx = camera.floor_x[r0 - f0 : r1 - f0, c0:c1] - np.float32(cx)
        dz = camera.floor_z[r0 - f0 : r1 - f0, c0:c1] - np.float32(cz)
        dx *= dx
        dz *= dz
        dx += dz
        dx *= np.float32(-1.0 / spread)
        darkening = np.exp(dx, out=dx)
        darkening *= np.float32(-0.55)
        darkening += np.float32(1.0)
        image[r0:r1, c0:c1] *= darkening[..., None]


def _intersect(
    obj: SceneObject, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ray casting: z-depth of the first hit (inf on a miss) and the unit surface normal.

    Rays start at (0, CAMERA_HEIGHT, 0) with direction (dx, dy, dz): dx [1, w], dy and dz [h, 1].
    Returns t, nx, ny, nz, each [h, w].
    """
    x0, z0, r, h = obj.x, obj.z, obj.radius, obj.height
    q = CAMERA_HEIGHT
    inf = np.inf
    if obj.shape == "sphere":
        # |O + t d - C|^2 = r^2 with C = (x0, r, z0); b is half the linear coefficient.
        oy = q - r
        a = dx * dx + (dy * dy + dz * dz)
        b = -dx * x0 + (dy * oy - dz * z0)
        c = x0 * x0 + oy * oy + z0 * z0 - r * r
        disc = b * b - a * c
        t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, inf)
        nx, ny, nz = (dx * t - x0) / r, (q + dy * t - r) / r, (dz * t - z0) / r
        return t, nx, ny, nz
    if obj.shape == "cylinder":
        a = dx * dx + dz * dz
        b = -(dx * x0 + dz * z0)
        c = x0 * x0 + z0 * z0 - r * r
        disc = b * b - a * c
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
        y_side = q + dy * t_side
        side = (disc >= 0) & (y_side >= 0) & (y_side <= h)
        t_top = (h - q) / dy
        top = (dy < 0) & ((dx * t_top - x0) ** 2 + (dz * t_top - z0) ** 2 <= r * r)
        top = top & (~side | (t_top < t_side))
        t = np.where(top, t_top, np.where(side, t_side, inf))
        nx = np.where(top, 0.0, (dx * t - x0) / r)
        nz = np.where(top, 0.0, (dz * t - z0) / r)
        ny = np.where(top, 1.0, 0.0) + 0.0 * t
        return t, nx, ny, nz
    if obj.shape == "cone":
        # (x - x0)^2 + (z - z0)^2 = k^2 (h - y)^2 for 0 <= y <= h, apex at height h.
        k2 = (r / h) ** 2
        p = q - h
        a = dx * dx + (dz * dz - k2 * dy * dy)
        b = -dx * x0 - (dz * z0 + k2 * dy * p)
        c = x0 * x0 + z0 * z0 - k2 * p * p
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0))
        best = np.full(np.broadcast_shapes(dx.shape, dy.shape), inf)
        for t_root in ((-b - root) / a, (-b + root) / a):
            y = q + dy * t_root
            ok = (disc >= 0) & (t_root > 0) & (y >= 0) & (y <= h) & (t_root < best)
            best = np.where(ok, t_root, best)
        t = best
        gx, gz = dx * t - x0, dz * t - z0
        gy = k2 * (h - (q + dy * t))
        norm = np.sqrt(gx * gx + gy * gy + gz * gz) + 1e-12
        return t, gx / norm, gy / norm, gz / norm
    if obj.shape == "cube":
        # Slab test in the cube's frame (rotated by yaw about the vertical axis).
        cos, sin = math.cos(obj.yaw), math.sin(obj.yaw)
        ox, oz = -x0, -z0
        bx_o, bz_o = cos * ox + sin * oz, -sin * ox + cos * oz
        bx_d, bz_d = cos * dx + sin * dz, -sin * dx + cos * dz
        tx1, tx2 = (-r - bx_o) / bx_d, (r - bx_o) / bx_d
        tz1, tz2 = (-r - bz_o) / bz_d, (r - bz_o) / bz_d
        ty1, ty2 = (0.0 - q) / dy, (h - q) / dy
        near_x, near_z, near_y = np.minimum(tx1, tx2), np.minimum(tz1, tz2), np.minimum(ty1, ty2)
        far = np.minimum(np.maximum(tx1, tx2), np.maximum(tz1, tz2))
        far = np.minimum(far, np.maximum(ty1, ty2))
        near = np.maximum(np.maximum(near_x, near_z), near_y)
        hit = (near <= far) & (near > 0)
        t = np.where(hit, near, inf)
        on_x, on_z = near == near_x, near == near_z
        on_y = ~on_x & ~on_z
        lx = np.where(on_x, -np.sign(bx_d), 0.0)
        lz = np.where(on_z & ~on_x, -np.sign(bz_d), 0.0)
        nx = cos * lx - sin * lz
        nz = sin * lx + cos * lz
        ny = np.where(on_y, 1.0, 0.0) + 0.0 * nx
        return t, nx, ny, nz
    raise ValueError(f"unknown shape {obj.shape!r}")


def _shade(
    obj: SceneObject,
    layout: SceneLayout,
    normal: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """Colour of the surface points [h, w, 3] for the object's material (RGB, unclipped)."""
    nx, ny, nz = normal
    lx, ly, lz = layout.light
    diffuse = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
    ambient = 0.28 + 0.14 * ny  # sky light from above
    albedo = np.asarray(obj.colour, dtype=np.float32)
    if obj.material == "rubber":
        return (ambient + 0.72 * diffuse)[..., None] * albedo
    # Specular term with the Blinn half vector; the view vector points from the object's centre
    # to the camera (objects are small and far enough for that to be a good approximation).
    vx, vy, vz = -obj.x, CAMERA_HEIGHT - obj.height / 2, -obj.z
    vn = math.sqrt(vx * vx + vy * vy + vz * vz)
    vx, vy, vz = vx / vn, vy / vn, vz / vn
    hx, hy, hz = lx + vx, ly + vy, lz + vz
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.maximum(nx * (hx / hn) + ny * (hy / hn) + nz * (hz / hn), 0.0)
    if obj.material == "plastic":
        highlight = spec**40
        colour = (ambient + 0.65 * diffuse)[..., None] * albedo
        return colour + 0.75 * highlight[..., None]
    # Metal: mirror reflection of a sky / floor environment, tinted, plus a sharp highlight.
    # y of the reflected view vector: > 0 reflects the sky, < 0 the floor (soft transition).
    reflected_up = 2 * (nx * vx + ny * vy + nz * vz) * ny - vy
    sky_weight = np.clip(reflected_up * 3.0 + 0.5, 0.0, 1.0)
    sky = np.asarray(layout.backdrop_horizon, dtype=np.float32)
    floor = np.asarray(layout.floor, dtype=np.float32) * 0.6
    brightness = (0.55 + 0.45 * diffuse) + 0.9 * spec**60  # tint scale, then the highlight
    colour = floor + sky_weight[..., None] * (sky - floor)
    colour *= albedo
    colour *= brightness[..., None]
    return colour


def render_layout(layout: SceneLayout, image_size: int) -> dict[str, np.ndarray]:
    """Renders a layout at `image_size` pixels: the example dict described in the module doc."""
    if not isinstance(image_size, int | np.integer) or image_size < 8:
        raise ValueError(f"scenes image_size = {image_size!r}: must be an integer >= 8")
    camera = _camera(int(image_size))
    size = camera.size
    # Colours are composed in [0, 255] floats and truncated to uint8 at the end.
    palette = np.array(
        [layout.backdrop_top, layout.backdrop_horizon, layout.floor,
         [layout.tile_contrast * c for c in layout.floor]],
        dtype=np.float32,
    )
    palette *= 255.0
    image = (camera.background_features @ palette).reshape(size, size, 3)
    _shadows(camera, layout, image)
    depth = camera.depth.copy()
    semantic = camera.semantic.copy()
    instance = np.zeros((size, size), dtype=np.int32)
    drawn = []
    # Rays that miss an object give inf / nan in its box; they are masked out by `visible`.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for number, obj in enumerate(layout.objects, start=1):
            box = _object_box(camera, obj)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            dx, dy, dz = camera.dx[None, c0:c1], camera.dy[r0:r1, None], camera.dz[r0:r1, None]
            t, nx, ny, nz = _intersect(obj, dx, dy, dz)
            depth_box = depth[r0:r1, c0:c1]
            visible = t < depth_box
            if not visible.any():
                continue
            colour = _shade(obj, layout, (nx, ny, nz))
            colour *= 255.0
            np.copyto(depth_box, t, where=visible, casting="unsafe")
            np.copyto(image[r0:r1, c0:c1], colour, where=visible[..., None], casting="unsafe")
            np.copyto(semantic[r0:r1, c0:c1], obj.class_id, where=visible)
            np.copyto(instance[r0:r1, c0:c1], number, where=visible)
            drawn.append((number, box))
    rgb = np.clip(image, 0.0, 255.0, out=image).astype(np.uint8)
    return {
        "image": rgb,
        "label": np.int32(_label(layout, instance, drawn)),
        "depth": depth,
        "panoptic_semantic": semantic,
        "panoptic_instance": instance,
        "gray": luminance(rgb),
    }


def _label(layout: SceneLayout, instance: np.ndarray, drawn: list[tuple[int, tuple]]) -> int:
    """Class of the object with the largest visible area; ties and no visible object: nearest."""
    if not layout.objects:
        raise ValueError("a scene needs at least one object")
    best_number, best_area = 1, 0
    for number, (r0, r1, c0, c1) in drawn:  # an object's pixels all lie in its box
        area = int(np.count_nonzero(instance[r0:r1, c0:c1] == number))
        if area > best_area:
            best_number, best_area = number, area
    return layout.objects[best_number - 1].class_id


def luminance(image: np.ndarray) -> np.ndarray:
    """BT.601 luma (299 R + 587 G + 114 B + 500) // 1000 of uint8 RGB [..., 3]: uint8 [..., 1]."""
    if image.dtype != np.uint8 or image.shape[-1:] != (3,):
        raise ValueError(f"luminance needs uint8 RGB [..., 3], got {image.dtype} {image.shape}")
    luma = image[..., 0] * np.uint32(299)
    luma += image[..., 1] * np.uint32(587)
    luma += image[..., 2] * np.uint32(114)
    luma += 500
    luma //= 1000
    return luma.astype(np.uint8)[..., None]


def render_scene(
    seed: int,
    split: str,
    index: int,
    image_size: int,
    *,
    min_objects: int = 1,
    max_objects: int = 4,
) -> dict[str, np.ndarray]:
    """Scene `index` of `split` under `seed` at `image_size` pixels (keys: see module doc)."""
    return render_layout(sample_layout(seed, split, index, min_objects, max_objects), image_size)


class SceneSource:
    """Random-access source of `num_examples` procedural scenes of one split (grain-compatible)."""

    def __init__(
        self,
        split: str,
        num_examples: int,
        image_size: int,
        seed: int = 0,
        *,
        min_objects: int = 1,
        max_objects: int = 4,
    ):
        sample_layout(seed, split, 0, min_objects, max_objects)  # validates object counts
        if num_examples < 1:
            raise ValueError(f"scenes split {split!r} needs >= 1 example, got {num_examples}")
        self.split, self.seed, self.image_size = split, seed, image_size
        self.min_objects, self.max_objects = min_objects, max_objects
        self._len = num_examples
        _camera(image_size)  # validates early and warms the grids

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"scene index {index} out of range [0, {self._len})")
        return render_scene(
            self.seed, self.split, index, self.image_size,
            min_objects=self.min_objects, max_objects=self.max_objects,
        )

    def __repr__(self) -> str:
        return (f"SceneSource(split={self.split!r}, num_examples={self._len}, "
                f"image_size={self.image_size}, seed={self.seed})")
