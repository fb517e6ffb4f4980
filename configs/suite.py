"""The benchmark suite (``python -m adverse_vision.bench --suite``): per entry, a config
file of this folder, the variant of its full-size run (its default), the variant small
enough for a CPU (``--suite_size=small``), and whether it also runs with
``model.remat=True`` (the networks whose activations fill the device memory)."""

ENTRIES = (
    ("detection", "yolox_scenes.py", "", "smoke", False),
    ("togethernet", "togethernet_scenes.py", "", "smoke", True),
    ("dnhl", "dnhl_scenes_cls.py", "", "tiny", False),
    ("bdlf", "bdlf_scenes.py", "", "smoke", True),
    ("depth_dehaze", "sdg_scenes.py", "", "smoke", True),
)
