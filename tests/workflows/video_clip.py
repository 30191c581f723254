"""A tiny test clip (moving colour ramps + a tone), and what a video file holds; run with ComfyUI's Python (PyAV).

    python video_clip.py make OUT.mp4 --frames 8 --size 96x54 --fps 12
    python video_clip.py probe FILE      -> JSON: frames, sizes of every frame, fps, audio stream and its length

PyAV (``av``) is in ComfyUI's requirements, not in ours: the real-ComfyUI tests run this with ComfyUI's venv.
"""
from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction

import av
import numpy as np

AUDIO_RATE = 44100


def make(path: str, frames: int, width: int, height: int, fps: int) -> None:
    with av.open(path, mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(x * 255 // width + 16 * i) % 256, (y * 255 // height) % 256,
                            np.full_like(x, (40 * i) % 256)], axis=-1).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = int(AUDIO_RATE * frames / fps)
        tone = (0.2 * np.sin(2 * math.pi * 440 * np.arange(samples) / AUDIO_RATE)).astype(np.float32)
        frame_size = audio.codec_context.frame_size or 1024
        for start in range(0, samples, frame_size):
            chunk = tone[start:start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def probe(path: str) -> dict:
    with av.open(path) as container:
        video = container.streams.video[0]
        sizes = [[f.width, f.height] for f in container.decode(video=0)]
        fps = float(video.average_rate) if video.average_rate else None
    with av.open(path) as container:
        audio_streams = list(container.streams.audio)
        audio_seconds = None
        if audio_streams:
            samples = sum(f.samples for f in container.decode(audio=0))
            audio_seconds = samples / audio_streams[0].rate
    return {"frames": len(sizes), "sizes": sizes, "fps": fps, "audio": bool(audio_streams),
            "audio_seconds": audio_seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--frames", type=int, default=8)
    m.add_argument("--size", default="96x54")
    m.add_argument("--fps", type=int, default=12)
    p = sub.add_parser("probe")
    p.add_argument("file")
    args = parser.parse_args()
    if args.command == "make":
        width, height = (int(v) for v in args.size.split("x"))
        make(args.out, args.frames, width, height, args.fps)
    else:
        print(json.dumps(probe(args.file)))


if __name__ == "__main__":
    main()
