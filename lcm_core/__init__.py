"""LCM-LoRA core library: schedules, samplers, LoRA formats, architecture detection, merge. Never imports ComfyUI."""
