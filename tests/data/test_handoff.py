"""From the loader's workers to the consuming process: bad-input counts, errors, and
grain's shared memory."""

import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from adverse_vision.data import held_out, pipeline
from adverse_vision.data.problems import DataError, DataProblems, found_while_reading
from adverse_vision.data.voc import VOCSource
from tests.data.test_voc import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LEAK_WARNING = "leaked shared_memory"


def corrupt_voc(root, n=8, corrupt=(2, 5)):
    """A VOC folder of ``n`` images whose images ``corrupt`` are not JPEGs."""
    samples = {f"{i:06d}": ((48, 40), [("car", 0, (4, 4, 40, 30))]) for i in range(n)}
    make_voc(root, samples)
    for i in corrupt:
        with open(os.path.join(root, "JPEGImages", f"{i:06d}.jpg"), "wb") as f:
            f.write(b"not a jpeg")
    return str(root)


def _pipeline(source, **kw):
    args = dict(batch_size=4, image_size=32, max_boxes=4, train=True, seed=0,
                num_workers=0, process_index=0, process_count=1)
    args.update(kw)
    return pipeline.make_pipeline(source, **args)


def test_collected_problems_are_neither_counted_nor_logged_where_they_are_met(caplog):
    problems = DataProblems("x")
    with found_while_reading() as found:
        problems.add("corrupt_image", "a.jpg", "truncated", "sample marked invalid", once=True)
        with found_while_reading() as inner:
            problems.add("box_outside", "b.xml", "1 box", "clipped", count=3)
    assert problems.total == 0 and not caplog.records
    assert found == [("corrupt_image", "a.jpg", "truncated", "sample marked invalid", 1, False)]
    assert inner == [("box_outside", "b.xml", "1 box", "clipped", 3, False)]
    problems.add_found(found + inner + found)  # the same problem again: counted once
    assert problems.count("corrupt_image") == 1 and problems.count("box_outside") == 3
    problems.add("corrupt_image", "a.jpg", "truncated", "sample marked invalid")
    assert problems.count("corrupt_image") == 2  # outside: recorded as before


@pytest.mark.parametrize("num_workers", [0, 2])
def test_problems_met_in_workers_are_counted_once_in_the_source(tmp_path, num_workers):
    src = VOCSource(corrupt_voc(tmp_path / "voc"), "trainval", ("car",))
    it = iter(_pipeline(src, num_workers=num_workers))
    invalid = 0
    for _ in range(6):  # three epochs
        batch = next(it)
        assert "_found" not in batch
        invalid += int((~batch["valid"]).sum())
    it.close()
    assert invalid == 6  # two corrupt images, every epoch
    assert src.problems.count("corrupt_image") == 2  # counted once per file
    assert src.problems.files("corrupt_image") == [
        os.path.join(tmp_path, "voc", "JPEGImages", f"{i:06d}.jpg") for i in (2, 5)]
    # An evaluation pass over the same source adds nothing new.
    evaluation = _pipeline(src, batch_size=3, train=False, num_workers=num_workers)
    with contextlib.closing(iter(evaluation)) as batches:
        assert sum(int(b["valid"].sum()) for b in batches) == 6
    assert src.problems.count("corrupt_image") == 2


def test_held_out_parts_report_into_their_source(tmp_path):
    src = VOCSource(corrupt_voc(tmp_path / "voc", n=8, corrupt=(1, 2, 3, 4, 5, 6)), "trainval",
                    ("car",))
    lower, upper = held_out.split_indices(len(src), 0.25, seed=0)
    paired = held_out.PairedIterator(
        iter(_pipeline(held_out.Subset(src, lower), batch_size=2, num_workers=2)),
        iter(_pipeline(held_out.Subset(src, upper), batch_size=2, seed=1)), every=1)
    for _ in range(6):
        batch = next(paired)
        assert "_found" not in batch and "upper/_found" not in batch
    paired.close()
    assert src.problems.count("corrupt_image") == 6


def test_an_error_raised_in_a_worker_reaches_the_consumer_as_it_was(tmp_path):
    class Failing:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            if i == 5:
                raise DataError("/data/Annotations/000005.xml: <size> 40x30 differs")
            return {"image": np.zeros((8, 8, 3), np.uint8), "id": str(i)}

    it = iter(_pipeline(Failing(), batch_size=2, train=False, num_workers=2))
    with pytest.raises(DataError) as caught:
        for _ in it:
            pass
    it.close()
    assert str(caught.value) == "/data/Annotations/000005.xml: <size> 40x30 differs"


def _run(script, tmp_path):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)


SCRIPT = """
    import sys
    from adverse_vision.data import pipeline
    from adverse_vision.data.voc import VOCSource

    KEPT = []  # alive until the interpreter ends, as a caller's last batch may be

    def main():
        src = VOCSource(sys.argv[1] if len(sys.argv) > 1 else "voc", "trainval", ("car",))
        it = iter(pipeline.make_pipeline(
            src, batch_size=4, image_size=32, max_boxes=4, train=TRAIN, num_workers=2,
            process_index=0, process_count=1))
        try:
            for _ in range(3):
                KEPT.append(next(it))
        except Exception as e:  # noqa: BLE001
            KEPT.append(e)
            print("error:", e)
        it.close()
        print("counts", src.problems.count("corrupt_image"))

    if __name__ == "__main__":
        main()
"""


@pytest.mark.parametrize("fail", [False, True], ids=["batches", "error"])
def test_no_shared_memory_is_left_behind(tmp_path, fail):
    """Batches still alive when the program ends, and batches buffered in grain when a
    worker's error ends the iteration, leave no shared memory block behind."""
    corrupt_voc(tmp_path / "voc")
    if fail:  # a sample whose annotated size is not its image's: an error by policy
        script = SCRIPT.replace('("car",))', '("car",), policy={"on_bad_annotation": "error"})')
        xml = tmp_path / "voc" / "Annotations" / "000006.xml"
        xml.write_text(xml.read_text().replace("<width>48</width>", "<width>50</width>"))
    else:
        script = SCRIPT
    result = _run(script.replace("TRAIN", str(not fail)), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert LEAK_WARNING not in result.stderr, result.stderr[-3000:]
    if fail:
        assert ("error: voc/Annotations/000006.xml: <size> 50x40 differs from the decoded "
                "image 48x40 (voc/JPEGImages/000006.jpg)") in result.stdout
    else:
        assert "counts 2" in result.stdout
