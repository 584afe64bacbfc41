"""Rendering a zoom stack: one PNG per level and a continuous zoom (GIF; MP4 with imageio-ffmpeg).

A frame at zoom position t (0 = the widest level, n - 1 = the deepest) shows level i = floor(t) magnified
by factor ** (t - i) around its centre; the region that deeper levels cover is drawn from them (the
paper's rendering: the centre of every frame comes from the deepest level that covers it), so detail
appears where the camera moves in instead of upsampling blur; each deeper level fades in over the
outer eighth of its side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from nextscale.images import to_pil
from nextscale.sampling.outputs import slugify

FRAME_MILLISECONDS = 60
HOLD_MILLISECONDS = 600


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, 3, h, w) -> (b, 3, size, size), antialiased when shrinking."""
    shrinking = size < images.shape[-1]
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=shrinking)


def render_frame(levels: Sequence[torch.Tensor], factor: int, position: float, frame_size: int) -> torch.Tensor:
    """The zoom frame at `position` in [0, len(levels) - 1]: levels (b, 3, S, S), widest first -> (b, 3, F, F)."""
    index = min(int(position), len(levels) - 1)
    magnification = factor ** (position - index)
    enlarged = resize(levels[index].float(), round(frame_size * magnification))
    start = (enlarged.shape[-1] - frame_size) // 2
    frame = enlarged[..., start : start + frame_size, start : start + frame_size].clone()
    for depth, level in enumerate(levels[index + 1 :], start=1):
        side = round(frame_size * magnification / factor**depth)
        if side < 2:
            break
        offset = (frame_size - side) // 2
        region = frame[..., offset : offset + side, offset : offset + side]
        weight = edge_ramp(side, max(side // 8, 1)).to(frame)
        frame[..., offset : offset + side, offset : offset + side] = weight * resize(level.float(), side) + (
            1 - weight) * region
    return frame.clamp(-1, 1)


def edge_ramp(side: int, width: int) -> torch.Tensor:
    """(side, side) weights: 1 inside, falling linearly to 0 over `width` pixels at the border, so that
    the sharper deeper level fades into the magnified (softer) level around it."""
    distance = torch.minimum(torch.arange(side), torch.arange(side).flip(0)).float()  # to the nearest edge
    ramp = ((distance + 0.5) / width).clamp(max=1.0)
    return torch.minimum(ramp[:, None], ramp[None, :])


def zoom_frames(levels: Sequence[torch.Tensor], factor: int, frames_per_level: int = 12,
                frame_size: int = 256) -> list[torch.Tensor]:
    """Frames from the widest level to the deepest, `frames_per_level` per step: [(b, 3, F, F), ...]."""
    steps = (len(levels) - 1) * frames_per_level
    return [render_frame(levels, factor, step / frames_per_level, frame_size) for step in range(steps + 1)]


def save_zoom(levels: Sequence[torch.Tensor], prompts: Sequence[str], factor: int, directory: Path, *,
              zoom_out: bool = False, frames_per_level: int = 12, frame_size: int = 256,
              stem: str = "zoom") -> list[Path]:
    """Write `<stem>-level<i>-<prompt>.png` per level (widest first) and per chain, `<stem>.gif`, and `<stem>.mp4`
    when imageio-ffmpeg is installed. A zoom out plays from the deepest level outwards. Returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    batch = levels[0].shape[0]
    for index, (level, prompt) in enumerate(zip(levels, prompts)):
        for chain, picture in enumerate(to_pil(level)):
            suffix = f"-{chain}" if batch > 1 else ""
            path = directory / f"{stem}{suffix}-level{index}-{slugify(prompt)}.png"
            picture.save(path)
            written.append(path)
    frames = zoom_frames(levels, factor, frames_per_level, frame_size)
    if zoom_out:
        frames = frames[::-1]
    for chain in range(batch):
        pictures = [to_pil(frame[chain : chain + 1])[0] for frame in frames]
        suffix = f"-{chain}" if batch > 1 else ""
        gif = directory / f"{stem}{suffix}.gif"
        durations = [HOLD_MILLISECONDS] + [FRAME_MILLISECONDS] * (len(pictures) - 2) + [HOLD_MILLISECONDS]
        pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=durations[: len(pictures)], loop=0)
        written.append(gif)
        mp4 = write_mp4(pictures, directory / f"{stem}{suffix}.mp4")
        if mp4 is not None:
            written.append(mp4)
    return written


def write_mp4(pictures: list, path: Path, fps: int = 1000 // FRAME_MILLISECONDS) -> Path | None:
    """An H.264 MP4 of PIL frames through imageio-ffmpeg, or None when it is not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    width, height = pictures[0].size
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=1)
    writer.send(None)
    for picture in pictures:
        writer.send(picture.convert("RGB").tobytes())
    writer.close()
    return path
