"""Training data: caption sources, buckets, batch plan, caches, prompts-only mode, pixel-space and SDXL-type teachers."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.batch_plan import BatchPlan
from lcm_lora.training.buckets import make_buckets, nearest_bucket, resize_and_crop_box
from lcm_lora.training.config import load_config
from lcm_lora.training.data import read_prompts, scan_image_folder
from lcm_lora.training.tiny_models import build_tiny_teacher, write_tiny_dataset
from lcm_lora.training.trainer import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
FAST = ["max_steps=2", "batch_size=4", "lora.rank=4", "lora.alpha=4", "validation.every=0", "checkpoint.every=0",
        "logging.progress=false"]


@pytest.fixture(scope="module")
def sd_teacher(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_teacher(tmp_path_factory.mktemp("t") / "sd", block_out_channels=(16, 32))


def _data_cfg(path, **kw):
    return load_config({"data": {"path": str(path), **kw}}).data


def test_caption_sources_agree(tmp_path):
    txt = write_tiny_dataset(tmp_path / "txt", n=5, size=8)
    jsonl = write_tiny_dataset(tmp_path / "jsonl", n=5, size=8, captions="jsonl")
    rows = [json.loads(line) for line in (jsonl / "metadata.jsonl").read_text().splitlines()]
    csv_dir = write_tiny_dataset(tmp_path / "csv", n=5, size=8, captions="jsonl")
    (csv_dir / "metadata.jsonl").unlink()
    (csv_dir / "metadata.csv").write_text("file_name,text\n" + "".join(f"{r['file_name']},{r['text']}\n" for r in rows))
    caps = [[r.captions for r in scan_image_folder(_data_cfg(d))] for d in (txt, jsonl, csv_dir)]
    assert caps[0] == caps[1] == caps[2] and len(caps[0]) == 5


def test_data_errors_name_the_file(tmp_path):
    d = write_tiny_dataset(tmp_path / "d", n=2, size=8)
    (d / "img_0001.txt").unlink()
    with pytest.raises(ConfigError, match=r"img_0001\.png: no caption"):
        scan_image_folder(_data_cfg(d))
    (d / "metadata.jsonl").write_text('{"file_name": "img_0000.png", "text": "x"}\n{broken\n')
    with pytest.raises(ConfigError, match=r"metadata\.jsonl: line 2: invalid JSON"):
        scan_image_folder(_data_cfg(d))
    (d / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(ConfigError, match=r"metadata\.jsonl: line 1: image .*gone\.png not found"):
        scan_image_folder(_data_cfg(d))
    (d / "bad.png").write_bytes(b"not an image")
    (d / "metadata.jsonl").unlink()
    (d / "img_0001.txt").write_text("y")
    (d / "bad.txt").write_text("z")
    with pytest.raises(ConfigError, match=r"bad\.png: cannot read image"):
        scan_image_folder(_data_cfg(d))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        scan_image_folder(_data_cfg(empty))
    p = tmp_path / "p.txt"
    p.write_text("# comment\n\n")
    with pytest.raises(ConfigError, match=r"p\.txt: no prompts"):
        read_prompts(p)


def test_buckets():
    buckets = make_buckets(512, 64, 2.0)
    assert (512, 512) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and max(w / h, h / w) <= 2.0
    wide = nearest_bucket(1024, 512, buckets)
    assert all(abs(math.log(b[0] / b[1]) - math.log(2)) >= abs(math.log(wide[0] / wide[1]) - math.log(2)) for b in buckets)
    assert wide[0] / wide[1] >= 1.6 and wide[0] * wide[1] >= 0.9 * 512 * 512
    assert nearest_bucket(300, 300, buckets) == (512, 512)
    rng = random.Random(0)
    for w, h in [(1000, 400), (333, 777), (512, 512)]:
        b = nearest_bucket(w, h, buckets)
        (rw, rh), (left, top) = resize_and_crop_box(w, h, b, "random", rng)
        assert rw >= b[0] and rh >= b[1] and 0 <= left <= rw - b[0] and 0 <= top <= rh - b[1]
        assert min(rw / w, rh / h) == pytest.approx(max(b[0] / w, b[1] / h), rel=0.02)  # aspect kept


def test_batch_plan_is_deterministic_resumable_and_bucket_pure():
    buckets = ["a"] * 7 + ["b"] * 5
    plan = BatchPlan(buckets, 3, seed=1)
    first = [plan.next() for _ in range(10)]
    assert all(len({buckets[i] for i in batch}) == 1 and len(batch) == 3 for batch in first)
    epoch0 = plan.epoch_batches(0)
    assert {i for batch in epoch0 for i in batch} == set(range(12))
    again = BatchPlan(buckets, 3, seed=1)
    again.load_state_dict({"epoch": 0, "position": 4})
    assert [again.next() for _ in range(6)] == first[4:]
    assert BatchPlan(buckets, 3, seed=2).epoch_batches(0) != epoch0


def test_latent_and_text_cache_reproduce_the_uncached_run(sd_teacher, tmp_path, monkeypatch):
    data = write_tiny_dataset(tmp_path / "d", n=6, size=16)
    base = [f"teacher={sd_teacher}", f"data={data}", *FAST, "data.crop=center", "data.random_flip=false"]
    plain = train(TINY, tmp_path / "plain", overrides=base + ["data.cache_latents=false", "data.cache_text=false"], progress=False)
    cached_over = base + ["data.cache_latents=true", "data.cache_text=true", f"data.cache_dir={tmp_path / 'cache'}"]
    cached = train(TINY, tmp_path / "cached", overrides=cached_over, progress=False)
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(plain.losses), rtol=1e-4, atol=1e-6)
    assert len(list((tmp_path / "cache" / "latents").glob("*.safetensors"))) == 6

    from lcm_lora.training import teacher as teacher_mod

    def no_vae(*a, **k):
        raise AssertionError("the VAE must not run when every latent is cached")

    monkeypatch.setattr(teacher_mod.Teacher, "encode_pixels", no_vae)
    again = train(TINY, tmp_path / "again", overrides=cached_over, progress=False)
    assert again.losses == cached.losses


def test_teacher_sampling_matches_diffusers_pipeline(sd_teacher):
    """prompts-only samples = StableDiffusionPipeline + DDIMScheduler(trailing) with the same noise and CFG."""
    from contextlib import nullcontext

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from lcm_lora.training.prompts_only import sample_teacher
    from lcm_lora.training.teacher import load_teacher_folder

    teacher = load_teacher_folder(Path(sd_teacher))
    prompts, seeds = ["a red circle", "a blue ring"], [11, 12]
    ours = sample_teacher(teacher, prompts, seeds, 16, 6, 4.0, "cpu", nullcontext)
    pipe = StableDiffusionPipeline.from_pretrained(sd_teacher, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", clip_sample=False,
                                               set_alpha_to_one=False)
    latents = torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    ref = pipe(prompts, height=16, width=16, num_inference_steps=6, guidance_scale=4.0, latents=latents,
               output_type="latent").images
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_prompts_only_mode_generates_once_and_trains(sd_teacher, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na green square\n# a comment\na blue ring\n")
    over = [f"teacher={sd_teacher}", f"prompts={prompts}", *FAST, "prompts_only.samples_per_prompt=2", "prompts_only.steps=3",
            f"prompts_only.dir={tmp_path / 'samples'}"]
    result = train(TINY, tmp_path / "run1", overrides=over, progress=False)
    assert result.status == "finished" and result.adapter_path.is_file()
    files = sorted((tmp_path / "samples").rglob("p*.safetensors"))
    assert len(files) == 6
    stamp = {f: f.stat().st_mtime_ns for f in files}
    from lcm_lora.training.cache import load_tensors

    victim = files[3]
    first = load_tensors(victim)
    victim.unlink()  # an interrupted generation: only the missing sample is made again, with its own seed
    train(TINY, tmp_path / "run2", overrides=over, progress=False)
    again = load_tensors(victim)
    assert again[1] == first[1]  # same prompt and seed; values equal up to batch-size numerics (batch 1 vs 4)
    torch.testing.assert_close(again[0]["latent"], first[0]["latent"], rtol=1e-4, atol=1e-4)
    assert all(f.stat().st_mtime_ns == stamp[f] for f in files if f != victim)


def test_pixel_space_grayscale_teacher(tmp_path):
    teacher = build_tiny_teacher(tmp_path / "px", with_vae=False, image_channels=1, image_size=8, block_out_channels=(16, 32))
    data = write_tiny_dataset(tmp_path / "gray", n=4, size=8, channels=1)
    result = train(TINY, tmp_path / "run", overrides=[f"teacher={teacher}", f"data={data}", *FAST, "data.resolution=8",
                                                        "validation.every=2"], progress=False)
    assert result.status == "finished" and all(math.isfinite(x) for x in result.losses)
    assert list((tmp_path / "run" / "validation").glob("*.png"))


def test_sdxl_type_teacher_with_aspect_buckets(tmp_path):
    from PIL import Image

    teacher = build_tiny_teacher(tmp_path / "xl", variant="sdxl", block_out_channels=(16, 32))
    data = tmp_path / "wide"
    data.mkdir()
    for i, (w, h) in enumerate([(32, 16), (30, 15), (16, 32), (17, 33), (20, 20), (21, 19)]):
        Image.new("RGB", (w, h), (40 * i, 100, 200)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"picture {i}")
    over = [f"teacher={teacher}", f"data={data}", *FAST, "batch_size=2", "data.resolution=16", "data.buckets=true",
            "data.bucket_step=4", "data.cache_latents=true", "data.cache_text=true"]
    result = train(TINY, tmp_path / "run", overrides=over, progress=False)
    assert result.status == "finished" and all(math.isfinite(x) for x in result.losses)
    from lcm_lora.lcm_core.lora import read_adapter

    assert len(read_adapter(result.adapter_path)) > 0


@pytest.mark.parametrize("crop", ["random", "center"])
def test_flipped_crop_reports_its_position_in_the_mirrored_image(tmp_path, crop):
    """SDXL micro-conditioning: ``crop_top``/``crop_left`` must locate the returned pixels. Reference
    built with PIL alone: resize the original, mirror the *whole* resized image, cut the returned box."""
    import numpy as np
    from PIL import Image

    from lcm_lora.training.data import Record, load_image

    rng_np = np.random.default_rng(0)
    src = tmp_path / "wide.png"
    Image.fromarray(rng_np.integers(0, 255, (40, 96, 3), dtype=np.uint8)).save(src)
    record, bucket = Record(captions=["x"], width=96, height=40, image=str(src)), (32, 32)
    seen_flip = seen_plain = False
    for seed in range(12):
        tensor, (oh, ow, top, left, th, tw) = load_image(record, bucket, 3, crop, True, random.Random(seed))
        (rw, rh), _ = resize_and_crop_box(96, 40, bucket, crop, random.Random(0))
        resized = Image.open(src).convert("RGB").resize((rw, rh), Image.BILINEAR)
        got = ((tensor.permute(1, 2, 0) + 1.0) * 127.5).round().numpy()
        plain = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32)
        mirrored = np.asarray(resized.transpose(Image.FLIP_LEFT_RIGHT).crop((left, top, left + 32, top + 32)), dtype=np.float32)
        assert (oh, ow, th, tw) == (40, 96, 32, 32)
        if np.array_equal(got, mirrored) and not np.array_equal(got, plain):
            seen_flip = True
        else:
            assert np.array_equal(got, plain), (seed, top, left)
            seen_plain = True
    assert seen_flip and seen_plain


def test_damaged_cache_entries_are_rebuilt(sd_teacher, tmp_path):
    """A cache entry cut short (a full disk, an interrupted copy) counts as missing and is rebuilt, where it used
    to fail every later run with safetensors' "header too small" traceback."""
    data = write_tiny_dataset(tmp_path / "d", n=4, size=16)
    over = [f"teacher={sd_teacher}", f"data={data}", *FAST, "data.crop=center", "data.random_flip=false",
            "data.cache_latents=true", "data.cache_text=true", f"data.cache_dir={tmp_path / 'cache'}"]
    first = train(TINY, tmp_path / "a", overrides=over, progress=False)
    latent = sorted((tmp_path / "cache" / "latents").glob("*.safetensors"))[0]
    text = sorted((tmp_path / "cache" / "text").glob("*.safetensors"))[0]
    latent.write_bytes(b"")
    text.write_bytes(text.read_bytes()[:50])
    again = train(TINY, tmp_path / "b", overrides=over, progress=False)  # the rebuilt entry: encoded alone now
    torch.testing.assert_close(torch.tensor(again.losses), torch.tensor(first.losses), rtol=1e-4, atol=1e-6)
    from lcm_lora.training.cache import readable

    assert readable(latent) and readable(text)


def test_captions_with_a_bom_latin1_text_and_non_object_lines(tmp_path):
    """Excel's "CSV UTF-8" and Notepad write a BOM: it is not part of the first field or caption. Text that is not
    UTF-8, and a JSONL line that is not an object, are errors naming the file (they were tracebacks)."""
    csv_dir = write_tiny_dataset(tmp_path / "csv", n=2, size=8, captions="jsonl")
    rows = [json.loads(line) for line in (csv_dir / "metadata.jsonl").read_text().splitlines()]
    (csv_dir / "metadata.jsonl").unlink()
    (csv_dir / "metadata.csv").write_text("\ufefffile_name,text\n" + "".join(f"{r['file_name']},{r['text']}\n" for r in rows),
                                          encoding="utf-8")
    assert [r.captions for r in scan_image_folder(_data_cfg(csv_dir))] == [[r["text"]] for r in rows]
    txt = write_tiny_dataset(tmp_path / "txt", n=2, size=8)
    first = sorted(txt.glob("*.txt"))[0]
    first.write_text("\ufeffa bold digit", encoding="utf-8")
    assert scan_image_folder(_data_cfg(txt))[0].captions == ["a bold digit"]
    first.write_bytes("a caf\xe9 digit".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text") as e:
        scan_image_folder(_data_cfg(txt))
    assert str(first) in str(e.value)
    jsonl = write_tiny_dataset(tmp_path / "jsonl", n=2, size=8, captions="jsonl")
    (jsonl / "metadata.jsonl").write_text('"abc"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1: must be a JSON object"):
        scan_image_folder(_data_cfg(jsonl))
    prompts = tmp_path / "p.txt"
    prompts.write_text("\ufeffa cat\na dog\n", encoding="utf-8")
    assert read_prompts(prompts) == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text("3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1: must be a JSON object"):
        read_prompts(tmp_path / "p.jsonl")


def test_hidden_folders_exif_rotation_and_16_bit_grey(tmp_path):
    """.ipynb_checkpoints / __MACOSX copies are not training images; a phone photo stored sideways with EXIF
    orientation 6 trains upright at its shown size; a 16-bit grey PNG keeps its grey (convert("RGB") clipped it to
    white)."""
    import random as _random

    import numpy as np
    from PIL import Image

    from lcm_lora.training.data import load_image

    data = write_tiny_dataset(tmp_path / "d", n=2, size=8)
    for hidden in (".ipynb_checkpoints", "__MACOSX"):
        (data / hidden).mkdir()
        Image.new("RGB", (8, 8)).save(data / hidden / "copy.png")  # no caption: would be an error if scanned
    assert len(scan_image_folder(_data_cfg(data))) == 2

    rot = tmp_path / "rot"
    rot.mkdir()
    left_half_red = np.zeros((20, 40, 3), np.uint8)
    left_half_red[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: 20 wide, 40 high, red on top
    Image.fromarray(left_half_red).save(rot / "a.jpg", exif=exif.tobytes(), quality=95)
    (rot / "a.txt").write_text("a photo")
    record = scan_image_folder(_data_cfg(rot))[0]
    assert (record.width, record.height) == (20, 40)
    x, time_ids = load_image(record, (20, 40), 3, "center", False, _random.Random(0))
    assert time_ids[:2] == (40, 20) and x.shape == (3, 40, 20)
    assert x[0, :20].mean() > 0.5 and x[0, 20:].mean() < -0.5  # red on top, as shown

    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(grey / "g.png")
    (grey / "g.txt").write_text("grey")
    x, _ = load_image(scan_image_folder(_data_cfg(grey))[0], (8, 8), 3, "center", False, _random.Random(0))
    expected = round(30000 / 257) / 127.5 - 1  # 8-bit grey 117, in [-1, 1]
    torch.testing.assert_close(x, torch.full_like(x, expected), atol=1e-6, rtol=0)


def test_a_latent_teacher_folder_without_its_vae_is_refused(sd_teacher, tmp_path):
    """A diffusers folder copied without vae/ trained silently on raw pixels; now it is an error naming the folder."""
    import shutil

    from lcm_lora.training.teacher import load_teacher_folder
    from lcm_lora.training.teacher_common import TeacherError

    broken = tmp_path / "novae"
    shutil.copytree(sd_teacher, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(TeacherError, match="missing 'vae/'") as e:
        load_teacher_folder(broken)
    assert str(broken) in str(e.value)
    assert load_teacher_folder(sd_teacher).vae is not None


def test_a_teacher_vae_with_nan_weights_is_named_not_the_learning_rate(sd_teacher, tmp_path):
    """NaN in the VAE reached the loss and stopped the run as a divergence ("lower the learning rate", exit 3), after
    writing NaN latents into the cache; now the encoding is refused naming the teacher, and nothing is cached."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lcm_lora.training.teacher_common import TeacherError

    broken = tmp_path / "nanvae"
    shutil.copytree(sd_teacher, broken)
    weights = next((broken / "vae").glob("*.safetensors"))
    sd = load_file(weights)
    key = next(k for k in sd if "encoder.conv_in.weight" in k)
    sd[key][0, 0, 0, 0] = float("nan")
    save_file(sd, weights)
    data = write_tiny_dataset(tmp_path / "d", n=4, size=16)
    cache = tmp_path / "cache"
    over = [f"teacher={broken}", f"data={data}", *FAST, "data.cache_latents=true", f"data.cache_dir={cache}"]
    with pytest.raises(TeacherError, match="NaN/Inf latents") as e:
        train(TINY, tmp_path / "run", overrides=over, progress=False)
    assert str(broken) in str(e.value)
    assert not list(cache.rglob("latents/*.safetensors"))


def test_empty_metadata_json_prompts_and_a_same_second_edit(tmp_path):
    """An empty metadata.jsonl says so (it said "no images found" beside the images); a .json prompt file is refused
    naming .jsonl (it was read as lines of text); an image edited within the same second, size unchanged, gets a new
    latent cache entry (the key used whole seconds)."""
    import os

    from lcm_lora.training.cache import LatentCache

    jsonl = write_tiny_dataset(tmp_path / "jsonl", n=2, size=8, captions="jsonl")
    (jsonl / "metadata.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="metadata.jsonl: has no rows"):
        scan_image_folder(_data_cfg(jsonl))
    (tmp_path / "p.json").write_text('["a cat", "a dog"]', encoding="utf-8")
    with pytest.raises(ConfigError, match="use .jsonl"):
        read_prompts(tmp_path / "p.json")
    image = sorted(jsonl.glob("*.png"))[0]
    cache = LatentCache(tmp_path / "cache", "teacher")
    second = 1_700_000_000 * 10**9
    os.utime(image, ns=(second, second))
    before = cache.path(os.fspath(image), (8, 8), "center")
    os.utime(image, ns=(second, second + 500_000_000))  # the same second, another instant
    assert cache.path(os.fspath(image), (8, 8), "center") != before


def test_metadata_file_names_must_stay_inside_the_data_folder(tmp_path):
    """A metadata row naming an absolute path or '..' is refused (Hugging Face imagefolder's rule; the ComfyUI trainer
    panel confines a job's data to its input folder), before the file is looked at; a subfolder path is fine."""
    d = write_tiny_dataset(tmp_path / "d", n=2, size=8, captions="jsonl")
    outside = write_tiny_dataset(tmp_path / "outside", n=1, size=8)
    (d / "sub").mkdir()
    (d / "img_0000.png").rename(d / "sub" / "img_0000.png")
    for name in (str(outside / "img_0000.png"), "../outside/img_0000.png", "sub/../../outside/img_0000.png",
                 "/etc/hostname"):
        (d / "metadata.jsonl").write_text(json.dumps({"file_name": name, "text": "x"}) + "\n")
        with pytest.raises(ConfigError, match=r"metadata\.jsonl: line 1: file_name .* must be a path inside the data folder"):
            scan_image_folder(_data_cfg(d))
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "sub/./../sub/img_0000.png", "text": "x"}) + "\n")
    assert [r.captions for r in scan_image_folder(_data_cfg(d))] == [["x"]]


def test_bucket_list_is_symmetric_and_small_resolutions_keep_their_budget():
    """Every wide bucket has its tall transpose (kohya's make_bucket_resolutions adds both: a 1:2 image lost 12.5 %
    of its height to a 768×1344 bucket while 2:1 got 1408×704); a resolution below the step is its own square
    (it became step × step: 4× the pixel budget at 32 / 64)."""
    for resolution, step in ((1024, 64), (768, 64), (1024, 32), (512, 64)):
        buckets = set(make_buckets(resolution, step, 2.0))
        assert all((h, w) in buckets for w, h in buckets), (resolution, step)
        assert all(w * h <= resolution ** 2 and w % step == 0 and h % step == 0 for w, h in buckets)
    assert nearest_bucket(704, 1408, make_buckets(1024, 64, 2.0)) == (704, 1408)
    assert make_buckets(32, 64) == [(32, 32)]


def test_square_preprocessing_is_torchvisions_resize_and_center_crop(tmp_path):
    """Without buckets an image is what the reference scripts' torchvision Resize(res) + CenterCrop(res) make of it,
    run here in ComfyUI's venv (torchvision is not a dependency of the project): the same pixels and the same SDXL
    crop offsets (the long side was rounded, not truncated, and the offset floored: 1000×1006 had crop_top 1, not 2)."""
    import os
    import subprocess

    import numpy as np
    from PIL import Image

    from lcm_lora.training.data import Record, load_image

    python = os.environ.get("COMFYUI_PYTHON")
    if not python:
        pytest.skip("COMFYUI_PYTHON not set: torchvision (the reference preprocessing) is not installed here; "
                    "square preprocessing NOT compared")
    rng = np.random.default_rng(0)
    sizes = [(1000, 1006), (1000, 1003), (1000, 1501), (640, 480), (700, 515), (512, 512), (513, 700)]
    for w, h in sizes:
        smooth = np.kron(rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3)), np.ones((10, 10, 1)))[:h, :w]
        Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / f"{w}x{h}.png")
    script = (
        "import json, sys, numpy as np\nfrom PIL import Image\nfrom torchvision import transforms\n"
        "R = 512\nout = {}\n"
        "for name in sys.argv[1:]:\n"
        "    image = Image.open(name).convert('RGB')\n"
        "    resized = transforms.Resize(R, interpolation=transforms.InterpolationMode.BILINEAR)(image)\n"
        "    top, left = int(round((resized.height - R) / 2.0)), int(round((resized.width - R) / 2.0))\n"
        "    np.save(name + '.ref.npy', np.asarray(transforms.CenterCrop(R)(resized)))\n"
        "    out[name] = [top, left]\n"
        "print(json.dumps(out))\n")
    names = [str(tmp_path / f"{w}x{h}.png") for w, h in sizes]
    done = subprocess.run([python, "-c", script, *names], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = json.loads(done.stdout.strip().splitlines()[-1])
    for (w, h), name in zip(sizes, names):
        tensor, time_ids = load_image(Record(captions=["x"], width=w, height=h, image=name), (512, 512), 3, "center",
                                      False, random.Random(0))
        assert list(time_ids[2:4]) == reference[name], (name, time_ids)
        ours = ((tensor.permute(1, 2, 0) + 1.0) * 127.5).round().numpy()
        assert np.abs(ours - np.load(name + ".ref.npy").astype(np.float64)).max() <= 1, name


def test_a_prediction_type_override_reaches_the_folder_teachers_scheduler(tmp_path):
    """The DDIM solver and prompts-only sampling read the scheduler's config: an override (for a folder whose
    scheduler config is wrong) must be in it, as the single-file loader does."""
    from lcm_lora.training.teacher import load_teacher

    folder = build_tiny_teacher(tmp_path / "t", block_out_channels=(16, 32))
    teacher = load_teacher(load_config({"teacher": {"path": str(folder), "prediction_type": "v_prediction"}}).teacher)
    assert teacher.prediction_type == teacher.noise_scheduler.config.prediction_type == "v_prediction"
