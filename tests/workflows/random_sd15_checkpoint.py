"""Write a randomly initialised Stable Diffusion 1.5 checkpoint (fp16 .safetensors).

The end-to-end tests of workflows/GSASR_text_to_image_4K.json run offline, where no
real SD1.5 checkpoint can be downloaded. This script builds one with the usual
"v1-5-pruned-emaonly" key layout (model.diffusion_model.*, first_stage_model.*,
cond_stage_model.transformer.text_model.*) so that ComfyUI's CheckpointLoaderSimple
detects it as SD1.5 and the workflow can run. The images it produces are noise, but
finite: weights are N(0, 1/fan_in), norm weights 1, biases 0, with a fixed seed.

The module shapes come from ComfyUI's own classes (built on the meta device, so
nothing is allocated), hence --comfy must point at a ComfyUI folder.

    python random_sd15_checkpoint.py --comfy /path/to/ComfyUI out.safetensors
"""
import argparse
import json
import math
import os
import sys
import time

import torch

# The SD1.5 UNet as ComfyUI's model detection describes it (see
# comfy/model_detection.py and the SD15 class in comfy/supported_models.py).
SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    context_dim=768, num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
    use_linear_in_transformer=False, legacy=False, adm_in_channels=None,
    use_temporal_attention=False, use_temporal_resblock=False, use_checkpoint=False,
)
# The SD1.x VAE, as comfy/sd.py builds it by default.
SD_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3,
              ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def import_comfy(comfy_dir):
    """Make ComfyUI's `comfy` package importable, with clear errors if it is not there."""
    comfy_dir = os.path.abspath(comfy_dir)
    needed = ["comfy/model_detection.py", "comfy/sd1_clip_config.json",
              "comfy/ldm/modules/diffusionmodules/openaimodel.py"]
    missing = [p for p in needed if not os.path.isfile(os.path.join(comfy_dir, p))]
    if missing:
        sys.exit(f"error: --comfy {comfy_dir} is not a ComfyUI folder (missing {', '.join(missing)})")
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args
    args.cpu = True  # only shapes are needed; never initialise a GPU (or fail without one)
    import comfy.ops, comfy.clip_model, comfy.model_detection, comfy.ldm.models.autoencoder  # noqa: E401
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return comfy_dir, comfy, UNetModel


def sd15_shapes(comfy_dir):
    """{checkpoint key: shape} for SD1.5, read off ComfyUI's modules built on the meta device."""
    comfy_dir, comfy, UNetModel = import_comfy(comfy_dir)
    ops = comfy.ops.disable_weight_init
    with open(os.path.join(comfy_dir, "comfy", "sd1_clip_config.json")) as f:
        clip_config = json.load(f)
    with torch.device("meta"):
        parts = {
            "model.diffusion_model.": UNetModel(**SD15_UNET, device="meta", operations=ops),
            "first_stage_model.": comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4),
            "cond_stage_model.transformer.text_model.":
                comfy.clip_model.CLIPTextModel_(clip_config, torch.float32, "meta", ops),
        }
    shapes = {prefix + k: tuple(v.shape) for prefix, m in parts.items() for k, v in m.state_dict().items()}
    # Check that ComfyUI will detect the result as SD1.5 before spending time filling it.
    meta_sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    prefix = comfy.model_detection.unet_prefix_from_state_dict(meta_sd)
    config = comfy.model_detection.model_config_from_unet(meta_sd, prefix)
    if prefix != "model.diffusion_model." or type(config).__name__ != "SD15":
        sys.exit(f"error: ComfyUI in {comfy_dir} would detect this as {type(config).__name__}, not SD15")
    return shapes


def random_tensor(key, shape, gen):
    """Deterministic values that keep activations finite, stored as fp16."""
    if len(shape) >= 2:  # linear / conv / embedding weights
        fan_in = math.prod(shape[1:])
        t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    elif key.endswith(".weight"):  # the only 1-D weights are Group/LayerNorm scales
        t = torch.ones(shape)
    else:  # biases
        t = torch.zeros(shape)
    return t.to(torch.float16)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="path of the .safetensors file to write")
    parser.add_argument("--comfy", required=True, help="ComfyUI folder (the one holding comfy/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    a = parser.parse_args()
    if os.path.exists(a.output) and not a.force:
        sys.exit(f"error: {a.output} exists; pass --force to overwrite it")

    from safetensors.torch import save_file
    start = time.time()
    shapes = sd15_shapes(a.comfy)
    gen = torch.Generator().manual_seed(a.seed)
    state_dict = {k: random_tensor(k, shapes[k], gen) for k in sorted(shapes)}
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    tmp = a.output + ".tmp"
    save_file(state_dict, tmp, metadata={"format": "pt", "note": f"random SD1.5, seed {a.seed}"})
    os.replace(tmp, a.output)  # never leave a half-written checkpoint under the final name
    n = sum(t.numel() for t in state_dict.values())
    print(f"wrote {a.output}: {len(state_dict)} tensors, {n / 1e6:.0f}M parameters, "
          f"{os.path.getsize(a.output) / 2**30:.2f} GiB in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
