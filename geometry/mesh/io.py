"""Mesh writers (and a GLB reader for measuring exports): GLB (glTF 2.0 binary), OBJ + MTL + PNG, PLY with vertex colours; every file written atomically.

The GLB and OBJ writers are hand-written with struct/numpy (a few dozen lines each) rather than trimesh's
exporters, to control exactly what the Khronos glTF-Validator sees (accessor bounds, alignment, buffer-view
targets, sampler, material) and to keep 0 warnings. PLY goes through trimesh. PNG encoding is Pillow.

Frames: the world is z-up with the front on +x (DESIGN.md §3); glTF and game engines are y-up with the front
on +Z, so positions and normals are written as (X, Y, Z) = (y, z, x) of the world (geometry/functional/frames.py:
a rotation, so winding and handedness are kept). OBJ and PLY use the same y-up frame.
1 world unit = 1 metre; nothing is rescaled. Colours are the renderer's display values, i.e. sRGB-encoded,
which is exactly what glTF's baseColorTexture and OBJ's map_Kd expect.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np

from distill3d.files import write_atomic
from geometry.functional.frames import from_y_up, to_y_up
from geometry.mesh.mesh import Mesh

# glTF 2.0 enums (spec §5).
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) float in [0, 1] or uint8 → PNG bytes (8-bit RGB, values stored as given: sRGB)."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_textured(mesh: Mesh, what: str) -> None:
    if mesh.uv is None or mesh.normals is None:
        raise ValueError(
            f"{what} needs a mesh with UVs and normals: unwrap() it and call with_normals() first"
        )


def _unit(normals: np.ndarray) -> np.ndarray:
    n = normals.astype(np.float64)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 1e-8, n / np.maximum(length, 1e-12), np.array([0.0, 0.0, 1.0]))
    return n.astype(np.float32)


def glb_bytes(
    mesh: Mesh, base_color_png: bytes, metallic_roughness_png: bytes | None = None, name: str = "model"
) -> bytes:
    """A self-contained GLB: one node, one primitive (POSITION, NORMAL, TEXCOORD_0, uint32 indices) and a
    metallic-roughness material with an sRGB baseColor PNG (metallic 0, roughness 1 unless a map is given)."""
    _check_textured(mesh, "glb_bytes")
    positions = to_y_up(mesh.vertices)
    normals = to_y_up(_unit(mesh.normals))
    texcoords = np.stack([mesh.uv[:, 0], 1.0 - mesh.uv[:, 1]], 1).astype(np.float32)  # glTF: v points down
    indices = mesh.faces.astype(np.uint32).reshape(-1)

    blob = bytearray()
    views: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        while len(blob) % 4:  # glTF §5.11: accessor data 4-byte aligned
            blob.append(0)
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    accessors = []

    def add_accessor(array: np.ndarray, kind: str, target: int, bounds: bool) -> int:
        comp = _UINT32 if array.dtype == np.uint32 else _FLOAT
        acc = {"bufferView": add_view(array.tobytes(), target), "componentType": comp,
               "count": int(array.shape[0]), "type": kind}  # fmt: skip
        if bounds:  # required for POSITION (glTF §3.7.2.1)
            acc["min"] = array.min(0).astype(float).tolist()
            acc["max"] = array.max(0).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    attributes = {
        "POSITION": add_accessor(positions, "VEC3", _ARRAY_BUFFER, True),
        "NORMAL": add_accessor(normals, "VEC3", _ARRAY_BUFFER, False),
        "TEXCOORD_0": add_accessor(texcoords, "VEC2", _ARRAY_BUFFER, False),
    }
    index_accessor = add_accessor(indices, "SCALAR", _ELEMENT_ARRAY_BUFFER, False)
    images = [{"bufferView": add_view(base_color_png, None), "mimeType": "image/png"}]
    pbr: dict = {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}
    if metallic_roughness_png is not None:
        images.append({"bufferView": add_view(metallic_roughness_png, None), "mimeType": "image/png"})
        pbr.update(metallicRoughnessTexture={"index": 1}, metallicFactor=1.0, roughnessFactor=1.0)
    while len(blob) % 4:
        blob.append(0)

    gltf = {
        "asset": {"version": "2.0", "generator": "distill3d"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [
            {"attributes": attributes, "indices": index_accessor, "material": 0, "mode": 4}]}],
        "materials": [{"name": f"{name}_material", "pbrMetallicRoughness": pbr}],
        "samplers": [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                      "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}],
        "textures": [{"sampler": 0, "source": i} for i in range(len(images))],
        "images": images,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }  # fmt: skip
    json_chunk = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)  # GLB §4.4: JSON chunk padded with spaces
    total = 12 + 8 + len(json_chunk) + 8 + len(blob)
    header = struct.pack("<4sII", b"glTF", 2, total)
    return b"".join([
        header, struct.pack("<I4s", len(json_chunk), b"JSON"), json_chunk,
        struct.pack("<I4s", len(blob), b"BIN\x00"), bytes(blob),
    ])  # fmt: skip


def write_glb(
    path: Path, mesh: Mesh, base_color: np.ndarray, metallic_roughness: np.ndarray | None = None
) -> Path:
    """Write `mesh` with its baked textures ((H, W, 3) in [0, 1], row 0 = v top) as a GLB, atomically."""
    path = Path(path)
    mr = None if metallic_roughness is None else encode_png(metallic_roughness)
    write_atomic(path, glb_bytes(mesh, encode_png(base_color), mr, name=path.stem))
    return path


def write_obj(path: Path, mesh: Mesh, base_color: np.ndarray) -> Path:
    """Write model.obj + model.mtl + model_albedo.png beside it (y-up, like the GLB), each atomically.

    The texture and material are written first so a finished .obj never points at a missing file.
    """
    _check_textured(mesh, "write_obj")
    path = Path(path)
    mtl_name, png_name = f"{path.stem}.mtl", f"{path.stem}_albedo.png"
    write_atomic(path.with_name(png_name), encode_png(base_color))
    mtl = f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nNs 1\nillum 1\nmap_Kd {png_name}\n"
    write_atomic(path.with_name(mtl_name), mtl.encode())

    def block(prefix: str, rows: np.ndarray) -> str:
        fmt = " ".join(["%.6f"] * rows.shape[1])
        buf = io.StringIO()
        np.savetxt(buf, rows, fmt=f"{prefix} {fmt}")
        return buf.getvalue()

    f = mesh.faces + 1  # OBJ indices are 1-based; v, vt and vn share the index (seams are split already)
    faces = io.StringIO()
    np.savetxt(faces, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    text = "".join([
        "# distill3d export: y-up, 1 unit = 1 metre\n", f"mtllib {mtl_name}\n",
        block("v", to_y_up(mesh.vertices)), block("vt", mesh.uv), block("vn", to_y_up(_unit(mesh.normals))),
        "usemtl material0\n", faces.getvalue(),
    ])  # fmt: skip
    write_atomic(path, text.encode())
    return path


def write_ply(path: Path, mesh: Mesh, vertex_colors: np.ndarray) -> Path:
    """Binary PLY with per-vertex RGB (vertex_colors (V, 3) in [0, 1]), y-up like the other formats."""
    import trimesh

    colors = (np.clip(vertex_colors, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    tm = trimesh.Trimesh(to_y_up(mesh.vertices), mesh.faces, vertex_colors=colors, process=False)
    write_atomic(Path(path), tm.export(file_type="ply"))
    return Path(path)


def read_glb(path: str | Path) -> tuple[Mesh, np.ndarray]:
    """A textured GLB (ours or any single-mesh one) read back into the world frame (z-up) through trimesh, with
    its base-colour texture (H, W, 3) float32 in [0, 1] — what the accuracy figures of an export are measured on."""
    import trimesh

    loaded = trimesh.load(path, force="mesh", process=False)
    mesh = Mesh(from_y_up(loaded.vertices), loaded.faces, uv=loaded.visual.uv.astype(np.float32))
    rgb = loaded.visual.material.to_simple().image.convert("RGB")
    return mesh, np.asarray(rgb, dtype=np.float32) / 255.0
