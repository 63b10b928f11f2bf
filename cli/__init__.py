"""The ``lcm-lora`` command line (:mod:`.main`: inspect, convert, merge, fuse, train, demo; adapter
sub-commands in :mod:`.adapter_commands`). Never imports ComfyUI; heavy modules load per sub-command."""
