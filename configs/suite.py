"""The benchmark suite (``python -m adverse_vision.bench --suite``): per entry, a config
file of this folder, the variant of its full-size run (its default) and the variant
small enough for a CPU (``--suite_size=small``)."""

ENTRIES = (
    ("detection", "yolox_scenes.py", "", "smoke"),
    ("togethernet", "togethernet_scenes.py", "", "smoke"),
    ("dnhl", "dnhl_scenes_cls.py", "", "tiny"),
    ("bdlf", "bdlf_scenes.py", "", "smoke"),
    ("depth_dehaze", "sdg_scenes.py", "", "smoke"),
)
